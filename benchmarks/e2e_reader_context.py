"""Reader accuracy and time, whole passages vs clue windows, on the mini benchmark's gold passages.

    python -m benchmarks.e2e_reader_context                     # 41 mini items, window 1, SmolLM2
    python -m benchmarks.e2e_reader_context --dataset mini-text --window 0 --limit 10

For every item the reader (``reader.VQAQueryEngine`` over ``VQAReader``, packaged SmolLM2-135M-Instruct
unless ``--model``) answers twice from the item's gold passages (an oracle, so retrieval errors do not
blur the comparison): once reading each passage from its start (``context="passage"``, clipped to
``--max-passage-chars``) and once reading the clue windows (``context="clue_window"``).

**The clues are synthetic.** Running GeMKR for 41 queries costs minutes on a small CPU, and a zero-shot
clue may point at the wrong sentence, which would measure the generator rather than the reader. So the
script makes the clue a GeMKR clue would ideally be: in each gold passage, the first sentence that
contains a gold answer (case-insensitive), and the clue is that sentence's first ``--clue-words`` words
(a span of the passage, as every GeMKR clue is), stored in ``node.metadata["clues"]`` the way
``GeMKRRetriever`` stores its clues. A gold passage without the answer gets no clue and falls back to
its head. This is therefore an upper bound for what clue windows give with a perfect clue, and the EM
difference says whether the surrounding sentences suffice; the time difference is what shorter prompts
save.

The modes alternate per item (which one goes first alternates too) so load changes on a shared machine
hit both alike. Prints a markdown table: EM and VQA accuracy (official normalisation; mini's answers are
alternatives, not ten votes, so EM is the informative one), mean prompt tokens, mean reader seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.env import print_environment

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODES = ("passage", "clue_window")


def synthetic_clue(text: str, answers: list[str], words: int) -> str | None:
    """The first ``words`` words of the first sentence of ``text`` that holds an answer, else None."""
    from reader.prompt import split_sentences

    for sentence in split_sentences(" ".join(text.split())):
        lower = sentence.lower()
        if any(a.lower() in lower for a in answers):
            return " ".join(sentence.split()[:words])
    return None


def gold_nodes(item, summaries: dict[str, str], clue_words: int) -> tuple[list, int]:
    """The item's gold passages as NodeWithScore with a synthetic clue each (when one is found)."""
    from llama_index.core.schema import NodeWithScore, TextNode

    nodes, clued = [], 0
    for doc_id in item.gold_doc_ids:
        clue = synthetic_clue(summaries[doc_id], item.answers, clue_words)
        meta = {"title": doc_id}
        if clue:
            meta["clues"] = [{"text": clue, "score": 0.0, "logprob": 0.0}]
            clued += 1
        nodes.append(NodeWithScore(node=TextNode(id_=doc_id, text=summaries[doc_id], metadata=meta), score=1.0))
    return nodes, clued


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("mini", "mini-text"), default="mini")
    ap.add_argument("--model", default="smollm2", help="reader model folder; 'smollm2' = packaged")
    ap.add_argument("--window", type=int, default=1, help="sentences kept on each side of a clue (default 1)")
    ap.add_argument("--clue-words", type=int, default=5, help="words of the synthetic clue (default 5)")
    ap.add_argument("--max-passage-chars", type=int, default=600)
    ap.add_argument("--reader-k", type=int, default=3, help="gold passages read at most (default 3)")
    ap.add_argument("--limit", type=int, help="first N items only")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a busy CPU)")
    ap.add_argument("--json", type=Path, help="also append the figures as one JSON line to this file")
    args = ap.parse_args(argv)
    env = print_environment()

    import torch

    torch.set_num_threads(args.threads)
    from llama_index.core.base.base_retriever import BaseRetriever

    from eval_vqa.loaders import load_dataset
    from eval_vqa.metrics import exact_match, vqa_accuracy
    from gemkr_llamaindex import VQAQueryBundle, assets
    from reader import VQAQueryEngine, VQAReader

    class NoRetriever(BaseRetriever):  # the engine wants one; this script hands the nodes to synthesize()
        def _retrieve(self, query_bundle):
            return []

    dataset = load_dataset(args.dataset)
    items = dataset.queries[: args.limit] if args.limit else dataset.queries
    summaries = dict(assets.wiki_summaries())
    t0 = time.perf_counter()
    reader = VQAReader(args.model).load()
    load_s = time.perf_counter() - t0
    engines = {
        mode: VQAQueryEngine(NoRetriever(), reader, top_k=args.reader_k, context=mode, clue_window=args.window,
                             max_passage_chars=args.max_passage_chars)
        for mode in MODES
    }
    engines["passage"].synthesize(VQAQueryBundle("Warm-up: what is 1 + 1?"), [])  # first call pays set-up
    rows = {mode: {"em": [], "vqa": [], "tokens": [], "chars": [], "seconds": []} for mode in MODES}
    clued = total = 0
    for n, item in enumerate(items):
        nodes, c = gold_nodes(item, summaries, args.clue_words)
        nodes = nodes[: args.reader_k]
        clued, total = clued + min(c, len(nodes)), total + len(nodes)
        image = item.image_path() if item.image is not None else None
        order = MODES if n % 2 == 0 else MODES[::-1]
        for mode in order:
            bundle = VQAQueryBundle(query_str=item.question, image_path=image)
            t = time.perf_counter()
            response = engines[mode].synthesize(bundle, nodes, tags="")
            rows[mode]["seconds"].append(time.perf_counter() - t)
            rows[mode]["em"].append(exact_match(response.response, item.answers))
            rows[mode]["vqa"].append(vqa_accuracy(response.response, item.answers))
            rows[mode]["chars"].append(len(response.metadata["prompt"]))
            rows[mode]["tokens"].append(response.metadata.get("reader_input_tokens") or 0)
        print(f"{item.qid}: passage={rows['passage']['em'][-1]:.0f} clue_window={rows['clue_window']['em'][-1]:.0f}",
              file=sys.stderr)

    mean = statistics.fmean
    print(f"\nReader `{args.model}` on `{args.dataset}` gold passages ({len(items)} items, {total} passages, "
          f"{clued} with a synthetic clue: first {args.clue_words} words of the first answer sentence); "
          f"window {args.window} sentence(s) each side; passages clipped to {args.max_passage_chars} chars; "
          f"{args.threads} torch thread(s); model load {load_s:.1f} s.\n")
    print("| context | EM | VQA acc (official) | prompt tokens | prompt chars | reader s/query (mean) | (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for mode in MODES:
        r = rows[mode]
        summary[mode] = {"em": mean(r["em"]), "vqa_acc": mean(r["vqa"]), "prompt_tokens": mean(r["tokens"]),
                         "prompt_chars": mean(r["chars"]), "seconds_mean": mean(r["seconds"]),
                         "seconds_median": statistics.median(r["seconds"])}
        s = summary[mode]
        print(f"| {mode} | {100 * s['em']:.1f} | {100 * s['vqa_acc']:.1f} | {s['prompt_tokens']:.0f} | "
              f"{s['prompt_chars']:.0f} | {s['seconds_mean']:.2f} | {s['seconds_median']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": {k: str(v) for k, v in
                  vars(args).items()}, "n_items": len(items), "passages": total, "clued": clued,
                  "results": summary, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                  "environment": env}
        with args.json.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
