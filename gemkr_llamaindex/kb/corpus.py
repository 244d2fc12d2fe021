"""Read documents from the formats knowledge-based VQA uses, as ``(doc_id, text)`` pairs.

Accepted sources: an iterable of ``(doc_id, text)`` pairs or of LlamaIndex nodes/Documents, or a path:

* ``.jsonl`` / ``.json`` lines: one object per line with an id and a text field (configurable);
* ``.csv``: a header with an id column (``kid``, ``id``, ``passage_id``) and a text column (``text``,
  ``passage_content``): the OKVQA-GS112K and ReMuQ corpora;
* ``.tsv``: the same, or DPR's ``psgs_w100.tsv`` (``id``, ``text``, ``title``); a title column is
  prepended to the text as ``"{title}. {text}"`` unless ``include_title=False``.

Rows are decoded one at a time so a non-UTF-8 row is reported with its line number. A text must be a
string and an id a string or an integer (JSON numbers such as DPR passage ids): a null, boolean, float,
list or object is a :class:`CorpusError` naming the file and line (or the pair's row), never the text
"None".
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gemkr_llamaindex.kb.errors import CorpusError

ID_COLUMNS = ("id", "kid", "passage_id", "doc_id", "_id")
TEXT_COLUMNS = ("text", "passage_content", "contents", "content", "passage")
TITLE_COLUMNS = ("title",)


def hash_fields(h: Any, *fields: str | bytes) -> None:
    """Feed ``fields`` to the hash object ``h``, each as its byte length (8 bytes, little-endian) and then its
    bytes (text as UTF-8). Separator bytes could occur inside ids and texts and make two corpora hash alike;
    length prefixes cannot: different field sequences always feed different bytes. The corpus fingerprints
    (packaged-checkpoint lookup, evaluation run folders and caches) all hash through here."""
    for field in fields:
        data = field.encode("utf-8") if isinstance(field, str) else bytes(field)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)


def corpus_fingerprint(docs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``{"num_docs", "sha256"}`` of a corpus of ``(doc_id, text)`` pairs, in order: the one corpus identity
    (packaged-checkpoint lookup, cached KBs, evaluation run folders and baseline caches)."""
    import hashlib

    h = hashlib.sha256()
    n = 0
    for doc_id, text in docs:
        hash_fields(h, doc_id, text)
        n += 1
    return {"num_docs": n, "sha256": h.hexdigest()}


def titled(title: str, text: str) -> str:
    """A passage in DPR's layout, ``"{title}. {text}"`` (no second period after a title that ends with one)."""
    return f"{title} {text}" if title.endswith(".") else f"{title}. {text}"


def _decoded_lines(path: Path, error: type[Exception] = CorpusError) -> Iterator[str]:
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(
                    f"{path}:{line_no}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-encode the file as UTF-8"
                ) from None


def iter_jsonl(path: str | Path, error: type[Exception] = CorpusError) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of a JSON Lines file: the project's one JSONL reader
    (corpora, training data, query files). A line that is not UTF-8 or not JSON raises ``error`` naming the
    file and line; what a value must hold is the caller's to check (naming the same ``path:line``)."""
    path = Path(path)
    for line_no, line in enumerate(_decoded_lines(path, error), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{line_no}: not valid JSON ({exc.msg}); one object per line") from None


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise CorpusError(f"{path}: no {what} column {wanted!r}; columns found: {columns}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise CorpusError(
        f"{path}: cannot find the {what} column; expected one of {list(candidates)}, found {columns}. "
        f"Name it with id_field=/text_field= (CLI: --id-field/--text-field)"
    )


def _read_jsonl(path: Path, id_field: str | None, text_field: str | None, title_field: str | None,
                include_title: bool) -> Iterator[tuple[str, str]]:
    id_key = id_field or "id"
    text_key = text_field or "text"
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict) or id_key not in row or text_key not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise CorpusError(
                f"{path}:{line_no}: expected fields {id_key!r} and {text_key!r}, found {keys}; "
                "set id_field=/text_field="
            )
        doc_id = _id_str(row[id_key], f"{path}:{line_no}: field {id_key!r}")
        text = _text_str(row[text_key], f"{path}:{line_no}: field {text_key!r}")
        title = row.get(title_field) if title_field else None
        if include_title and title is not None:
            title = _text_str(title, f"{path}:{line_no}: field {title_field!r}")
            if title:
                text = titled(title, text)
        yield doc_id, text


