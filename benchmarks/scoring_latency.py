"""Per-query latency of GeMKR's ranking modes against BM25, in one process, on the same queries.

The shipped checkpoint over the packaged KB, batch 1, modes interleaved per query (the order rotates, so
load changes on a shared machine hit every mode alike):

* ``evidence`` — the checkpoint's default: the beam search, then its clues and the query's n-grams
  scored as evidence (:mod:`gemkr_llamaindex.decoding.evidence`);
* ``fast`` — the query's n-grams alone: one prompt pass and one tree pass, no beam search;
* ``paper`` — the same search ranked by the paper's clue scores (with the prior pass);
* ``paper, 30 beams`` — the paper's scoring at the wider search it was tuned with (30 beams in 6 groups);
* ``bm25`` — BM25 (bm25s) over the same passages, question + visual tags.

Prints mean, median and p99 ms per query, each mode's ratio to BM25 and to ``paper, 30 beams``, and for
the evidence modes the share of time spent after the search (n-gram scoring, KB lookups, aggregation).

Usage::

    python -m benchmarks.scoring_latency [--queries benchmarks/data/dev_text_infer.jsonl] [--limit 30]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.env import print_environment


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=Path, nargs="+", default=[Path("benchmarks/data/dev_text_infer.jsonl"),
                                                                 Path("benchmarks/data/dev_photo.jsonl")])
    p.add_argument("--limit", type=int, default=None, help="first N queries of each file")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    print_environment()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from eval_vqa.baselines.bm25 import BM25Baseline
    from eval_vqa.mini import load_mini_benchmark
    from gemkr_llamaindex.assets import wiki_summaries
    from gemkr_llamaindex.checkpoints import packaged_checkpoint
    from gemkr_llamaindex.decoding import SearchStats
    from gemkr_llamaindex.images import packaged_image_path
    from gemkr_llamaindex.kb_cache import wiki_summaries_kb
    from gemkr_llamaindex.llamaindex import ClueGenerator, VQAQueryBundle

    ck = packaged_checkpoint()
    gen = ClueGenerator.from_checkpoint(ck, batch_size=1)
    default = gen.config
    modes = {
        "evidence": default,
        "fast": default.with_scoring("fast"),
        "paper": default.with_scoring("paper"),
        "paper, 30 beams": default.with_scoring("paper").replace(num_beams=30, num_groups=6),
    }
    kb = wiki_summaries_kb()
    bm25 = BM25Baseline(list(wiki_summaries()), similarity_top_k=10, use_tags=True)
    items = [it for path in args.queries for it in load_mini_benchmark(path)[: args.limit]]
    tagger = None
    if any(it["image"] for it in items):
        from gemkr_llamaindex.tags import hint_tagger

        tagger = hint_tagger()
    bundles = []
    for it in items:
        image = packaged_image_path(it["image"]["package"], it["image"]["name"]) if it["image"] else None
        bundles.append(VQAQueryBundle(query_str=it["question"], tags=tagger(str(image)) if image is not None else None))

    names = [*modes, "bm25"]
    ms: dict[str, list[float]] = {n: [] for n in names}
    after: dict[str, list[float]] = {n: [] for n in modes}
    for b in bundles[:2]:  # warm-up: first calls pay lazy set-up
        for cfg in modes.values():
            gen.search.config = cfg
            gen.generate([b], kb)
    for i, b in enumerate(bundles):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            t = time.perf_counter()
            if name == "bm25":
                bm25.retrieve(b)
                ms[name].append(1000 * (time.perf_counter() - t))
                continue
            gen.search.config = modes[name]
            stats = SearchStats()
            gen.generate([b], kb, stats=stats)
            total = time.perf_counter() - t
            ms[name].append(1000 * total)
            after[name].append(max(0.0, total - stats.total) / total)
        print(f"\r{i + 1}/{len(bundles)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    gen.search.config = default

    ref = statistics.fmean(ms["paper, 30 beams"])
    bm = statistics.fmean(ms["bm25"])
    print(f"{len(bundles)} queries ({', '.join(p.name for p in args.queries)}), batch 1, {torch.get_num_threads()} "
          f"torch threads, {platform.machine()} x {os.cpu_count()} cores\n")
    print("| mode | mean ms | median ms | p99 ms | x BM25 (mean) | x paper, 30 beams (mean) | time after the search |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        v = ms[name]
        share = f"{100 * statistics.fmean(after[name]):.0f}%" if name in after and modes[name].evidence_sources else ""
        print(f"| {name} | {statistics.fmean(v):,.1f} | {statistics.median(v):,.1f} | {percentile(v, 99):,.1f} | "
              f"{statistics.fmean(v) / bm:,.1f} | {statistics.fmean(v) / ref:.2f} | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
