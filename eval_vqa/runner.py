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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from .loaders.base import VQADataset, VQAQuery
from .metrics import aggregate, answer_scores
from .registry import RETRIEVERS, AnswerRequest, build_answerer, build_retriever, with_companions
from .report import ORACLE_MARK

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
                     "reader_k", "vqa_normalize")
            diff = [k for k in fixed if have.get(k, _CONFIG_DEFAULTS.get(k)) != want.get(k)]
            if diff:
                raise ValueError(
                    f"{self.path} holds a run with different settings ({', '.join(diff)}); "
                    "use another --out folder or delete it to start over"
                )
            want["retrievers"] = sorted(set(have.get("retrievers", [])) | set(want["retrievers"]))
        cfg_file.write_text(json.dumps(want, indent=2))
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
        for part in ("retrieval", "answer"):
            values = [r[f"{part}_latency_s"] for r in recs if f"{part}_latency_s" in r]
            if values:
                summary[f"{part}_ms_mean"] = 1000 * sum(values) / len(values)
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

    config = replace(config, retrievers=with_companions(list(config.retrievers)))  # a hybrid brings its parts
    queries = dataset.queries[: config.limit] if config.limit else list(dataset.queries)
    docs = select_corpus(dataset, queries, config.max_docs, config.seed)
    run = RunDir(out_dir, config, len(docs))
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
        t0 = time.perf_counter()
        retriever = build_retriever(name, docs, options)
        build_s = time.perf_counter() - t0
        evaluator = VQARetrieverEvaluator(retriever=retriever, ks=list(config.ks))
        for q in tqdm(todo, desc=label, disable=not progress):
            t = time.perf_counter()
            res = evaluator.evaluate(q.question, expected_ids=q.gold_doc_ids, expected_texts=q.answers,
                                     image_path=image_path(q) if _needs_image(name) else None, tags=tags.get(q.qid))
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
    """Retrieve with each retriever, let ``config.answerer`` read the top ``reader_k`` nodes, score answers.

    Every row of ``config.retrievers`` gets VQA soft accuracy (``config.vqa_normalize``; official by
    default) and exact match, plus the retrieval metrics of its ranking; an oracle row (``gold``) reads
    the gold documents and bounds what the answerer can do. The answerer gets an
    :class:`~eval_vqa.registry.AnswerRequest` with the retrieved ``NodeWithScore`` objects (metadata such
    as GeMKR's clues intact). Latency is split into retrieval and answering.
    """
    from gemkr_llamaindex.llamaindex.query import VQAQueryBundle

    from .evaluator import VQARetrieverEvaluator
    from .report import write_reports

    if not config.answerer:
        raise ValueError("e2e needs an answerer (--answerer)")
    k = config.reader_k or 5
    config = replace(config, retrievers=with_companions(list(config.retrievers)))  # a hybrid brings its parts
    queries = dataset.queries[: config.limit] if config.limit else list(dataset.queries)
    docs = select_corpus(dataset, queries, config.max_docs, config.seed)
    run = RunDir(out_dir, config, len(docs))
    tags = compute_tags(queries, config.tags, run.path, progress) if config.tags else {}
    image_path = _ImagePaths(image_cache)
    labels = [f"{_label(name, config.tags)} -> {config.answerer}" for name in config.retrievers]
    answerer = None
    for name, label in zip(config.retrievers, labels):
        todo = [q for q in queries if (label, q.qid) not in run.done]
        if not todo:
            continue
        if answerer is None:
            answerer = build_answerer(config.answerer, dict(config.options))
        options = _factory_options(name, config, max([k, *config.ks]), queries, image_path, progress)
        evaluator = VQARetrieverEvaluator(retriever=build_retriever(name, docs, options), ks=list(config.ks))
        for q in tqdm(todo, desc=label, disable=not progress):
            bundle = VQAQueryBundle(query_str=q.question, image_path=image_path(q), tags=tags.get(q.qid))
            t = time.perf_counter()
            nodes = evaluator.retriever.retrieve(bundle)
            t_ret = time.perf_counter() - t
            res = evaluator.score_nodes(bundle, nodes, q.gold_doc_ids, q.answers)
            req = AnswerRequest(q.question, bundle.image_path, list(nodes[:k]), tags=bundle.tags, meta=q.meta)
            t_ans = time.perf_counter()
            prediction = answerer(req)
            t_end = time.perf_counter()
            metrics = {**res.metric_vals_dict, **answer_scores(prediction, q.answers, config.vqa_normalize)}
            run.append({
                "retriever": label, "qid": q.qid, "latency_s": t_end - t, "retrieval_latency_s": t_ret,
                "answer_latency_s": t_end - t_ans, "prediction": prediction, "answers": q.answers,
                "retrieved_ids": res.retrieved_ids[:k], "metrics": metrics,
            })
    results = {
        "config": asdict(config), "corpus_size": len(docs), "n_queries": len(queries),
        "relevance": config.relevance,
        "retrievers": summarize(run.records, labels, {q.qid for q in queries}),
    }
    write_reports(results, run.path, e2e=True)
    return results


__all__ = ["RunConfig", "read_appended_jsonl", "run_e2e", "run_retrieval", "select_corpus", "summarize"]
