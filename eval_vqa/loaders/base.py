"""Shared types and checks for the dataset loaders.

Every loader returns a :class:`VQADataset`: a list of :class:`VQAQuery` plus a corpus that can be
iterated (more than once) as ``(doc_id, text)`` pairs, streaming from disk so that a 21M-passage TSV
never has to fit in memory. Doc ids are the ids the retrievers put in ``node.id_``, and the ids gold
annotations refer to.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

ImageSource = str | Path | Callable[[], Image.Image] | None


class DatasetFormatError(ValueError):
    """A dataset file is missing, malformed, or lacks the expected columns/fields."""


class ImageLoadError(OSError):
    """A query image cannot be found or decoded."""


@dataclass
class VQAQuery:
    """One image + question with its answers and (when the benchmark has them) gold document ids.

    ``image`` is a file path, a zero-argument callable returning a PIL image (images stored inside
    TSV or packages), or None for text-only queries. ``source`` says where the query was read
    (``file:line``, ``file: record N``) for error messages.
    """

    qid: str
    question: str
    image: ImageSource
    answers: list[str]
    gold_doc_ids: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    source: str = ""

    def load_image(self) -> Image.Image:
        """The query image as RGB.

        Raises:
            ImageLoadError: no image, file missing, or undecodable (the message names query and source).
        """
        if self.image is None:
            raise ImageLoadError(f"query {self.qid!r} has no image")
        if callable(self.image):
            try:
                return self.image().convert("RGB")
            except ImageLoadError:
                raise
            except Exception as exc:
                raise ImageLoadError(f"query {self.qid!r}: cannot load image: {exc}") from exc
        return open_image(self.image, context=f"query {self.qid!r}")

    def image_path(self, cache_dir: str | Path | None = None) -> str | None:
        """A file path for the image (``QueryBundle.image_path``), writing in-memory images once as PNG."""
        if self.image is None:
            return None
        if not callable(self.image):
            return str(self.image)
        if cache_dir is None:
            from gemkr_llamaindex.assets import cache_dir as _cache_dir

            cache_dir = _cache_dir() / "query_images"
        digest = hashlib.sha1(self.qid.encode("utf-8")).hexdigest()[:16]
        out = Path(cache_dir) / f"{digest}.png"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp.png")
            self.load_image().save(tmp)
            tmp.replace(out)
        return str(out)


Corpus = Callable[[], Iterator[tuple[str, str]]]


@dataclass
class VQADataset:
    """Queries plus a re-iterable corpus: ``for doc_id, text in dataset.corpus(): ...``."""

    name: str
    queries: list[VQAQuery]
    corpus: Corpus
    description: str = ""

    def __post_init__(self) -> None:
        """Refuse what would skew or break a run, naming where the query was read: a repeated query id (a
        resumed run scored only one of them and mixed counts in its table) and a query with neither a
        question nor a picture."""
        first: dict[str, VQAQuery] = {}
        for i, q in enumerate(self.queries):
            where = q.source or f"{self.name} query #{i + 1}"
            if not isinstance(q.question, str):
                raise DatasetFormatError(f"{where}: the question must be a string, got {q.question!r}")
            if not q.question.strip() and q.image is None:
                raise DatasetFormatError(f"{where}: query {q.qid!r} has an empty question and no image")
            if q.qid in first:
                raise DatasetFormatError(f"{where}: duplicate query id {q.qid!r} (first at "
                                         f"{first[q.qid].source or 'an earlier query'}); query ids must be unique")
            first[q.qid] = q

    def corpus_dict(self, limit: int | None = None) -> dict[str, str]:
        """The corpus in memory (first ``limit`` docs); fine for small corpora and tests."""
        out: dict[str, str] = {}
        for doc_id, text in self.corpus():
            if limit is not None and len(out) >= limit:
                break
            out[doc_id] = text
        return out


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is an existing file, else a DatasetFormatError saying what was expected."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{what} not found: {path} (check --data-dir and the file name options)")
    return path


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DatasetFormatError(f"{what} not found: {path} (check --data-dir and the folder options)")
    return path


def check_columns(path: str | Path, found: Sequence[str], expected: Iterable[str]) -> None:
    """Raise a DatasetFormatError naming the file, the columns found and the columns expected."""
    expected = list(expected)
    missing = [c for c in expected if c not in found]
    if missing:
        raise DatasetFormatError(
            f"{path}: missing column(s) {missing}; found {list(found)}, expected at least {expected}"
        )


def pick_key(record: dict, candidates: Sequence[str], path: str | Path, where: str) -> str:
    """The first of ``candidates`` present in ``record``; a clear error otherwise."""
    for key in candidates:
        if key in record:
            return key
    raise DatasetFormatError(
        f"{path}: {where} has none of the fields {list(candidates)}; found {sorted(record)}"
    )


def as_answer_list(value: object, path: str | Path, where: str) -> list[str]:
    """Answers as a list of strings; accepts a string, a list of strings, or DPR/VQA-style dicts."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, dict) and "answer" in item:
                item = item["answer"]
            if not isinstance(item, str):
                raise DatasetFormatError(f"{path}: {where}: answers must be strings, got {item!r}")
            out.append(item)
        return out
    raise DatasetFormatError(f"{path}: {where}: cannot read answers from {value!r}")


def open_image(path: str | Path, context: str = "") -> Image.Image:
    """Open an image file as RGB with errors that name the file (and the query, via ``context``)."""
    prefix = f"{context}: " if context else ""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{prefix}image file not found: {path}")
    return _decode(path, f"{prefix}cannot decode image {path}")


def decode_image_bytes(data: bytes, context: str) -> Image.Image:
    return _decode(data, f"{context}: cannot decode image bytes")


def _decode(src: Path | bytes, message: str) -> Image.Image:
    """The package's one image decoder (``gemkr_llamaindex.images``), with this module's error type."""
    from gemkr_llamaindex.images import ImageLoadError as DecodeError
    from gemkr_llamaindex.images import load_image

    try:
        return load_image(src).image
    except DecodeError as exc:
        raise ImageLoadError(f"{message}: {exc.reason}") from exc


def iter_csv_corpus(
    path: Path,
    id_columns: Sequence[str] = ("kid", "id", "passage_id", "doc_id"),
    text_columns: Sequence[str] = ("text", "passage", "passage_content", "content"),
    delimiter: str = ",",
    title_column: str | None = "title",
) -> Iterator[tuple[str, str]]:
    """Stream ``(doc_id, text)`` from a CSV/TSV with a header; the title, if any, prefixes the text."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetFormatError(f"{path}: empty file, expected a header row") from None
        header = [h.strip() for h in header]
        id_col = next((c for c in id_columns if c in header), None)
        text_col = next((c for c in text_columns if c in header), None)
        if id_col is None or text_col is None:
            raise DatasetFormatError(
                f"{path}: found columns {header}; expected an id column (one of {list(id_columns)}) "
                f"and a text column (one of {list(text_columns)})"
            )
        i_id, i_text = header.index(id_col), header.index(text_col)
        i_title = header.index(title_column) if title_column and title_column in header else None
        width = max(i_id, i_text, i_title if i_title is not None else 0) + 1
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < width:
                raise DatasetFormatError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
            text = row[i_text]
            if i_title is not None and row[i_title]:
                text = f"{row[i_title]}\n{text}"
            yield row[i_id], text
