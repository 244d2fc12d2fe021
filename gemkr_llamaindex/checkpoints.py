"""Trained GeMKR checkpoints that ship inside the package.

``wiki-smollm2``: SmolLM2-135M-Instruct + LoRA, no vision tower (question + visual tags), trained on
pseudo-queries made from the 10,033 packaged Wikipedia summaries alone (``scripts/train_wiki_checkpoint.py``
regenerates it; docs/training.md gives data, time and figures). It holds the trainable weights only (a few
MB of safetensors) and the fingerprints of its base model, which is the packaged SmolLM2.

A checkpoint records the corpus it was trained for (``corpus.json``: document count and a SHA-256 over
ids and texts); :func:`packaged_checkpoint_for` hands it out only for that corpus.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from gemkr_llamaindex.kb.corpus import corpus_fingerprint  # noqa: F401  (the one corpus identity; re-exported)

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints_data"
WIKI_SMOLLM2 = "wiki-smollm2"
CORPUS_FILE = "corpus.json"


def packaged_checkpoint(name: str = WIKI_SMOLLM2) -> Path | None:
    """The folder of a shipped checkpoint, or None if this installation has none of that name."""
    path = CHECKPOINT_DIR / name
    return path if (path / "gemkr_config.json").is_file() else None


def packaged_checkpoint_for(docs: list[tuple[str, str]]) -> Path | None:
    """The shipped checkpoint trained for exactly this corpus, or None."""
    if not CHECKPOINT_DIR.is_dir():
        return None
    fp = None
    for path in sorted(CHECKPOINT_DIR.iterdir()):
        if path.name.startswith("."):  # a swap's temporary or set-aside folder, never a shipped checkpoint
            continue
        record = path / CORPUS_FILE
        if not (record.is_file() and (path / "gemkr_config.json").is_file()):
            continue
        try:
            want = json.loads(record.read_text(encoding="utf-8"))
            if not isinstance(want, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as exc:  # one damaged record must not hide the other checkpoints
            warnings.warn(f"{record}: unreadable corpus record ({exc}); checkpoint {path.name} is skipped", stacklevel=2)
            continue
        if want.get("num_docs") != len(docs):
            continue
        fp = fp or corpus_fingerprint(docs)
        if want.get("sha256") == fp["sha256"]:
            return path
    return None
