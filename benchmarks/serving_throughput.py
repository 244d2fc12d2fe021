"""Throughput of one retriever under concurrent users, with and without opt-in micro-batching.

``--clients`` threads each send ``--per-client`` queries to one GeMKRRetriever (zero-shot SmolLM2 over
the packaged Wikipedia KB, or ``--checkpoint``) as fast as answers come back; the table gives queries/s
and the p50/p99 latency a client sees, for plain concurrent calls and for ``batch_window_ms`` micro-batching
(requests arriving within the window share one decoding batch), measured in the same process, and checks
that every query got the same documents both ways.

Usage: python -m benchmarks.serving_throughput [--clients 8] [--per-client 2] [--window-ms 20]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics
import sys
import threading
import time

from benchmarks.env import print_environment

QUESTIONS = ["What is the capital of France?", "Who painted the Mona Lisa?", "What does a bee make?",
             "Which planet is known as the red planet?", "What is the largest ocean on Earth?",
             "Who wrote Romeo and Juliet?", "What gas do plants absorb?", "Which instrument has 88 keys?"]


def serve(retriever, clients: int, per_client: int) -> tuple[float, list[float], dict]:
    latencies: list[float] = []
    docs: dict[str, list[str]] = {}
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(per_client):
            q = QUESTIONS[(c * per_client + i) % len(QUESTIONS)]
            t = time.perf_counter()
            hits = retriever.retrieve(q)
            with lock:
                latencies.append(time.perf_counter() - t)
                docs[q] = [h.node.node_id for h in hits]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clients * per_client / (time.perf_counter() - t0), latencies, docs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=2)
    p.add_argument("--window-ms", type=float, default=20.0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args()
    print_environment()

    import torch

    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.kb_cache import wiki_summaries_kb
    from gemkr_llamaindex.llamaindex import ClueGenerator, GeMKRRetriever

    kb = wiki_summaries_kb()
    gen = (ClueGenerator.from_checkpoint(args.checkpoint) if args.checkpoint
           else ClueGenerator.zero_shot_llm("smollm2", config=DecodingConfig(min_length=5, max_length=10)))
    plain = GeMKRRetriever(gen, kb, similarity_top_k=5)
    batched = GeMKRRetriever(gen, kb, similarity_top_k=5, batch_window_ms=args.window_ms, max_batch=args.max_batch)
    plain.retrieve(QUESTIONS[0])  # warm-up
    rows = []
    for name, r in (("concurrent calls", plain), (f"micro-batched ({args.window_ms:g} ms window)", batched)):
        qps, lat, docs = serve(r, args.clients, args.per_client)
        rows.append((name, qps, lat, docs))
    same = rows[0][3] == rows[1][3]
    print(f"# Serving throughput ({torch.get_num_threads()} threads), {args.clients} clients x {args.per_client} "
          f"queries, KB {kb.num_docs:,} docs")
    print(f"command: {' '.join(sys.argv)}\n")
    print("| mode | queries/s | p50 latency s | p99 latency s | batches |")
    print("|---|---|---|---|---|")
    for (name, qps, lat, _), n in zip(rows, ("-", batched._batcher.batches)):
        lat = sorted(lat)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(f"| {name} | {qps:.2f} | {statistics.median(lat):.2f} | {p99:.2f} | {n} |")
    print(f"\nratio micro-batched / concurrent: {rows[1][1] / rows[0][1]:.2f}; same documents per query: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
