"""Instruction data for GeMKR training: a JSONL file of queries with their positive documents.

One JSON object per line::

    {"image": "images/0001.jpg", "question": "What is this animal known for?",
     "positive_doc_ids": ["Tiger"], "tags": "tiger cat, Egyptian cat", "id": "q1"}

* ``image``: a path (relative paths are resolved against the JSONL file's folder), a packaged image
  ``{"package": "skimage", "name": "chelsea"}`` as used by the evaluation benchmarks' files, or
  ``null`` (absent) for a text-only query: the model then sees its learned "no image" input, which is
  what text-only queries get at inference too;
* ``question``: the textual query; ``positive_doc_ids``: KB document ids (at least one);
* ``tags`` (optional): a pre-formatted visual-tags string for the template; ``id`` (optional).

Any evaluation loader's rows convert with ``rows_from_benchmark`` (their ``gold_doc_ids`` become the
positives). ``build_examples`` cuts the knowledge clues: sampled by the paper's clue sampler (two per
positive document by default), the document's opening tokens (the target of ``anchor="doc_start"``
decoding), or a mix. Without any labelled file, ``corpus_queries`` builds the queries from the KB alone.
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

    image: str | dict[str, str] | None
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
    missing = [k for k in ("question", "positive_doc_ids") if k not in obj]
    if missing:
        raise TrainingDataError(f"{where}: missing field(s) {missing}; each row needs question and positive_doc_ids "
                                "(and an image, or null for a text-only query)")
    image = obj.get("image")
    if image is None:
        pass
    elif isinstance(image, str):
        path = Path(image)
        if not path.is_absolute() and base is not None:
            path = base / path
        image = str(path)
    elif not (isinstance(image, dict) and {"package", "name"} <= set(image)):
        raise TrainingDataError(f"{where}: 'image' must be a path, {{\"package\": ..., \"name\": ...}} or null")
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
    from gemkr_llamaindex.kb.corpus import iter_jsonl

    records = [_check_row(obj, f"{path}:{line_no}", path.parent) for line_no, obj in iter_jsonl(path, TrainingDataError)]
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


CLUE_MODES = ("sampled", "doc_start", "mixed")
CLUE_KEYWORDS = ("question", "question+tags")


def doc_start_clue(kb: Any, doc_id: str, length: int, end_token_id: int | None) -> list[int]:
    """The document's first ``length`` tokens (the clue ``anchor="doc_start"`` decoding generates), with the
    end-of-sequence token when the whole document is shorter (decoding ends such a clue at the document's
    end with it)."""
    ids = [int(t) for t in kb.doc_tokens(doc_id)]
    clue = ids[:length]
    if len(ids) <= length and end_token_id is not None:
        clue.append(int(end_token_id))
    return clue


def build_examples(records: Sequence[QueryRecord], sampler: ClueSampler, clue_mode: str = "sampled",
                   end_token_id: int | None = None, opening_share: float = 0.5,
                   clue_keywords: str = "question") -> list[InstructionExample]:
    """Cut the clues: one example per (query, clue); unknown documents are counted in ``sampler.stats``.

    ``clue_mode``: ``"sampled"`` (the paper's sampler), ``"doc_start"`` (each positive document's opening,
    ``sampler.length`` tokens) or ``"mixed"`` (each query's targets are openings with probability
    ``opening_share``, drawn from the sampler's seeded generator, else sampled clues).
    ``clue_keywords``: the text whose keywords steer the sampler, ``"question"`` (the paper) or
    ``"question+tags"`` (the question and the query's visual tags: the whole text the LLM reads when the
    tags stand in for the picture, so sampled clues quote the sentences that hold the tags' words).
    """
    if clue_keywords not in CLUE_KEYWORDS:
        raise ValueError(f"clue_keywords must be one of {CLUE_KEYWORDS}, got {clue_keywords!r}")
    if clue_mode not in CLUE_MODES:
        raise ValueError(f"clue_mode must be one of {CLUE_MODES}, got {clue_mode!r}")
    if not 0.0 <= opening_share <= 1.0:
        raise ValueError(f"opening_share must lie in [0, 1], got {opening_share}")
    examples = []
    for rec in records:
        opening = clue_mode == "doc_start" or (clue_mode == "mixed" and sampler.rng.random() < opening_share)
        if opening:
            for doc_id in rec.positive_doc_ids:
                try:
                    clue = doc_start_clue(sampler.kb, doc_id, sampler.length, end_token_id)
                except KeyError:
                    sampler.stats.docs_missing.append(doc_id)
                    continue
                examples.append(InstructionExample(rec, doc_id, tuple(clue)))
            continue
        text = f"{rec.question} {rec.tags}" if clue_keywords == "question+tags" and rec.tags else rec.question
        for clue in sampler.sample_many(text, rec.positive_doc_ids):
            examples.append(InstructionExample(rec, clue.doc_id, tuple(clue.token_ids)))
    if not examples:
        raise TrainingDataError(
            "no training examples: none of the positive_doc_ids were found in the knowledge base "
            f"(missing e.g. {sampler.stats.docs_missing[:3]}); build the KB from the same corpus"
        )
    return examples
