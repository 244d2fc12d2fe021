"""What serving the KB's shards from Ray actors costs per decoding step, beside the local KB, same run.

The KB of the 10,033 packaged Wikipedia summaries (SmolLM2 tokenizer) is built into ``--shards`` shards.
For the local KB and for the remote one with 1, 2 and 4 actors (``open_remote_kb``, a local Ray cluster
on this machine), it times the constraint calls the decoder makes for 20 beams (one fused ``step``,
``continuations``, ``children``) on states of real corpus prefixes, and the decoding workload of
``kb_bench.py`` (``decode_workload``: 20 beams x 15 steps of mask, extend, unique documents). Every remote answer is checked equal to the local one.
With ``--retrieve N`` it also runs N zero-shot GeMKR retrievals (SmolLM2, packaged) over both and
reports ms/query and whether the documents are identical.

Usage: python -m benchmarks.ray_overhead [--shards 4] [--actors 1 2 4] [--calls 200] [--retrieve 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.env import print_environment
from benchmarks.kb_bench import BEAMS, decode_workload, fmt_us, timeit  # the same workload and timer as kb_bench.py


def cases_for(kb, docs_tokens, rng, n: int, depth: int = 2):
    """``n`` batches of BEAMS states of real corpus prefixes (``depth`` tokens) and their next token."""
    out = []
    for _ in range(n):
        states, nxt = [], []
        while len(states) < BEAMS:
            d = docs_tokens[int(rng.integers(len(docs_tokens)))]
            if len(d) <= depth + 1:
                continue
            s = int(rng.integers(len(d) - depth - 1))
            states.append(kb.state(d[s : s + depth]))
            nxt.append(d[s + depth])
        out.append((np.concatenate(states), np.asarray(nxt, dtype=np.int64)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--retrieve", type=int, default=0, help="also time N zero-shot GeMKR retrievals")
    args = p.parse_args()
    print_environment()

    import ray

    from gemkr_llamaindex.assets import load_tokenizer, wiki_summaries
    from gemkr_llamaindex.distributed import open_remote_kb
    from gemkr_llamaindex.kb import KnowledgeBase

    tok = load_tokenizer("smollm2")
    docs = list(wiki_summaries())
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory(prefix="ray_overhead_") as tmp:
        path = Path(tmp) / "kb"
        total = sum(len(t) for t in tok([t for _, t in docs], add_special_tokens=False)["input_ids"])
        local = KnowledgeBase.build(docs, tok, path, shard_tokens=total // args.shards + 1, show_progress=False)
        docs_tokens = [local.doc_tokens(i).tolist() for i in range(0, local.num_docs, 7)]
        rng = np.random.default_rng(0)
        cases = cases_for(local, docs_tokens, rng, args.calls)
        seeds = [d[:2] for d in docs_tokens[: max(20, args.calls // 5)]]
        calls = {
            "step (20 beams)": lambda kb: (lambda c: kb.step(*c)),
            "continuations (20 beams)": lambda kb: (lambda c: kb.continuations(c[0])),
            "children (20 beams)": lambda kb: (lambda c: kb.children(c[0])),
        }
        rows = {"local": {name: timeit(make(local), cases, warmup=5) for name, make in calls.items()}}
        rows["local"]["decode"] = timeit(lambda seed: decode_workload(local, seed), seeds, warmup=2)
        remotes = {}
        for n in args.actors:
            kb = open_remote_kb(path, groups=n, actor_options={"num_cpus": 0})
            for c in cases[:20]:  # same answers as the local KB
                r, lo = kb.step(*c), local.step(*c)
                assert np.array_equal(r.states, lo.states) and np.array_equal(r.unique, lo.unique)
                assert all(np.array_equal(a, b) for a, b in zip(kb.continuations(c[0]), local.continuations(c[0])))
            label = f"Ray, {kb._index.num_actors} actor(s)"
            rows[label] = {name: timeit(make(kb), cases, warmup=5) for name, make in calls.items()}
            rows[label]["decode"] = timeit(lambda seed, kb=kb: decode_workload(kb, seed), seeds, warmup=2)
            remotes[label] = kb
        print(f"# Remote KB on Ray vs the local KB ({platform.machine()}, {os.cpu_count()} cores, ray {ray.__version__})")
        print(f"command: {' '.join(sys.argv)}")
        print(f"KB: {local.num_docs:,} docs, {local.num_tokens:,} tokens, {local.num_shards} shards; "
              "cells: median / p99 us per call (decode: ms per query)\n")
        names = list(calls) + ["decode"]
        print("| KB | " + " | ".join(names) + " | decode x local |")
        print("|---" * (len(names) + 2) + "|")
        base = rows["local"]["decode"]["median_us"]
        for label, r in rows.items():
            d = r["decode"]
            cells = [fmt_us(r[n]) for n in calls] + [f"{d['median_us'] / 1e3:.1f} / {d['p99_us'] / 1e3:.1f}"]
            print(f"| {label} | " + " | ".join(cells) + f" | {d['median_us'] / base:.1f}x |")
        for label, r in rows.items():
            if label != "local":
                extra = r["step (20 beams)"]["median_us"] - rows["local"]["step (20 beams)"]["median_us"]
                print(f"\n{label}: +{extra:.0f} us per fused step call over the local KB", end="")
        print()
        if args.retrieve:
            retrieval_rows(args.retrieve, local, remotes)
        for kb in remotes.values():
            kb.close()
        local.close()
    ray.shutdown()
    return 0


def retrieval_rows(n: int, local, remotes) -> None:
    """Zero-shot GeMKR over the local and the remote KBs: ms/query and identical documents."""
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.llamaindex import ClueGenerator, GeMKRRetriever

    questions = ["What is the capital of France?", "Who painted the Mona Lisa?", "What does a bee make?",
                 "Which planet is known as the red planet?", "Who wrote Romeo and Juliet?",
                 "What gas do plants absorb?"][:n]
    gen = ClueGenerator.zero_shot_llm("smollm2", config=DecodingConfig(min_length=5, max_length=10))
    print("\n| KB | GeMKR retrieval ms/query | same documents as local |")
    print("|---|---|---|")
    want = None
    for label, kb in [("local", local), *remotes.items()]:
        retriever = GeMKRRetriever(gen, kb, similarity_top_k=5)
        retriever.retrieve(questions[0])  # warm-up
        t = time.perf_counter()
        got = [[x.node.node_id for x in retriever.retrieve(q)] for q in questions]
        ms = (time.perf_counter() - t) * 1e3 / len(questions)
        want = got if want is None else want
        print(f"| {label} | {ms:.0f} | {got == want} |")


if __name__ == "__main__":
    sys.exit(main())
