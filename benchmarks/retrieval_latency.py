"""Per-query latency of GeMKR retrieval, split into its parts, for both KB-constraint modes.

Runs SmolLM2-135M-Instruct (packaged) zero-shot over the KB of the 10,033 packaged Wikipedia summaries
with the paper's decoding settings (20 beams in 4 groups, clues of 10-15 tokens) and reports per query:
LLM forward (prefill + one batched step per token), KB constraint (GetNext / extend / ValidDistinct
calls), bookkeeping (the search loop in Python), at batch size 1 and batched, for constraint mode
(a) "mask" (list every continuation) and (b) "topk" (check the model's best tokens). With
``--gemkr-tiny`` it also times the multimodal prompt of a tiny random GeMKR model (vision + alignment;
no detector weights exist offline, so detection is not timed).

Usage: python benchmarks/retrieval_latency.py [--queries 8] [--batch 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

QUESTIONS = [
    "What is the capital of France?",
    "Who painted the Mona Lisa?",
    "What does a bee make?",
    "Which planet is known as the red planet?",
    "What is the largest ocean on Earth?",
    "Who wrote Romeo and Juliet?",
    "What gas do plants absorb?",
    "What is the tallest mountain in the world?",
    "What animal is known as the king of the jungle?",
    "Which instrument has 88 keys?",
    "What is the currency of Japan?",
    "Who developed the theory of relativity?",
]


def run(generator, questions, batch: int) -> dict:
    from gemkr_llamaindex.llamaindex import ClueQuery

    generator.batch_size = batch
    search = generator.search
    search.timings.clear()
    t = time.perf_counter()
    results = generator.generate([ClueQuery(question=q) for q in questions])
    wall = time.perf_counter() - t
    n = len(questions)
    tm = search.timings
    return {
        "wall_ms": wall / n * 1e3,
        "model_ms": tm["model"] / n * 1e3,
        "kb_ms": tm["kb"] / n * 1e3,
        "bookkeeping_ms": (tm["total"] - tm["model"] - tm["kb"]) / n * 1e3,
        "prompt_ms": (wall - tm["total"]) / n * 1e3,
        "clues": statistics.mean(len(r.clues) for r in results),
        "docs": statistics.mean(len(r.docs) for r in results),
        "results": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--min-length", type=int, default=10)
    p.add_argument("--max-length", type=int, default=15)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.kb.packaged import wiki_summaries_kb
    from gemkr_llamaindex.llamaindex import ClueGenerator

    torch.manual_seed(0)
    kb = wiki_summaries_kb()
    questions = (QUESTIONS * 4)[: args.queries]
    rows = []
    gens = {}
    for mode in ("mask", "topk"):
        cfg = DecodingConfig(num_beams=args.beams, num_groups=args.groups, min_length=args.min_length,
                             max_length=args.max_length, constraint=mode)
        gen = gens.get("base") or ClueGenerator.zero_shot_from(kb, "smollm2", config=cfg)
        gens["base"] = gen
        gen.search.config = cfg
        gen.llm.to(args.device)
        run(gen, questions[:1], 1)  # warm-up
        for batch in (1, args.batch):
            r = run(gen, questions, batch)
            rows.append((mode, batch, r))
    same = all(
        [c.token_ids for c in a.clues] == [c.token_ids for c in b.clues]
        for a, b in zip(rows[0][2]["results"], rows[2][2]["results"])
    )
    print(f"# Retrieval latency ({platform.machine()}, device {args.device}, torch {torch.__version__})")
    print(f"command: {' '.join(sys.argv)}")
    print(f"SmolLM2-135M zero-shot, KB {kb.num_docs:,} docs / {kb.num_tokens:,} tokens, {args.beams} beams in "
          f"{args.groups} groups, clues {args.min_length}-{args.max_length} tokens, {len(questions)} queries\n")
    print("| constraint | batch | ms/query | prompt | LLM forward | KB constraint | bookkeeping | KB share | clues | docs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, batch, r in rows:
        share = r["kb_ms"] / max(r["model_ms"] + r["kb_ms"] + r["bookkeeping_ms"], 1e-9)
        print(f"| {mode} | {batch} | {r['wall_ms']:.0f} | {r['prompt_ms']:.0f} | {r['model_ms']:.0f} | {r['kb_ms']:.1f} | "
              f"{r['bookkeeping_ms']:.0f} | {share:.1%} | {r['clues']:.1f} | {r['docs']:.1f} |")
    print(f"\n(a) mask and (b) topk returned identical clues for every query: {same}")
    ex = rows[-1][2]["results"][0]
    print(f"\nexample: {questions[0]!r}")
    for c in ex.clues[:5]:
        print(f"  {c.score:7.3f}  {c.doc_id!r:40}  {c.text!r}")


if __name__ == "__main__":
    main()
