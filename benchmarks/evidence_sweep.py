"""Evidence scoring settings compared offline: one search per query, every rule re-ranked from its n-grams.

For each query of the given files (mini format) it runs the shipped checkpoint once with every evidence
source collected (the search's clues with their prefixes, every n-gram a beam visited, the query's word
n-grams, the LM's top first tokens), looks them all up in the KB (counts and containing documents, up
to ``--max-count`` occurrences), and caches the lot under ``--cache``. Then it ranks documents under
each setting of the grid with the library's own :func:`gemkr_llamaindex.decoding.evidence.aggregate`
and prints R@1 / R@10 (share of gold documents in the top K) and Hit@1 / Hit@10 (share of queries with a
gold document in the top K) beside the paper's clue ranking and BM25 on the same queries.

The LM and the KB run once per query; the grid costs milliseconds per setting. Settings are chosen on the
development files (``benchmarks/data``) only, never on the mini benchmark.

Usage::

    python -m benchmarks.evidence_sweep benchmarks/data/dev_text.jsonl \\
        benchmarks/data/dev_photo.jsonl benchmarks/data/dev_text_infer.jsonl [--option beams=30 ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.env import print_environment

COLLECT_SOURCES = ("clues", "beams", "query", "inflections", "unigrams")


@dataclass
class QueryEvidence:
    """One query's candidate n-grams with their LM log-likelihoods, KB counts and documents."""

    id: str
    gold: list[str]
    clue_ranking: list[str]  # the paper's (prior-calibrated) document ranking
    tokens: list[tuple[int, ...]]
    texts: list[str]
    logprobs: np.ndarray
    sources: list[str]
    counts: np.ndarray
    docs: list[np.ndarray]
    bm25: list[str]
    seconds: float


