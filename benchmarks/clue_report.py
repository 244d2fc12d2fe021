"""Per-query clue report of GeMKR: which clues each question got, where the gold document ranked, and why.

For error analysis on development questions (``benchmarks/data``): for every query it prints the top
documents with their best clue (``A`` marks a clue anchored at a document's start, i.e. a title), the
clue's log-likelihood and, with prior calibration on, its empty-query prior; then R@1, R@10, the share
of queries whose gold document came back at all ("found": what the search generated caps recall, the
ranking decides R@1) and the latency. ``--dump FILE`` writes every clue as JSON, so that scoring rules
(length penalty, prior weight, document score) can be compared offline on one search's output: the
search itself does not depend on them.

Usage::

    python -m benchmarks.clue_report benchmarks/data/dev_photo.jsonl [--checkpoint DIR]
        [--option prior_weight=0 ...] [--limit N] [--quiet] [--dump clues.json]

Photo questions are tagged with the library's tagger (ImageNet labels + OCR, cached by image content).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.env import print_environment


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("queries", type=Path, help="a query file in the mini format")
    p.add_argument("--checkpoint", default=None, help="default: the checkpoint shipped for the packaged corpus")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a DecodingConfig field")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--top", type=int, default=4, help="documents shown per query")
    p.add_argument("--quiet", action="store_true", help="the summary line only")
    p.add_argument("--dump", type=Path, default=None, help="write every clue of every query as JSON")
    args = p.parse_args()
    print_environment()

    from eval_vqa.mini import load_mini_benchmark
    from gemkr_llamaindex.checkpoints import packaged_checkpoint
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.images import packaged_image_path
    from gemkr_llamaindex.kb_cache import wiki_summaries_kb
    from gemkr_llamaindex.llamaindex import ClueGenerator, VQAQueryBundle
    from gemkr_llamaindex.llamaindex.clue_generator import checkpoint_decoding_config

    checkpoint = args.checkpoint or packaged_checkpoint()
    options = dict(o.split("=", 1) for o in args.option)
    config = DecodingConfig.from_options(options, checkpoint_decoding_config(checkpoint))
    gen = ClueGenerator.from_checkpoint(checkpoint, config=config, batch_size=1)
    kb = wiki_summaries_kb()
    items = load_mini_benchmark(args.queries)[: args.limit]
    tagger = None
    if any(it["image"] for it in items):
        from gemkr_llamaindex.tags import hint_tagger

        tagger = hint_tagger()

    hits1 = hits10 = found = 0
    latencies, dump = [], []
    for it in items:
        image = packaged_image_path(it["image"]["package"], it["image"]["name"]) if it["image"] else None
        tags = tagger(str(image)) if image is not None else None
        t0 = time.perf_counter()
        (res,) = gen.generate([VQAQueryBundle(query_str=it["question"], tags=tags)], kb)
        latencies.append(time.perf_counter() - t0)
        gold = set(it["gold_doc_ids"])
        ranked = [d.doc_id for d in res.docs]
        rank = next((i for i, d in enumerate(ranked) if d in gold), None)
        hits1 += rank == 0
        hits10 += rank is not None and rank < 10
        found += rank is not None

        def anchored(c) -> bool:
            return kb.doc_tokens(c.doc_id)[: len(c.token_ids)].tolist() == c.token_ids

        dump.append({"id": it["id"], "gold": sorted(gold), "clues": [
            {**c.to_dict(), "length": len(c.token_ids), "anchored": anchored(c)} for c in res.clues]})
        if args.quiet:
            continue
        where = "rank 1" if rank == 0 else f"rank {rank + 1}" if rank is not None else "not found"
        print(f"[{it['id']}] {where}: {it['question']}  | tags: {tags}  | gold: {', '.join(sorted(gold))}")
        for d in res.docs[: args.top]:
            c = d.clues[0]
            prior = "" if c.prior_logprob is None else f"  prior {c.prior_logprob:6.2f}"
            print(f"    {d.doc_id[:30]:30s} {d.score:7.3f}  logp {c.logprob:6.2f}{prior}  "
                  f"{'A' if anchored(c) else ' '} {c.text!r}")
    n = len(items)
    latencies.sort()
    print(f"{args.queries.name}: {n} queries  R@1 {100 * hits1 / n:.1f}  R@10 {100 * hits10 / n:.1f}  "
          f"found {100 * found / n:.1f}  ms/query p50 {1000 * latencies[n // 2]:.0f}  "
          f"(checkpoint {checkpoint}; options {options or 'none'})")
    if args.dump:
        args.dump.write_text(json.dumps(dump))
    return 0


if __name__ == "__main__":
    sys.exit(main())