def _describe(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__} ({value!r:.40})"


def _id_str(value: Any, where: str) -> str:
    """A document id as a string: str as is, int as its digits; anything else is an error."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu":
        return str(int(value))
    raise CorpusError(f"{where}: the id is {_describe(value)}; ids must be strings (or integers)")


def _text_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise CorpusError(f"{where}: the text is {_describe(value)}; texts must be strings")


def _read_delimited(path: Path, delimiter: str, id_field: str | None, text_field: str | None,
                    title_field: str | None, include_title: bool) -> Iterator[tuple[str, str]]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(_decoded_lines(path), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CorpusError(f"{path}: the file is empty") from None
    id_col = header.index(_pick(header, id_field, ID_COLUMNS, "id", path))
    text_col = header.index(_pick(header, text_field, TEXT_COLUMNS, "text", path))
    title_name = title_field or next((c for c in TITLE_COLUMNS if c in header), None)
    title_col = header.index(title_name) if (include_title and title_name in header) else None
    for row in reader:
        if not row:
            continue
        if len(row) <= max(id_col, text_col, title_col or 0):
            raise CorpusError(f"{path}:{reader.line_num}: row has {len(row)} fields, header has {len(header)}")
        text = row[text_col]
        if title_col is not None and row[title_col].strip():
            text = titled(row[title_col].strip(), text)
        yield row[id_col], text


def read_jsonl_corpus(path: str | Path, *, id_field: str = "id", text_field: str = "text") -> Iterator[tuple[str, str]]:
    """``(doc_id, text)`` per line of a JSONL file of any name (errors name the line)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {path} does not exist")
    return _read_jsonl(path, id_field, text_field, None, False)


def read_corpus_file(path: str | Path, *, id_field: str | None = None, text_field: str | None = None,
                     title_field: str | None = None, include_title: bool = True) -> Iterator[tuple[str, str]]:
    """``(doc_id, text)`` pairs from a JSONL, CSV or TSV corpus file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {path} does not exist")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _read_jsonl(path, id_field, text_field, title_field, include_title)
    if suffix == ".csv":
        return _read_delimited(path, ",", id_field, text_field, title_field, include_title)
    if suffix == ".tsv":
        return _read_delimited(path, "\t", id_field, text_field, title_field, include_title)
    raise CorpusError(f"{path}: unknown corpus format {suffix!r}; use .jsonl, .csv or .tsv")


def iter_documents(source: Any, **file_options: Any) -> Iterator[tuple[str, str]]:
    """Normalise any accepted source into ``(doc_id, text)`` pairs (ids as strings)."""
    if isinstance(source, (str, Path)):
        yield from read_corpus_file(source, **file_options)
        return
    if not isinstance(source, Iterable):
        raise CorpusError(f"cannot read documents from a {type(source).__name__}")
    for row, item in enumerate(source):
        if hasattr(item, "node_id") and hasattr(item, "get_content"):  # LlamaIndex BaseNode / Document
            yield str(item.node_id), item.get_content()
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            doc_id, text = item
            doc_id = _id_str(doc_id, f"document {row}")
            yield doc_id, _text_str(text, f"document {row} ({doc_id!r})")
        else:
            raise CorpusError(
                f"document {row}: expected a (doc_id, text) pair or a LlamaIndex node, got {type(item).__name__}"
            )
