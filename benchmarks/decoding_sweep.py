"""Decoding settings of GeMKR: anchors, clue length, prior calibration, beams, zero-shot vs trained.

Each row runs the ``gemkr`` retriever of ``eval-vqa`` over the full 10,033-summary corpus (visual tags on
for photo questions) with one setting changed, so the figures say which defaults to pick per model.
Defaults are picked on the development questions (``--queries benchmarks/data/dev_text.jsonl`` and
``dev_photo.jsonl``, see ``benchmarks/data/README.md``), never on the mini benchmark, which stays an
evaluation set. The shipped settings and the sweep that chose them: docs/scoring.md and docs/results.md.

Usage: python -m benchmarks.decoding_sweep [--queries FILE | --dataset mini] [--checkpoint DIR]
       [--zero-shot] [--rows NAME ...] [--limit N]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from pathlib import Path

from benchmarks.env import print_environment

TRAINED = {  # name: decoding options on top of the checkpoint's own
    "checkpoint default": {},
    "anchor any": {"anchor": "any"},
    "anchor mixed": {"anchor": "mixed"},
    "anchor doc_start": {"anchor": "doc_start"},
    "prior 0": {"prior_weight": "0"},
    "prior 0.25": {"prior_weight": "0.25"},
    "prior 0.5": {"prior_weight": "0.5"},
    "anchor doc_start, prior 0": {"anchor": "doc_start", "prior_weight": "0"},
    "doc_score logsumexp": {"doc_score": "logsumexp"},
    "prior 0.25, logsumexp": {"prior_weight": "0.25", "doc_score": "logsumexp"},
    "prior 0.5, logsumexp": {"prior_weight": "0.5", "doc_score": "logsumexp"},
    "min_length 2": {"min_length": "2"},
    "min_length 5": {"min_length": "5"},
    "min_length 10": {"min_length": "10", "max_length": "15"},
    "max_length 8": {"max_length": "8"},
    "10 beams in 2 groups": {"num_beams": "10", "num_groups": "2"},
    "30 beams in 6 groups": {"num_beams": "30", "num_groups": "6"},
}
ZERO_SHOT = {  # zero-shot SmolLM2: the paper's setting first
    "zero-shot, paper (any, 10-15)": {"anchor": "any", "min_length": "10", "max_length": "15"},
    "zero-shot, any, 3-12": {"anchor": "any", "min_length": "3", "max_length": "12"},
    "zero-shot, doc_start, 3-12": {"anchor": "doc_start", "min_length": "3", "max_length": "12"},
    "zero-shot, mixed, 5-12": {"anchor": "mixed", "min_length": "5", "max_length": "12"},
    "zero-shot, doc_start, 3-12, prior 0.5": {"anchor": "doc_start", "min_length": "3", "max_length": "12",
                                              "prior_weight": "0.5"},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mini", choices=["mini", "mini-text"])
    p.add_argument("--queries", default=None, help="another query file in the mini format (e.g. the dev questions)")
    p.add_argument("--checkpoint", default=None, help="default: the packaged checkpoint")
    p.add_argument("--zero-shot", action="store_true", help="the zero-shot rows instead of the trained ones")
    p.add_argument("--rows", nargs="*", default=None, help="only these row names")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/decoding_sweep"))
    args = p.parse_args()
    print_environment()

    from eval_vqa.loaders import load_dataset
    from eval_vqa.runner import RunConfig, run_retrieval

    table = ZERO_SHOT if args.zero_shot else TRAINED
    base = {"zero_shot": "1"} if args.zero_shot else ({"checkpoint": args.checkpoint} if args.checkpoint else {})
    dataset = load_dataset(args.dataset, **({"queries": args.queries} if args.queries else {}))
    tags = "classifier,ocr" if any(q.image is not None for q in dataset.queries) else None
    name = Path(args.queries).stem if args.queries else args.dataset
    rows = []
    for row, opts in table.items():
        if args.rows and row not in args.rows:
            continue
        out = args.out / name / row.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        res = run_retrieval(dataset, RunConfig(name, ["gemkr"], [1, 5, 10], tags=tags, limit=args.limit,
                                               options={**base, **opts}), out, progress=False)
        (r,) = res["retrievers"].values()
        rows.append((row, r))
        print(f"{row}: R@1 {100 * r['R@1 (gold)']:.1f}  R@10 {100 * r['R@10 (gold)']:.1f}  {r['latency_ms_p50']:.0f} ms",
              flush=True)
    print(f"\ncommand: {' '.join(sys.argv)}\n")
    print(f"| GeMKR setting ({name}{', tags' if tags else ''}) | R@1 (gold) | R@5 (gold) | R@10 (gold) | "
          "MRR@10 (gold) | ms/query (p50) |\n|---|---|---|---|---|---|")
    for row, r in rows:
        print(f"| {row} | {100 * r['R@1 (gold)']:.1f} | {100 * r['R@5 (gold)']:.1f} | {100 * r['R@10 (gold)']:.1f} | "
              f"{100 * r['MRR@10 (gold)']:.1f} | {r['latency_ms_p50']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
