"""Runners: retrieval evaluation and end-to-end (retrieve + answer) evaluation, resumable.

Each run directory holds ``config.json`` (what was run), ``per_query.jsonl`` (one record per
retriever and query, appended as soon as it is scored: a restarted run skips the pairs already
there), ``results.json`` (aggregates), ``results.md`` (a table of all retrievers side by side) and
PNG plots. Restarting with a different dataset, K list or corpus raises instead of mixing results.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .loaders.base import VQADataset, VQAQuery
from .metrics import aggregate, answer_scores
from .registry import RETRIEVERS, AnswerRequest, build_answerer, build_retriever

TagsFn = Callable[[VQAQuery], "str | None"]


@dataclass
class RunConfig:
    """Everything that determines the numbers of a run (saved as ``config.json``)."""

    dataset: str
    retrievers: list[str]
    ks: list[int]
    relevance: str = "substring"
    limit: int | None = None
    max_docs: int | None = None
    seed: int = 0
    tags: str | None = None
    options: dict = field(default_factory=dict)
    answerer: str | None = None
    reader_k: int | None = None


def select_corpus(dataset: VQADataset, queries: Sequence[VQAQuery], max_docs: int | None, seed: int = 0) -> list:
    """The corpus as a list; with ``max_docs``, every gold doc plus a seeded random sample of the rest.

    Restricting the corpus makes a quick run; the report states the corpus size, since scores on a
    smaller corpus are higher.
    """
    docs = list(dataset.corpus())
    if max_docs is None or max_docs >= len(docs):
        return docs
    gold = {g for q in queries for g in q.gold_doc_ids}
    keep = [d for d in docs if d[0] in gold]
    rest = [d for d in docs if d[0] not in gold]
    random.Random(seed).shuffle(rest)
    keep += rest[: max(0, max_docs - len(keep))]
    order = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    return sorted(keep, key=lambda d: order[d[0]])


def _needs_image(name: str) -> bool:
    return RETRIEVERS[name].uses_image if name in RETRIEVERS else True


def _label(name: str, tags: str | None) -> str:
    uses = RETRIEVERS[name].uses_tags if name in RETRIEVERS else False
    return f"{name}+tags" if tags and uses else name


class RunDir:
    """The output folder: config check, the per-query JSONL, and the set of finished (label, qid)."""

    def __init__(self, out_dir: str | Path, config: RunConfig, corpus_size: int) -> None:
        self.path = Path(out_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.per_query = self.path / "per_query.jsonl"
        want = {**asdict(config), "corpus_size": corpus_size}
        cfg_file = self.path / "config.json"
        if cfg_file.is_file() and self.per_query.is_file():
            have = json.loads(cfg_file.read_text())
            fixed = ("dataset", "ks", "limit", "max_docs", "seed", "tags", "options", "corpus_size", "answerer",
                     "reader_k")
            diff = [k for k in fixed if have.get(k) != want.get(k)]
            if diff:
                raise ValueError(
                    f"{self.path} holds a run with different settings ({', '.join(diff)}); "
                    "use another --out folder or delete it to start over"
                )
            want["retrievers"] = sorted(set(have.get("retrievers", [])) | set(want["retrievers"]))
        cfg_file.write_text(json.dumps(want, indent=2))
        self.done: set[tuple[str, str]] = set()
        self.records: list[dict] = []
        if self.per_query.is_file():
            raw = self.per_query.read_text(encoding="utf-8")
            good: list[str] = []
            for line in raw.splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interrupted write: that query runs again
                good.append(line)
                self.records.append(rec)
                self.done.add((rec["retriever"], rec["qid"]))
            if len(good) != len([x for x in raw.splitlines() if x.strip()]) or (raw and not raw.endswith("\n")):
                # drop the broken tail so the next append starts on a fresh line
                self.per_query.write_text("".join(x + "\n" for x in good), encoding="utf-8")

    def append(self, record: dict) -> None:
        with self.per_query.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.records.append(record)
        self.done.add((record["retriever"], record["qid"]))


def compute_tags(queries: Sequence[VQAQuery], backends: str, out_dir: Path, progress: bool) -> dict[str, str]:
    """Visual tags per query with ``gemkr_llamaindex.tags`` (cached in ``tags.jsonl`` of the run)."""
    cache = out_dir / "tags.jsonl"
    tags: dict[str, str] = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                tags[rec["qid"]] = rec["tags"]
    todo = [q for q in queries if q.qid not in tags and q.image is not None]
    if todo:
        try:
            from gemkr_llamaindex.tags import build_tagger, format_tags
        except ImportError as exc:
            raise RuntimeError(f"--tags needs gemkr_llamaindex.tags ({exc})") from exc
        tagger = build_tagger([b.strip() for b in backends.split(",") if b.strip()])
        with cache.open("a", encoding="utf-8") as fh:
            for q in tqdm(todo, desc="tags", disable=not progress):
                tags[q.qid] = format_tags(tagger.tag(q.load_image()))
                fh.write(json.dumps({"qid": q.qid, "tags": tags[q.qid]}, ensure_ascii=False) + "\n")
    return tags


def summarize(records: list[dict], labels: Sequence[str], qids: set[str]) -> dict[str, dict]:
    """Mean of each metric per retriever label over this run's queries, plus latency and count."""
    out: dict[str, dict] = {}
    for label in labels:
        recs = [r for r in records if r["retriever"] == label and r["qid"] in qids]
        if not recs:
            continue
        summary = aggregate(r["metrics"] for r in recs)
        lat = sorted(r["latency_s"] for r in recs)
        summary["latency_ms_mean"] = 1000 * sum(lat) / len(lat)
        summary["latency_ms_p50"] = 1000 * lat[len(lat) // 2]
        summary["n_queries"] = len(recs)
        out[label] = summary
    return out


def run_retrieval(
    dataset: VQADataset,
    config: RunConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    image_cache: str | Path | None = None,
) -> dict:
    """Evaluate each retriever in ``config.retrievers`` on ``dataset``; returns the results dict.

    The results dict (also ``results.json``) maps retriever label -> metric name -> mean value, with
    the run config, corpus size and relevance variant alongside.
    """
    from .evaluator import VQARetrieverEvaluator
    from .report import write_reports

    queries = dataset.queries[: config.limit] if config.limit else list(dataset.queries)
    docs = select_corpus(dataset, queries, config.max_docs, config.seed)
    run = RunDir(out_dir, config, len(docs))
    tags = compute_tags(queries, config.tags, run.path, progress) if config.tags else {}
    labels = []
    for name in config.retrievers:
        label = _label(name, config.tags)
        labels.append(label)
        todo = [q for q in queries if (label, q.qid) not in run.done]
        if not todo:
            continue
        options = {**config.options, "top_k": max(config.ks), "use_tags": bool(config.tags), "progress": progress}
        t0 = time.perf_counter()
        retriever = build_retriever(name, docs, options)
        build_s = time.perf_counter() - t0
        evaluator = VQARetrieverEvaluator(retriever=retriever, ks=list(config.ks))
        for q in tqdm(todo, desc=label, disable=not progress):
            wants_image = q.image is not None and _needs_image(name)
            image_path = q.image_path(image_cache) if wants_image else None
            t = time.perf_counter()
            res = evaluator.evaluate(q.question, expected_ids=q.gold_doc_ids, expected_texts=q.answers,
                                     image_path=image_path, tags=tags.get(q.qid))
            run.append({
                "retriever": label, "qid": q.qid, "latency_s": time.perf_counter() - t,
                "retrieved_ids": res.retrieved_ids, "metrics": res.metric_vals_dict,
                "build_s": build_s, "tags": tags.get(q.qid),
            })
    results = {
        "config": asdict(config), "corpus_size": len(docs), "n_queries": len(queries),
        "relevance": config.relevance,
        "retrievers": summarize(run.records, labels, {q.qid for q in queries}),
    }
    write_reports(results, run.path)
    return results


def run_e2e(
    dataset: VQADataset,
    config: RunConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    image_cache: str | Path | None = None,
) -> dict:
    """Retrieve ``reader_k`` passages with each retriever, answer with ``config.answerer``, score answers.

    Reports VQA soft accuracy (leave-one-out, official normalisation) and exact match, plus the
    retrieval metrics of the passages the answerer saw.
    """
    from .evaluator import VQARetrieverEvaluator
    from .report import write_reports

    if not config.answerer:
        raise ValueError("e2e needs an answerer (--answerer)")
    k = config.reader_k or 5
    queries = dataset.queries[: config.limit] if config.limit else list(dataset.queries)
    docs = select_corpus(dataset, queries, config.max_docs, config.seed)
    run = RunDir(out_dir, config, len(docs))
    tags = compute_tags(queries, config.tags, run.path, progress) if config.tags else {}
    answerer = build_answerer(config.answerer, dict(config.options))
    labels = []
    for name in config.retrievers:
        label = f"{_label(name, config.tags)} -> {config.answerer}"
        labels.append(label)
        todo = [q for q in queries if (label, q.qid) not in run.done]
        if not todo:
            continue
        options = {**config.options, "top_k": max([k, *config.ks]), "use_tags": bool(config.tags),
                   "progress": progress}
        evaluator = VQARetrieverEvaluator(retriever=build_retriever(name, docs, options), ks=list(config.ks))
        for q in tqdm(todo, desc=label, disable=not progress):
            image_path = q.image_path(image_cache) if q.image is not None else None
            t = time.perf_counter()
            res = evaluator.evaluate(q.question, expected_ids=q.gold_doc_ids, expected_texts=q.answers,
                                     image_path=image_path, tags=tags.get(q.qid))
            t_ret = time.perf_counter() - t
            req = AnswerRequest(q.question, image_path, list(res.retrieved_texts[:k]), list(res.retrieved_ids[:k]),
                                tags.get(q.qid), q.meta)
            prediction = answerer(req)
            metrics = {**res.metric_vals_dict, **answer_scores(prediction, q.answers)}
            run.append({
                "retriever": label, "qid": q.qid, "latency_s": time.perf_counter() - t,
                "retrieval_latency_s": t_ret, "prediction": prediction, "answers": q.answers,
                "retrieved_ids": res.retrieved_ids[:k], "metrics": metrics,
            })
    results = {
        "config": asdict(config), "corpus_size": len(docs), "n_queries": len(queries),
        "relevance": config.relevance,
        "retrievers": summarize(run.records, labels, {q.qid for q in queries}),
    }
    write_reports(results, run.path, e2e=True)
    return results


__all__ = ["RunConfig", "run_e2e", "run_retrieval", "select_corpus", "summarize"]
