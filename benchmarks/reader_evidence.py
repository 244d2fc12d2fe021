"""How the reader should read what evidence scoring retrieved: exact match per reading mode, one retrieval.

For each query of the given files (mini format, with answers), each retriever (``--retrievers``, eval
registry names) retrieves its top ``--reader-k`` passages once (cached under ``--cache``); then the
packaged reader (SmolLM2-135M-Instruct) answers under every reading mode, and the script prints exact
match per file and retriever:

* ``context``: the passages from their start (``passage``), the sentences around the node's clues
  (``clue_window``), or around its clues and strongest evidence n-grams (``evidence_window``);
* ``k``: how many of the retrieved passages are read (all, or the top one alone);
* ``spans``: free generation, or an answer constrained to spans of the passages read (:mod:`reader.spans`).

The reader gets no visual hints (with the 135M reader they cost exact match; docs/evaluation.md). Modes are
chosen on the development files (``benchmarks/data``) only.

Usage::

    python -m benchmarks.reader_evidence benchmarks/data/dev_text.jsonl \\
        benchmarks/data/dev_photo.jsonl benchmarks/data/dev_text_infer.jsonl [--retrievers gemkr,bm25]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.env import print_environment

MODES = [  # (context, k, spans)
    ("passage", 3, False), ("clue_window", 3, False), ("evidence_window", 3, False), ("evidence_window", 1, False),
    ("passage", 3, True), ("evidence_window", 3, True), ("evidence_window", 1, True),
]


def retrieve(path: Path, name: str, k: int, cache: Path) -> list[list[dict]]:
    """Per query, retriever ``name``'s top-``k`` nodes as ``{"id", "text", "metadata"}`` (read from ``cache``
    when this file and retriever were retrieved before with the same checkpoint settings)."""
    from gemkr_llamaindex.checkpoints import packaged_checkpoint

    ck = packaged_checkpoint()
    decoding = (Path(ck) / "decoding.json").read_bytes() if ck else b""
    key = hashlib.sha256(path.read_bytes() + json.dumps([name, k]).encode() + decoding).hexdigest()[:12]
    file = cache / f"{path.stem}-{name}-{key}.json"
    if file.is_file():
        return json.loads(file.read_text())

    from eval_vqa.mini import load_mini_benchmark
    from eval_vqa.registry import build_retriever
    from gemkr_llamaindex.assets import wiki_summaries
    from gemkr_llamaindex.images import packaged_image_path
    from gemkr_llamaindex.llamaindex import VQAQueryBundle

    items = load_mini_benchmark(path)
    tagger = None
    if any(it["image"] for it in items):
        from gemkr_llamaindex.tags import hint_tagger

        tagger = hint_tagger()
    retriever = build_retriever(name, list(wiki_summaries()), {"top_k": k, "use_tags": tagger is not None})
    rows = []
    for it in items:
        image = packaged_image_path(it["image"]["package"], it["image"]["name"]) if it["image"] else None
        tags = tagger(str(image)) if image is not None else None
        hits = retriever.retrieve(VQAQueryBundle(query_str=it["question"], image_path=str(image) if image else None,
                                                 tags=tags))
        rows.append([{"id": h.node.node_id, "text": h.node.get_content(),
                      "metadata": {m: h.node.metadata[m] for m in ("clues", "evidence") if m in h.node.metadata}}
                     for h in hits[:k]])
        print(f"\r{path.name} {name}: {len(rows)}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(file)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("queries", type=Path, nargs="+")
    p.add_argument("--retrievers", default="gemkr,bm25")
    p.add_argument("--reader-k", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path("runs/reader_evidence"))
    p.add_argument("--modes", type=int, nargs="+", default=None, help="indices into MODES (default: all)")
    args = p.parse_args()
    print_environment()

    from llama_index.core.schema import NodeWithScore, TextNode

    from eval_vqa.metrics import exact_match
    from eval_vqa.mini import load_mini_benchmark
    from reader import VQAReader

    retrievers = args.retrievers.split(",")
    modes = [MODES[i] for i in args.modes] if args.modes else MODES
    reader = VQAReader().load()
    table: dict[tuple, dict[tuple[str, str], float]] = {m: {} for m in modes}
    seconds: dict[tuple, list[float]] = {m: [] for m in modes}
    for path in args.queries:
        items = load_mini_benchmark(path)
        for name in retrievers:
            retrieved = retrieve(path, name, args.reader_k, args.cache)
            for mode in modes:
                context, k, spans = mode
                ems = []
                for it, nodes in zip(items, retrieved):
                    passages = [NodeWithScore(node=TextNode(id_=n["id"], text=n["text"], metadata=n["metadata"]),
                                              score=1.0) for n in nodes[:k]]
                    t = time.perf_counter()
                    answer = reader.answer(it["question"], passages=passages, context=context, answer_spans=spans)
                    seconds[mode].append(time.perf_counter() - t)
                    ems.append(exact_match(answer, it["answers"]))
                table[mode][(path.stem, name)] = 100 * statistics.fmean(ems)
                print(f"{path.stem} {name} {mode}: EM {table[mode][(path.stem, name)]:.1f}", file=sys.stderr)
    cols = [(path.stem, name) for path in args.queries for name in retrievers]
    print("\nExact match (%) of the packaged reader, no visual hints; rows: context / passages read / answer\n")
    print("| context | k | answer | " + " | ".join(f"{f} {r}" for f, r in cols) + " | reader s/query |")
    print("|---|---:|---|" + "---:|" * (len(cols) + 1))
    for mode in modes:
        context, k, spans = mode
        cells = " | ".join(f"{table[mode][c]:.1f}" for c in cols)
        print(f"| {context} | {k} | {'span' if spans else 'free'} | {cells} | {statistics.median(seconds[mode]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
