"""Retrieval table of the baselines on the shipped mini benchmark, with versions and hardware recorded.

    python -m benchmarks.eval_mini                       # bm25, dense; question only
    python -m benchmarks.eval_mini --tags classifier,ocr # question + visual tags
    python -m benchmarks.eval_mini --retrievers bm25,dense,li --max-docs 2000
    python -m benchmarks.eval_mini --dataset mini-text   # the text-only split: questions name the entity

Prints the markdown table and appends one JSON line (results, settings, versions, CPU) to
``benchmarks/results/eval_mini.jsonl``. The corpus is the 10,033 packaged Wikipedia summaries unless
``--max-docs`` restricts it (gold documents always kept); dense embeddings are cached after the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

from benchmarks.env import ROOT, print_environment
from eval_vqa.loaders import load_dataset
from eval_vqa.runner import RunConfig, run_retrieval


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "sentence-transformers", "llama-index-core", "bm25s", "open_clip_torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("mini", "mini-text"), default="mini")
    ap.add_argument("--retrievers", default="bm25,dense")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--tags", help="tag backends, e.g. classifier,ocr")
    ap.add_argument("--max-docs", type=int)
    ap.add_argument("--relevance", choices=("substring", "word"), default="substring")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_mini"))
    args = ap.parse_args()
    env = print_environment()

    cfg = RunConfig(dataset=args.dataset, retrievers=args.retrievers.split(","), ks=sorted(set(args.k)),
                    relevance=args.relevance, max_docs=args.max_docs, tags=args.tags)
    suffix = (("-text" if args.dataset == "mini-text" else "") + ("-tags" if args.tags else "")
              + (f"-{args.max_docs}" if args.max_docs else ""))
    out = Path(args.out + suffix)
    t0 = time.perf_counter()
    results = run_retrieval(load_dataset(args.dataset), cfg, out, progress=True)
    print((out / "results.md").read_text())
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": time.perf_counter() - t0,
        "results": results, "versions": versions(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "environment": env,
    }
    log = ROOT / "benchmarks" / "results" / "eval_mini.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"appended to {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
