"""Our own JSONL format (the mini benchmark's), with an optional corpus JSONL.

Query lines: ``{"id", "question", "answers", "gold_doc_ids", "image"}`` where ``image`` is
``{"package", "name"}`` (an image shipped in a package), ``{"path": ...}`` or a plain path string
(relative paths resolve against the JSONL's folder). Corpus lines: ``{"id", "text"}``.

``load_mini`` is the shipped mini benchmark with the 10,033 packaged Wikipedia summaries as corpus
(doc id = title); ``load_mini_text`` its text-only split (the same 41 questions, each rewritten once
by hand to name the pictured entity: ``image`` null, ids suffixed ``-text``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gemkr_llamaindex.kb.corpus import iter_jsonl

from .base import DatasetFormatError, VQADataset, VQAQuery, as_answer_list, require_file


def _image_source(image, base: Path, path: Path, lineno: int):
    if image is None:
        return None
    if isinstance(image, str):
        return base / image
    if isinstance(image, dict) and "path" in image:
        return base / image["path"]
    if isinstance(image, dict) and {"package", "name"} <= set(image):
        from gemkr_llamaindex.images import load_packaged_image, packaged_image_file

        packaged_image_file(image["package"], image["name"])  # unknown names fail at load time of the file
        return lambda p=image["package"], n=image["name"]: load_packaged_image(p, n)
    raise DatasetFormatError(f"{path}:{lineno}: 'image' must be a path, {{'path'}} or {{'package','name'}}, got {image!r}")


def load_jsonl_queries(path: str | Path) -> list[VQAQuery]:
    path = require_file(path, "query JSONL")
    base = path.parent
    out = []
    for lineno, rec in iter_jsonl(path, DatasetFormatError):
        if not isinstance(rec, dict):
            raise DatasetFormatError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in ("id", "question", "answers") if k not in rec]
        if missing:
            raise DatasetFormatError(f"{path}:{lineno}: missing field(s) {missing}; found {sorted(rec)}")
        out.append(
            VQAQuery(
                qid=str(rec["id"]),
                question=rec["question"],
                image=_image_source(rec.get("image"), base, path, lineno),
                answers=as_answer_list(rec["answers"], path, f"line {lineno}"),
                gold_doc_ids=[str(g) for g in rec.get("gold_doc_ids", [])],
                meta={"image_ref": rec.get("image")},
                source=f"{path}:{lineno}",
            )
        )
    return out


def iter_jsonl_corpus(path: Path) -> Iterator[tuple[str, str]]:
    """``(id, text)`` per line, read by the KB's own JSONL corpus reader (line-numbered errors)."""
    from gemkr_llamaindex.kb import CorpusError, read_jsonl_corpus

    try:
        yield from read_jsonl_corpus(path)
    except CorpusError as exc:
        raise DatasetFormatError(str(exc)) from exc


def load_jsonl(data_dir: str | Path, queries: str = "queries.jsonl", corpus: str = "corpus.jsonl") -> VQADataset:
    """Queries and corpus in our JSONL format (file names relative to ``data_dir``)."""
    data_dir = Path(data_dir)
    corpus_path = require_file(data_dir / corpus, "corpus JSONL")
    return VQADataset("jsonl", load_jsonl_queries(data_dir / queries), lambda: iter_jsonl_corpus(corpus_path))


def _wiki_corpus() -> Iterator[tuple[str, str]]:
    from gemkr_llamaindex.assets import wiki_summaries

    return iter(wiki_summaries())


def _packaged_queries(default: Path, data_dir: str | Path | None, queries: str | None) -> Path:
    """The query file of a packaged-corpus dataset: ``queries`` (relative to ``data_dir`` when one is given,
    else to the working directory), else the shipped file. Other query files in the mini format (a dev set
    of one's own) thus run over the packaged corpus too."""
    if queries is None:
        return Path(data_dir) / default.name if data_dir is not None else default
    return Path(data_dir) / queries if data_dir is not None else Path(queries)


def load_mini(data_dir: str | Path | None = None, queries: str | None = None) -> VQADataset:
    """The shipped mini benchmark; corpus = the packaged Wikipedia summaries (doc id = title)."""
    from ..mini import MINI_PATH

    return VQADataset("mini", load_jsonl_queries(_packaged_queries(MINI_PATH, data_dir, queries)), _wiki_corpus,
                      "mini benchmark over 10,033 Wikipedia summaries")


def load_mini_text(data_dir: str | Path | None = None, queries: str | None = None) -> VQADataset:
    """The mini benchmark's text-only split: each question names the pictured entity, no image.

    Same answers and gold doc ids as ``mini`` (query ids ``<mini id>-text``), same corpus; it measures
    what the picture adds, and gives text-only systems a fair version of the questions.
    """
    from ..mini import MINI_TEXT_PATH

    return VQADataset("mini-text", load_jsonl_queries(_packaged_queries(MINI_TEXT_PATH, data_dir, queries)), _wiki_corpus,
                      "mini benchmark, text-only questions, over 10,033 Wikipedia summaries")
