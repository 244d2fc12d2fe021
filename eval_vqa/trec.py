"""TREC run and qrels files of a run, so trec_eval, ranx and ir_measures (and score fusion) read it as it is.

A run folder gets ``trec/``: one ``<row>.run`` per row (``qid Q0 docno rank score row``, every query's
ranked list with the retriever's scores, from ``per_query.jsonl``'s ``ranking``) and the judgments
beside them: ``qrels.gold.txt`` (the gold documents, relevance 1) when the dataset has gold ids, and
``qrels.substring.txt`` / ``qrels.word.txt``: the answer-containment judgments (1 or 0) of every passage
any row of the run retrieved for the query. Against these files trec_eval's ``recall_K``,
``success_K``, ``P_K`` and ``recip_rank`` over the top K (ir_measures ``R@K``, ``Success@K``, ``P@K``,
``RR@K``) give the table's R@K, Hit@K, P@K and MRR@K, and, against a pseudo-relevance qrels, its PRP@K
and PRR@K (``tests/test_eval_trec.py`` checks that with ir_measures).

Tools rank a run by score, not by the rank column, and break ties by docno. Where a retriever's scores
tie or rise (RRF ties, a retriever without scores), the file's score is nudged to the next float below
the previous one (single precision: trec_eval stores scores as C floats), so every tool reads the
retriever's own order; ``per_query.jsonl`` keeps the raw scores. Doc ids and query ids with whitespace
or ``%`` are percent-encoded (``urllib.parse.unquote`` restores them), since the formats split on
whitespace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .metrics import RELEVANCE_MODES, is_relevant

TREC_DIR = "trec"
_UNSAFE = re.compile(r"[\s%]")


def trec_id(text: str) -> str:
    """``text`` with whitespace and ``%`` percent-encoded: one token of a TREC line."""
    return _UNSAFE.sub(lambda m: quote(m.group(), safe=""), str(text))


def run_name(label: str) -> str:
    """A row label as a file name and TREC run tag: ``gold (oracle)`` -> ``gold_oracle``."""
    return re.sub(r"[^\w+.-]+", "_", label.replace("->", " ")).strip("_") or "run"


def strictly_decreasing(scores: Sequence[float | None]) -> list[float]:
    """The scores as written: the retriever's while they fall, else the next single-precision float below the
    previous one (trec_eval keeps scores as C floats: a double-precision step would tie again there)."""
    if any(s is None or not math.isfinite(s) for s in scores):
        return [float(len(scores) - i) for i in range(len(scores))]  # no usable scores: the rank decides
    out: list[float] = []
    for s in scores:
        if out and not np.float32(s) < np.float32(out[-1]):
            s = np.nextafter(np.float32(out[-1]), np.float32(-np.inf))
        out.append(float(s))
    return out


def ranking(record: dict) -> list[tuple[str, float | None]]:
    """A ``per_query.jsonl`` record's ranked list: ``ranking`` ([id, score] pairs), else its ids unscored."""
    if "ranking" in record:
        return [(str(doc_id), score) for doc_id, score in record["ranking"]]
    return [(str(doc_id), None) for doc_id in record.get("retrieved_ids", [])]


def write_trec(out_dir: str | Path, records: Iterable[dict], labels: Sequence[str], queries: Sequence,
               docs: Sequence[tuple[str, str]], modes: Sequence[str] = RELEVANCE_MODES) -> list[Path]:
    """Write ``out_dir/trec/``: a run file per label in ``labels`` and the qrels (see the module docstring).

    ``queries``: the run's queries (``qid``, ``gold_doc_ids``, ``answers``), in order; ``docs``: the corpus.
    Returns the paths written.
    """
    folder = Path(out_dir) / TREC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    by_label: dict[str, dict[str, list[tuple[str, float | None]]]] = {}
    for rec in records:
        by_label.setdefault(rec["retriever"], {})[rec["qid"]] = ranking(rec)
    written = []
    pooled: dict[str, dict[str, None]] = {q.qid: {} for q in queries}
    for label in labels:
        lines = []
        for q in queries:
            ranked = by_label.get(label, {}).get(q.qid, [])
            pooled[q.qid].update(dict.fromkeys(doc_id for doc_id, _ in ranked))
            for rank, ((doc_id, _), score) in enumerate(zip(ranked, strictly_decreasing([s for _, s in ranked])), 1):
                lines.append(f"{trec_id(q.qid)} Q0 {trec_id(doc_id)} {rank} {score!r} {run_name(label)}\n")
        written.append(_write(folder / f"{run_name(label)}.run", lines))
    if any(q.gold_doc_ids for q in queries):
        written.append(_write(folder / "qrels.gold.txt", [
            f"{trec_id(q.qid)} 0 {trec_id(g)} 1\n" for q in queries for g in dict.fromkeys(q.gold_doc_ids)]))
    if any(q.answers for q in queries):
        text = dict(docs)
        for mode in modes:
            written.append(_write(folder / f"qrels.{mode}.txt", [
                f"{trec_id(q.qid)} 0 {trec_id(d)} {int(is_relevant(text.get(d, ''), q.answers, mode))}\n"
                for q in queries if q.answers for d in pooled[q.qid]]))
    return written


def _write(path: Path, lines: list[str]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path