def collect(path: Path, options: dict, max_count: int, unigram_top: int, cache: Path,
            subwords: bool = False) -> list[QueryEvidence]:
    """Run (or read from ``cache``) the search and the evidence lookups for every query of ``path``.

    ``subwords``: n-grams are counted and located wherever their tokens occur, and generated n-grams that
    end inside a word are kept, marked (source + ``~``), for :class:`Setting` ``whole_words`` to drop;
    by default (the library's ``evidence_whole_words``) only occurrences that end a word count."""
    from gemkr_llamaindex.checkpoints import packaged_checkpoint

    checkpoint = packaged_checkpoint()
    key = hashlib.sha256(json.dumps([path.read_text(), sorted(options.items()), max_count, unigram_top,
                                     str(checkpoint), subwords, 5]).encode()).hexdigest()[:12]
    file = cache / f"{path.stem}-{key}.json"
    if file.is_file():
        return [_from_json(r) for r in json.loads(file.read_text())]

    from eval_vqa.baselines.bm25 import BM25Baseline
    from eval_vqa.mini import load_mini_benchmark
    from gemkr_llamaindex.assets import wiki_summaries
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.images import packaged_image_path
    from gemkr_llamaindex.kb_cache import wiki_summaries_kb
    from gemkr_llamaindex.llamaindex import ClueGenerator, VQAQueryBundle
    from gemkr_llamaindex.llamaindex.clue_generator import checkpoint_decoding_config

    # the search with the paper's (prior-calibrated) clue ranking; every source's n-grams are collected below
    config = DecodingConfig.from_options({**options, "evidence_unigram_top": unigram_top,
                                          "evidence_whole_words": not subwords},
                                         checkpoint_decoding_config(checkpoint)).with_scoring("paper")
    gen = ClueGenerator.from_checkpoint(checkpoint, config=config, batch_size=1)
    kb = wiki_summaries_kb()
    bm25 = BM25Baseline(list(wiki_summaries()), similarity_top_k=10, use_tags=True)
    items = load_mini_benchmark(path)
    tagger = None
    if any(it["image"] for it in items):
        from gemkr_llamaindex.tags import hint_tagger

        tagger = hint_tagger()
    out = []
    for n, it in enumerate(items, 1):
        image = packaged_image_path(it["image"]["package"], it["image"]["name"]) if it["image"] else None
        bundle = VQAQueryBundle(query_str=it["question"], tags=tagger(str(image)) if image is not None else None)
        t0 = time.perf_counter()
        prepared = gen.prepare([bundle])
        prompts = gen.build_prompts(prepared)
        (res,) = gen.search_clues(prompts, 1, kb, keep_history=True)
        question = prepared[0].prompt.question
        ngrams, lookup = gen.evidence_ngrams(prompts, 0, question, bundle.tags, res, kb, COLLECT_SOURCES, max_count)
        seconds = time.perf_counter() - t0
        sources = [g.source for g in ngrams]
        if subwords:  # keep what the whole-word filter would drop, marked, so settings can compare both
            from gemkr_llamaindex.decoding.evidence import clue_prefixes, visited_ngrams

            starts = gen.word_starts
            whole = {t for c in res.clues for t, _ in clue_prefixes(c.token_ids, c.prefix_logprobs, starts)}
            whole |= {t for t, _ in visited_ngrams(res.visited or {}, starts)}
            sources = [s if s not in ("clues", "beams") or tuple(g.token_ids) in whole else s + "~"
                       for g, s in zip(ngrams, sources)]
        out.append(QueryEvidence(
            it["id"], list(it["gold_doc_ids"]), [d.doc_id for d in res.docs],
            [tuple(g.token_ids) for g in ngrams], [g.text for g in ngrams], np.array([g.logprob for g in ngrams]), sources,
            lookup.counts.copy(), [lookup.docs_of(i).copy() for i in range(len(ngrams))],
            [h.node.node_id for h in bm25.retrieve(bundle)], seconds))
        print(f"\r{path.name}: {n}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps([_to_json(q) for q in out]))
    tmp.replace(file)
    return out


def _to_json(q: QueryEvidence) -> dict:
    return {"id": q.id, "gold": q.gold, "clue_ranking": q.clue_ranking, "tokens": [list(t) for t in q.tokens], "texts": q.texts,
            "logprobs": q.logprobs.tolist(), "sources": q.sources, "counts": q.counts.tolist(),
            "docs": [d.tolist() for d in q.docs], "bm25": q.bm25, "seconds": q.seconds}


def _from_json(r: dict) -> QueryEvidence:
    return QueryEvidence(r["id"], r["gold"], r["clue_ranking"], [tuple(t) for t in r["tokens"]], r["texts"],
                         np.array(r["logprobs"]), r["sources"], np.array(r["counts"]),
                         [np.array(d, dtype=np.int64) for d in r["docs"]], r["bm25"], r["seconds"])


@dataclass(frozen=True)
class Setting:
    sources: tuple[str, ...]
    alpha: float = 2.0
    beta: float = 0.8
    max_count: int = 1500
    generated_weight: float = 1.0
    whole_words: bool = True
    fusion: str = "none"  # "none", or "rrf": reciprocal ranks of the evidence and clue rankings summed
    rrf_k: int = 60
    clue_weight: float = 1.0  # the clue ranking's share in rrf
    variants: str = "all"  # query n-gram forms: "all", or "space" (only the forms after a space)

    def label(self) -> str:
        parts = ["+".join(self.sources), f"a{self.alpha:g}", f"b{self.beta:g}", f"cap{self.max_count}"]
        if self.generated_weight != 1.0:
            parts.append(f"g{self.generated_weight:g}")
        if not self.whole_words:
            parts.append("subwords")
        if self.variants != "all":
            parts.append(f"variants={self.variants}")
        if self.fusion != "none":
            parts.append(f"{self.fusion}{self.rrf_k}x{self.clue_weight:g}")
        return " ".join(parts)


def rank(q: QueryEvidence, s: Setting, num_tokens: int, doc_ids: Sequence[str]) -> list[str]:
    """Document ids, best first, of one query under one setting (the library's aggregation)."""
    from gemkr_llamaindex.decoding.evidence import GENERATED, Ngram, aggregate

    keep = [i for i, src in enumerate(q.sources)
            if src.rstrip("~") in s.sources and (not s.whole_words or not src.endswith("~"))
            and (s.variants == "all" or src != "query" or q.texts[i].startswith(" "))]
    ngrams = [Ngram(q.tokens[i], float(q.logprobs[i]), q.sources[i].rstrip("~")) for i in keep]
    ev = aggregate(ngrams, q.counts[keep], [q.docs[i] for i in keep], num_tokens, alpha=s.alpha, beta=s.beta,
                   max_count=s.max_count, source_weights={g: s.generated_weight for g in GENERATED})
    ranked = [doc_ids[d] for d, _ in sorted(ev.items(), key=lambda kv: (-kv[1].score, kv[0]))]
    if s.fusion == "rrf":
        fused: dict[str, float] = {}
        for weight, lst in ((1.0, ranked), (s.clue_weight, q.clue_ranking)):
            for r, d in enumerate(lst[:100]):
                fused[d] = fused.get(d, 0.0) + weight / (s.rrf_k + r + 1)
        ranked = sorted(fused, key=lambda d: -fused[d])
    return ranked


def metrics(rankings: Sequence[list[str]], golds: Sequence[list[str]]) -> dict[str, float]:
    """R@1, R@10 (share of gold documents in the top K) and Hit@1, Hit@10 (queries with one), in %."""
    out = {}
    for k in (1, 10):
        out[f"R@{k}"] = 100 * float(np.mean([len(set(r[:k]) & set(g)) / len(g) for r, g in zip(rankings, golds)]))
        out[f"Hit@{k}"] = 100 * float(np.mean([bool(set(r[:k]) & set(g)) for r, g in zip(rankings, golds)]))
    return out


def grid() -> list[Setting]:
    """The settings compared: sources at the chosen weights, then each weight moved around the choice
    (alpha 1.5, beta 0, generated n-grams at half weight), SEAL's published settings, and rank fusion
    with the paper's clue ranking."""
    default = ("clues", "query", "inflections")
    combos = [("query",), ("query", "inflections"), ("clues",), ("clues", "query"), default,
              ("beams", "query", "inflections"), ("clues", "beams", "query", "inflections"),
              ("query", "inflections", "unigrams"), (*default, "unigrams")]
    out = [Setting(c, alpha=1.5, beta=0.0, generated_weight=0.5) for c in combos]
    out += [Setting(default, alpha=a, beta=0.0, generated_weight=g)
            for a, g in itertools.product((1.0, 1.25, 1.5, 2.0), (0.25, 0.35, 0.5, 1.0)) if (a, g) != (1.5, 0.5)]
    out += [Setting(default, alpha=1.5, beta=b, generated_weight=0.5) for b in (0.25, 0.5, 0.8)]
    out += [Setting(default, alpha=1.5, beta=0.0, generated_weight=0.5, max_count=m) for m in (300, 5000)]
    out += [Setting(default, alpha=1.5, beta=0.0, generated_weight=0.5, whole_words=False)]  # (--subwords runs)
    out += [Setting(("clues", "query"))]  # SEAL's published alpha 2, beta 0.8, full weight
    out += [Setting(src, alpha=1.5, beta=0.0, generated_weight=0.5, fusion="rrf", clue_weight=w)
            for src in (("query", "inflections"), default) for w in (0.5, 1.0)]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("queries", type=Path, nargs="+", help="query files in the mini format")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a DecodingConfig field")
    p.add_argument("--max-count", type=int, default=5000, help="documents looked up for n-grams up to this count")
    p.add_argument("--unigram-top", type=int, default=1000)
    p.add_argument("--cache", type=Path, default=Path("runs/evidence_sweep"))
    p.add_argument("--subwords", action="store_true", help="collect n-grams wherever their tokens occur (see collect)")
    args = p.parse_args()
    print_environment()
    options = dict(o.split("=", 1) for o in args.option)

    from gemkr_llamaindex.kb_cache import wiki_summaries_kb

    kb = wiki_summaries_kb()
    doc_ids = [kb.doc_id(i) for i in range(kb.num_docs)]
    data = {path.stem: collect(path, options, args.max_count, args.unigram_top, args.cache, args.subwords)
            for path in args.queries}
    names = list(data)
    head = " | ".join(f"{n} ({len(data[n])})" for n in names)
    print(f"R@1 / R@10 / Hit@1 / Hit@10 per file (options: {options or 'checkpoint defaults'})\n")
    print(f"| ranking | {head} |\n|---|" + "---:|" * len(names))

    def row(label: str, rankings: dict[str, list[list[str]]]) -> None:
        cells = []
        for n in names:
            m = metrics(rankings[n], [q.gold for q in data[n]])
            cells.append(f"{m['R@1']:.1f} / {m['R@10']:.1f} / {m['Hit@1']:.1f} / {m['Hit@10']:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")

    row("BM25 (+tags)", {n: [q.bm25 for q in data[n]] for n in names})
    row("GeMKR clue ranking (paper)", {n: [q.clue_ranking for q in data[n]] for n in names})
    for s in grid():
        row(s.label(), {n: [rank(q, s, kb.num_tokens, doc_ids) for q in data[n]] for n in names})
    secs = [q.seconds for n in names for q in data[n]]
    print(f"\ncollection: {np.median(secs) * 1000:.0f} ms/query median (search + every source + lookups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
