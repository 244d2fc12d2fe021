"""Runners: retrieval evaluation and end-to-end (retrieve + answer) evaluation, resumable.

Each run directory holds ``config.json`` (what was run), ``per_query.jsonl`` (one record per
retriever and query, appended as soon as it is scored: a restarted run skips the pairs already
there), ``results.json`` (aggregates), ``results.md`` (a table of all retrievers side by side) and
PNG plots. Restarting with a different dataset, K list or corpus raises instead of mixing results.

Each retriever's queries are scored by one scorer (:class:`RetrievalScorer`, :class:`E2EScorer`): here
in a loop, or, with ``ray=RayOptions(...)``, on Ray Data workers (:mod:`eval_vqa.distributed`) that
each build their own; the records are the same either way.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .loaders.base import VQADataset, VQAQuery
from .metrics import aggregate, answer_scores
from .registry import RETRIEVERS, AnswerRequest, build_answerer, build_retriever, check_options, with_companions
from .report import ORACLE_MARK

if TYPE_CHECKING:
    from .distributed import RayOptions

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
    vqa_normalize: str = "official"


# Settings added after the first release: a run folder written before them holds their default.
_CONFIG_DEFAULTS = {"vqa_normalize": "official"}


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
    entry = RETRIEVERS.get(name)
    if entry is not None and entry.oracle:
        return f"{name} {ORACLE_MARK}"
    return f"{name}+tags" if tags and entry is not None and entry.uses_tags else name


def read_appended_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file that is only ever appended to, minus lines an interruption tore.

    A line that is not a JSON object (a write cut short by Ctrl-C, a full disk, a killed job) is
    dropped with a warning that names the file, and the file is rewritten without it so that the next
    append starts on a fresh line; whatever the dropped lines held is computed again.
    """
    raw = path.read_text(encoding="utf-8")
    lines = [line for line in raw.splitlines() if line.strip()]
    records: list[dict] = []
    good: list[str] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
            good.append(line)
    if len(good) != len(lines) or (raw and not raw.endswith("\n")):
        if len(good) != len(lines):
            warnings.warn(f"{path}: dropped {len(lines) - len(good)} torn line(s); those entries run again",
                          stacklevel=2)
        path.write_text("".join(line + "\n" for line in good), encoding="utf-8")
    return records


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``path`` atomically (temp file, then rename), and only if its text changes."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _names_query(score: Callable[[Any, dict], dict]) -> Callable[[Any, dict], dict]:
    """A scorer's errors name the query (its id), not its position in a batch."""

    @functools.wraps(score)
    def scored(self: Any, item: dict) -> dict:
        try:
            return score(self, item)
        except ValueError as exc:
            raise ValueError(f"query {item['qid']!r}: {exc}") from exc

    return scored


