"""The mini VQA benchmark that ships with the project (``eval_vqa/data/mini_vqa.jsonl``).

Each line: ``{"id", "image": {"package", "name"}, "question", "answers": [...], "gold_doc_ids": [...]}``.
Its text-only split (``mini_vqa_text.jsonl``, dataset ``mini-text``) holds the same 41 items with
``"image": null``, ids suffixed ``-text`` and each question rewritten once, by hand, to name the pictured
entity ("What family of mammals does this animal belong to?" -> "... does the cat belong to?").
Images are loaded from installed packages (see :mod:`gemkr_llamaindex.images`); gold doc ids are titles of the
packaged Wikipedia summaries (``gemkr_llamaindex.assets.wiki_summaries()``), and every answer occurs in
at least one gold summary, so pseudo-relevance and gold-id metrics agree on what a hit is.
"""

from __future__ import annotations

from pathlib import Path

MINI_PATH: Path = Path(__file__).parent / "data" / "mini_vqa.jsonl"
MINI_TEXT_PATH: Path = Path(__file__).parent / "data" / "mini_vqa_text.jsonl"
_REQUIRED = ("id", "image", "question", "answers", "gold_doc_ids")


def load_mini_benchmark(path: str | Path | None = None) -> list[dict]:
    """Read the mini benchmark (or another file in the same format) into a list of item dicts.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not JSON or lacks a field; the message names the file and line.
    """
    path = Path(path) if path is not None else MINI_PATH
    if not path.is_file():
        raise FileNotFoundError(f"mini benchmark file not found: {path}")
    from gemkr_llamaindex.kb.corpus import iter_jsonl

    items: list[dict] = []
    for lineno, item in iter_jsonl(path, ValueError):
        missing = [k for k in _REQUIRED if k not in item] if isinstance(item, dict) else list(_REQUIRED)
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {missing}; expected {list(_REQUIRED)}")
        image = item["image"]
        if image is not None and not (isinstance(image, dict) and {"package", "name"} <= set(image)):
            raise ValueError(f"{path}:{lineno}: 'image' must be {{'package': ..., 'name': ...}} or null, got {image!r}")
        if not item["answers"] or not all(isinstance(a, str) for a in item["answers"]):
            raise ValueError(f"{path}:{lineno}: 'answers' must be a non-empty list of strings")
        items.append(item)
    return items
