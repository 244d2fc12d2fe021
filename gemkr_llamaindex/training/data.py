"""Instruction data for GeMKR training: a JSONL file of queries with their positive documents.

One JSON object per line::

    {"image": "images/0001.jpg", "question": "What is this animal known for?",
     "positive_doc_ids": ["Tiger"], "tags": "tiger cat, Egyptian cat", "id": "q1"}

* ``image``: a path (relative paths are resolved against the JSONL file's folder), or a packaged image
  ``{"package": "skimage", "name": "chelsea"}`` as used by the evaluation benchmarks' files;
* ``question``: the textual query; ``positive_doc_ids``: KB document ids (at least one);
* ``tags`` (optional): a pre-formatted visual-tags string for the template; ``id`` (optional).

Any evaluation loader's rows convert with ``rows_from_benchmark`` (their ``gold_doc_ids`` become the
positives). ``build_examples`` samples the knowledge clues (two per positive document by default).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemkr_llamaindex.training.clues import ClueSampler


class TrainingDataError(ValueError):
    """A training JSONL row is malformed; the message names file, line and the fix."""


@dataclass(frozen=True)
class QueryRecord:
    """One line of the training JSONL."""

    image: str | dict[str, str]
    question: str
    positive_doc_ids: tuple[str, ...]
    tags: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class InstructionExample:
    """One (query, clue) training pair: the response the model learns to write is ``clue_ids``."""

    record: QueryRecord
    doc_id: str
    clue_ids: tuple[int, ...]


def _check_row(obj: Any, where: str, base: Path | None) -> QueryRecord:
    if not isinstance(obj, dict):
        raise TrainingDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("image", "question", "positive_doc_ids") if k not in obj]
    if missing:
        raise TrainingDataError(f"{where}: missing field(s) {missing}; each row needs image, question, positive_doc_ids")
    image = obj["image"]
    if isinstance(image, str):
        path = Path(image)
        if not path.is_absolute() and base is not None:
            path = base / path
        image = str(path)
    elif not (isinstance(image, dict) and {"package", "name"} <= set(image)):
        raise TrainingDataError(f"{where}: 'image' must be a path or {{\"package\": ..., \"name\": ...}}")
    if not isinstance(obj["question"], str) or not obj["question"].strip():
        raise TrainingDataError(f"{where}: 'question' must be a non-empty string")
    docs = obj["positive_doc_ids"]
    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
        raise TrainingDataError(f"{where}: 'positive_doc_ids' must be a non-empty list of document id strings")
    tags = obj.get("tags")
    if tags is not None and not isinstance(tags, str):
        raise TrainingDataError(f"{where}: 'tags' must be a string (format it with gemkr_llamaindex.tags.format_tags)")
    return QueryRecord(image, obj["question"], tuple(docs), tags, obj.get("id"))


def read_training_jsonl(path: str | Path) -> list[QueryRecord]:
    """Parse and validate a training file; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training file {path} does not exist")
    records = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{path}:{line_no}: invalid JSON ({exc.msg}); one object per line") from None
            records.append(_check_row(obj, f"{path}:{line_no}", path.parent))
    if not records:
        raise TrainingDataError(f"{path}: no training rows")
    return records


def write_training_jsonl(records: Iterable[QueryRecord | dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            if isinstance(r, QueryRecord):
                r = {"image": r.image, "question": r.question, "positive_doc_ids": list(r.positive_doc_ids),
                     **({"tags": r.tags} if r.tags else {}), **({"id": r.id} if r.id else {})}
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def rows_from_benchmark(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Evaluation rows (``image``, ``question``, ``gold_doc_ids``) as training rows."""
    for row in rows:
        yield {"image": row["image"], "question": row["question"], "positive_doc_ids": list(row["gold_doc_ids"]),
               "id": row.get("id")}


def build_examples(records: Sequence[QueryRecord], sampler: ClueSampler) -> list[InstructionExample]:
    """Sample the clues: one example per (query, clue); unknown documents are counted in ``sampler.stats``."""
    examples = []
    for rec in records:
        for clue in sampler.sample_many(rec.question, rec.positive_doc_ids):
            examples.append(InstructionExample(rec, clue.doc_id, tuple(clue.token_ids)))
    if not examples:
        raise TrainingDataError(
            "no training examples: none of the positive_doc_ids were found in the knowledge base "
            f"(missing e.g. {sampler.stats.docs_missing[:3]}); build the KB from the same corpus"
        )
    return examples