class RunDir:
    """The output folder: config check, the per-query JSONL, and the set of finished (label, qid)."""

    def __init__(self, out_dir: str | Path, config: RunConfig, docs: Sequence[tuple[str, str]]) -> None:
        from gemkr_llamaindex.checkpoints import corpus_fingerprint

        self.path = Path(out_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.per_query = self.path / "per_query.jsonl"
        # The corpus's own fingerprint, not only its size: results over other texts are never resumed.
        want = {**asdict(config), "corpus_size": len(docs), "corpus_sha256": corpus_fingerprint(docs)["sha256"]}
        cfg_file = self.path / "config.json"
        if cfg_file.is_file() and self.per_query.is_file():
            try:
                have = json.loads(cfg_file.read_text(encoding="utf-8"))
                if not isinstance(have, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, OSError) as exc:
                raise ValueError(f"{cfg_file} is unreadable ({exc}), so the run in {self.path} cannot be resumed; "
                                 "use another --out folder, or delete the folder to start over") from None
            fixed = ("dataset", "ks", "limit", "max_docs", "seed", "tags", "options", "corpus_size", "corpus_sha256",
                     "answerer", "reader_k", "vqa_normalize")
            diff = [k for k in fixed if have.get(k, _CONFIG_DEFAULTS.get(k)) != want.get(k)]
            if diff:
                raise ValueError(
                    f"{self.path} holds a run with different settings ({', '.join(diff)}); "
                    "use another --out folder or delete it to start over"
                )
            want["retrievers"] = sorted(set(have.get("retrievers", [])) | set(want["retrievers"]))
        _write_if_changed(cfg_file, json.dumps(want, indent=2))
        self.records: list[dict] = read_appended_jsonl(self.per_query) if self.per_query.is_file() else []
        self.done: set[tuple[str, str]] = {(rec["retriever"], rec["qid"]) for rec in self.records}

    def append(self, record: dict) -> None:
        with self.per_query.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.records.append(record)
        self.done.add((record["retriever"], record["qid"]))


def compute_tags(queries: Sequence[VQAQuery], backends: str, out_dir: Path, progress: bool) -> dict[str, str | None]:
    """Visual tags per query (``gemkr_llamaindex.tags.hint_tagger``), cached in the run's ``tags.jsonl``.

    A torn last line (an interrupted run) is dropped and that query is tagged again.
    """
    cache = out_dir / "tags.jsonl"
    tags: dict[str, str | None] = {}
    if cache.is_file():
        for rec in read_appended_jsonl(cache):
            if "qid" in rec:
                tags[rec["qid"]] = rec.get("tags")
    todo = [q for q in queries if q.qid not in tags and q.image is not None]
    if todo:
        try:
            from gemkr_llamaindex.tags import hint_tagger
        except ImportError as exc:
            raise RuntimeError(f"--tags needs gemkr_llamaindex.tags ({exc})") from exc
        tagger = hint_tagger([b.strip() for b in backends.split(",") if b.strip()])
        with cache.open("a", encoding="utf-8") as fh:
            for q in tqdm(todo, desc="tags", disable=not progress):
                tags[q.qid] = tagger(q.load_image())
                fh.write(json.dumps({"qid": q.qid, "tags": tags[q.qid]}, ensure_ascii=False) + "\n")
                fh.flush()
    return tags


class _ImagePaths:
    """``QueryBundle.image_path`` of each query, written (for in-memory images) on first use only."""

    def __init__(self, image_cache: str | Path | None) -> None:
        self.image_cache = image_cache
        self._paths: dict[str, str | None] = {}

    def __call__(self, q: VQAQuery) -> str | None:
        if q.qid not in self._paths:
            self._paths[q.qid] = q.image_path(self.image_cache) if q.image is not None else None
        return self._paths[q.qid]


def _factory_options(name: str, config: RunConfig, top_k: int, queries: Sequence[VQAQuery],
                     image_path: _ImagePaths, progress: bool) -> dict:
    """What a retriever factory gets: the run's options, ``top_k``, ``use_tags`` and, for an oracle, the
    gold annotations keyed by the bundle it will see, ``(question, image_path)``."""
    options = {**config.options, "top_k": top_k, "use_tags": bool(config.tags), "progress": progress}
    if RETRIEVERS[name].oracle:
        gold: dict[tuple[str, str | None], list[str]] = {}
        for q in queries:
            key = (q.question, image_path(q) if _needs_image(name) else None)
            gold[key] = list(dict.fromkeys(gold.get(key, []) + list(q.gold_doc_ids)))
        options["gold"] = gold
    return options


def summarize(records: list[dict], labels: Sequence[str], qids: Iterable[str]) -> dict[str, dict]:
    """Mean of each metric per retriever label over this run's queries, plus latency (mean, p50, p99) and count.

    Records are summed in the order of ``qids`` (the query order), whatever order they were appended in
    (a resumed or a distributed run appends in another), so the means agree to the last bit.
    """
    order = {qid: i for i, qid in enumerate(qids)}
    out: dict[str, dict] = {}
    for label in labels:
        recs = sorted((r for r in records if r["retriever"] == label and r["qid"] in order),
                      key=lambda r: order[r["qid"]])
        if not recs:
            continue
        summary = aggregate(r["metrics"] for r in recs)
        lat = sorted(r["latency_s"] for r in recs)
        summary["latency_ms_mean"] = 1000 * sum(lat) / len(lat)
        summary["latency_ms_p50"] = 1000 * lat[len(lat) // 2]
        summary["latency_ms_p99"] = 1000 * lat[math.ceil(0.99 * len(lat)) - 1]  # nearest rank
        for part in ("retrieval", "answer"):
            values = [r[f"{part}_latency_s"] for r in recs if f"{part}_latency_s" in r]
            if values:
                summary[f"{part}_ms_mean"] = 1000 * sum(values) / len(values)
        summary["n_queries"] = len(recs)
        out[label] = summary
    return out


def query_item(q: VQAQuery, image_path: str | None, tags: str | None) -> dict:
    """One query as the plain record a scorer reads (and a Ray worker gets): the image as a path, never as pixels."""
    return {"qid": q.qid, "question": q.question, "gold_doc_ids": list(q.gold_doc_ids), "answers": list(q.answers),
            "image_path": image_path, "tags": tags}


def _ranking(res: Any) -> list[list]:
    """The full ranked list with the retriever's scores, ``[[doc_id, score], ...]`` (for TREC run files)."""
    return [[doc_id, score] for doc_id, score in zip(res.retrieved_ids, res.retrieved_scores)]


class RetrievalScorer:
    """One retriever, built once (``build_retriever(name, docs, options)``); ``scorer(item)`` scores one query
    (a :func:`query_item`) and returns its ``per_query.jsonl`` record. The local loop and every Ray worker use it."""

    def __init__(self, name: str, label: str, docs: list, options: dict, ks: Sequence[int]) -> None:
        from .evaluator import VQARetrieverEvaluator

        self.label = label
        t0 = time.perf_counter()
        retriever = build_retriever(name, docs, options)
        self.build_s = time.perf_counter() - t0
        self.evaluator = VQARetrieverEvaluator(retriever=retriever, ks=list(ks))

    @_names_query
    def __call__(self, item: dict) -> dict:
        t = time.perf_counter()
        res = self.evaluator.evaluate(item["question"], expected_ids=item["gold_doc_ids"], expected_texts=item["answers"],
                                      image_path=item["image_path"], tags=item["tags"])
        return {
            "retriever": self.label, "qid": item["qid"], "latency_s": time.perf_counter() - t,
            "retrieved_ids": res.retrieved_ids, "metrics": res.metric_vals_dict,
            "build_s": self.build_s, "tags": item["tags"], "ranking": _ranking(res),
        }


class E2EScorer:
    """One retriever and an answerer (``answerer``, else built here from ``answerer_name``); ``scorer(item)``
    retrieves, answers and scores one query (a :func:`query_item` plus its ``meta``) -> its record."""

    def __init__(self, name: str, label: str, docs: list, options: dict, ks: Sequence[int], answerer_name: str,
                 answerer_options: dict, reader_k: int, vqa_normalize: str, answerer: Any = None) -> None:
        from .evaluator import VQARetrieverEvaluator

        self.label, self.k, self.vqa_normalize = label, reader_k, vqa_normalize
        self.answerer = answerer if answerer is not None else build_answerer(answerer_name, answerer_options)
        self.evaluator = VQARetrieverEvaluator(retriever=build_retriever(name, docs, options), ks=list(ks))

    @_names_query
    def __call__(self, item: dict) -> dict:
        from gemkr_llamaindex.query import VQAQueryBundle

        k = self.k
        bundle = VQAQueryBundle(query_str=item["question"], image_path=item["image_path"], tags=item["tags"])
        t = time.perf_counter()
        nodes = self.evaluator.retriever.retrieve(bundle)
        t_ret = time.perf_counter() - t
        res = self.evaluator.score_nodes(bundle, nodes, item["gold_doc_ids"], item["answers"])
        req = AnswerRequest(item["question"], bundle.image_path, list(nodes[:k]), tags=bundle.tags, meta=item["meta"])
        t_ans = time.perf_counter()
        prediction = self.answerer(req)
        t_end = time.perf_counter()
        metrics = {**res.metric_vals_dict, **answer_scores(prediction, item["answers"], self.vqa_normalize)}
        return {
            "retriever": self.label, "qid": item["qid"], "latency_s": t_end - t, "retrieval_latency_s": t_ret,
            "answer_latency_s": t_end - t_ans, "prediction": prediction, "answers": item["answers"],
            "retrieved_ids": res.retrieved_ids[:k], "metrics": metrics, "ranking": _ranking(res),
        }


def _score_todo(scorer_cls: type, kwargs: dict, items: list[dict], run: RunDir, label: str, progress: bool,
                ray: RayOptions | None, local: dict | None = None) -> None:
    """Score ``items`` with one scorer, appending each record to the run as soon as it comes: here, or, with
    ``ray``, on Ray Data workers that each build the scorer from ``kwargs`` (``local``: extra kwargs, here only)."""
    if ray is None:
        records = map(scorer_cls(**kwargs, **(local or {})), items)
    else:
        from .distributed import score_on_ray

        kwargs = {**kwargs, "options": {**kwargs["options"], "progress": False}}  # no bars in the workers' logs
        records = score_on_ray(scorer_cls, kwargs, items, ray)
    for record in tqdm(records, total=len(items), desc=label, disable=not progress):
        run.append(record)


def _publish(results: dict, run: RunDir, labels: Sequence[str], queries: Sequence[VQAQuery], docs: list,
             e2e: bool) -> None:
    """What a paper needs beside the means: paired significance tests between the rows on the table's
    metrics (``results["significance"]``) and TREC run and qrels files (``trec/``)."""
    from .report import quality_columns
    from .significance import compare
    from .trec import write_trec

    metrics = [key for key, _ in quality_columns(results, e2e)]
    results["significance"] = compare(run.records, labels, [q.qid for q in queries], metrics)
    write_trec(run.path, run.records, labels, queries, docs)


def run_retrieval(
    dataset: VQADataset,
    config: RunConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    image_cache: str | Path | None = None,
    ray: RayOptions | None = None,
) -> dict:
    """Evaluate each retriever in ``config.retrievers`` on ``dataset``; returns the results dict.

    The results dict (also ``results.json``) maps retriever label -> metric name -> mean value, with
    the run config, corpus size and relevance variant alongside. With ``ray``, each retriever's queries
    are scored on Ray Data workers (:mod:`eval_vqa.distributed`); the ids and metrics are the same.
    """
    from .report import write_reports

    config = replace(config, retrievers=with_companions(list(config.retrievers)))  # a hybrid brings its parts
    check_options(config.options, config.retrievers)  # a misspelt option fails here, before any work
    queries = dataset.queries[: config.limit] if config.limit else list(dataset.queries)
    docs = select_corpus(dataset, queries, config.max_docs, config.seed)
    run = RunDir(out_dir, config, docs)
    tags = compute_tags(queries, config.tags, run.path, progress) if config.tags else {}
    image_path = _ImagePaths(image_cache)
    labels = []
    for name in config.retrievers:
        label = _label(name, config.tags)
        labels.append(label)
        todo = [q for q in queries if (label, q.qid) not in run.done]
        if not todo:
            continue
        options = _factory_options(name, config, max(config.ks), queries, image_path, progress)
        items = [query_item(q, image_path(q) if _needs_image(name) else None, tags.get(q.qid)) for q in todo]
        kwargs = {"name": name, "label": label, "docs": docs, "options": options, "ks": list(config.ks)}
        _score_todo(RetrievalScorer, kwargs, items, run, label, progress, ray)
    results = {
        "config": asdict(config), "corpus_size": len(docs), "n_queries": len(queries),
        "relevance": config.relevance,
        "retrievers": summarize(run.records, labels, [q.qid for q in queries]),
    }
    _publish(results, run, labels, queries, docs, e2e=False)
    write_reports(results, run.path)
    return results


def run_e2e(
    dataset: VQADataset,
    config: RunConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    image_cache: str | Path | None = None,
    ray: RayOptions | None = None,
) -> dict:
    """Retrieve with each retriever, let ``config.answerer`` read the top ``reader_k`` nodes, score answers.

    Every row of ``config.retrievers`` gets VQA soft accuracy (``config.vqa_normalize``; official by
    default) and exact match, plus the retrieval metrics of its ranking; an oracle row (``gold``) reads
    the gold documents and bounds what the answerer can do. The answerer gets an
    :class:`~eval_vqa.registry.AnswerRequest` with the retrieved ``NodeWithScore`` objects (metadata such
    as GeMKR's clues intact). Latency is split into retrieval and answering. With ``ray``, each Ray Data
    worker builds its own retriever and answerer (:mod:`eval_vqa.distributed`).
    """
    from .report import write_reports

    if not config.answerer:
        raise ValueError("e2e needs an answerer (--answerer)")
    k = config.reader_k or 5
    config = replace(config, retrievers=with_companions(list(config.retrievers)))  # a hybrid brings its parts
    check_options(config.options, config.retrievers, config.answerer)
    queries = dataset.queries[: config.limit] if config.limit else list(dataset.queries)
    docs = select_corpus(dataset, queries, config.max_docs, config.seed)
    run = RunDir(out_dir, config, docs)
    tags = compute_tags(queries, config.tags, run.path, progress) if config.tags else {}
    image_path = _ImagePaths(image_cache)
    labels = [f"{_label(name, config.tags)} -> {config.answerer}" for name in config.retrievers]
    answerer = None
    for name, label in zip(config.retrievers, labels):
        todo = [q for q in queries if (label, q.qid) not in run.done]
        if not todo:
            continue
        if answerer is None and ray is None:  # one answerer for all rows here; on Ray, one per worker
            answerer = build_answerer(config.answerer, dict(config.options))
        options = _factory_options(name, config, max([k, *config.ks]), queries, image_path, progress)
        items = [{**query_item(q, image_path(q), tags.get(q.qid)), "meta": q.meta} for q in todo]
        kwargs = {"name": name, "label": label, "docs": docs, "options": options, "ks": list(config.ks),
                  "answerer_name": config.answerer, "answerer_options": dict(config.options), "reader_k": k,
                  "vqa_normalize": config.vqa_normalize}
        _score_todo(E2EScorer, kwargs, items, run, label, progress, ray, local={"answerer": answerer})
    results = {
        "config": asdict(config), "corpus_size": len(docs), "n_queries": len(queries),
        "relevance": config.relevance,
        "retrievers": summarize(run.records, labels, [q.qid for q in queries]),
    }
    _publish(results, run, labels, queries, docs, e2e=True)
    write_reports(results, run.path, e2e=True)
    return results


__all__ = ["E2EScorer", "RetrievalScorer", "RunConfig", "query_item", "read_appended_jsonl", "run_e2e", "run_retrieval",
           "select_corpus", "summarize"]
