"""Ask an image + question through a LlamaIndex query engine that sends the query image to the reader.

Offline by default: BM25 over the 10,033 packaged Wikipedia summaries as the retriever, SmolLM2-135M-
Instruct (packaged, text-only) as the reader, and the packaged scikit-image coffee photo as the query.
A text-only reader cannot see the photo; ``--tagger`` turns it into hints (ImageNet labels + OCR from
``gemkr_llamaindex.tags``), ``--tags`` gives them by hand, and ``--model`` takes any local Hugging Face
causal LM or vision-language model folder (a VLM sees the image itself).

    python examples/query_engine_reader.py
    python examples/query_engine_reader.py --question "What is the capital of France?" --no-image
    python examples/query_engine_reader.py --image photo.jpg --question "..." --tagger
    python examples/query_engine_reader.py --model /models/SmolVLM-256M-Instruct --image photo.jpg
    python examples/query_engine_reader.py --mini      # reader exact match on the shipped mini benchmark

Any LlamaIndex retriever works in place of BM25, e.g. a ``GeMKRRetriever`` (its clues arrive in the
response's ``source_nodes`` metadata).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def packaged_coffee_photo() -> Path:
    """The scikit-image coffee photo, written once to the cache as PNG."""
    from PIL import Image
    from skimage import data

    from gemkr_llamaindex import assets

    path = assets.cache_dir() / "examples" / "coffee.png"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.coffee()).save(path)
    return path


def build_tagger():
    """The tagger contract (any image input -> hint string or None): ImageNet labels + OCR text from
    ``gemkr_llamaindex.tags.hint_tagger()``, or None when the tags extra is missing."""
    try:
        from gemkr_llamaindex.tags import MissingExtraError, hint_tagger
    except ImportError as exc:
        print(f"(no tagger: {exc})", file=sys.stderr)
        return None
    try:
        return hint_tagger()
    except MissingExtraError as exc:
        print(f"(no tagger: {exc})", file=sys.stderr)
        return None


def evaluate_mini(retriever, reader, tagger, summaries: dict[str, str], top_k: int) -> None:
    """Exact match of the reader on ``eval_vqa/data/mini_vqa.jsonl``: gold passages vs BM25, +- hints.

    "gold" hands the reader the item's gold summaries (an oracle retriever); "bm25" retrieves top-k
    from all summaries (with hints appended to the BM25 query in the "+hints" rows).
    """
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from eval_vqa.metrics import exact_match
    from eval_vqa.mini import load_mini_benchmark
    from gemkr_llamaindex.images import packaged_image_path
    from reader import VQAQueryEngine

    plain = VQAQueryEngine(retriever, reader, top_k=top_k)
    hinted = VQAQueryEngine(retriever, reader, top_k=top_k, retrieve_with_hints=True)
    items = load_mini_benchmark()
    hints: dict[str, str | None] = {}
    for item in items:
        path = str(packaged_image_path(item["image"]["package"], item["image"]["name"]))
        if path not in hints:
            hints[path] = tagger(path) if tagger is not None else None
    settings = ["gold", "bm25"] + (["gold+hints", "bm25+hints"] if tagger is not None else [])
    print(f"\nmini benchmark: {len(items)} items; exact match (VQA normalisation) of the short answer")
    for setting in settings:
        start, correct, in_raw = time.perf_counter(), 0.0, 0
        for item in items:
            path = str(packaged_image_path(item["image"]["package"], item["image"]["name"]))
            tags = hints[path] if setting.endswith("+hints") else None
            engine = hinted if tags is not None else plain
            if setting.startswith("gold"):
                gold = [
                    NodeWithScore(node=TextNode(text=summaries[d], id_=d, metadata={"title": d}), score=1.0)
                    for d in item["gold_doc_ids"]
                ]
                response = engine.synthesize(QueryBundle(item["question"], image_path=path), gold, tags=tags)
            else:
                response = engine.ask(item["question"], image_path=path, tags=tags)
            correct += exact_match(response.response, item["answers"])
            raw = response.metadata["raw_answer"].lower()
            in_raw += any(answer.lower() in raw for answer in item["answers"])
        print(
            f"  {setting:11s} EM {correct / len(items):.3f} ({int(correct)}/{len(items)}); "
            f"an answer occurs in the raw generation {in_raw}/{len(items)}; {time.perf_counter() - start:.0f} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--question", default="What substance in this drink makes people feel awake?")
    parser.add_argument("--image", type=Path, help="query image (default: the packaged coffee photo)")
    parser.add_argument("--no-image", action="store_true", help="ask a text-only question")
    parser.add_argument("--model", default="smollm2", help="HF model folder or hub id; 'smollm2' = packaged")
    parser.add_argument("--tags", help="hints about the image, e.g. 'espresso, cup'")
    parser.add_argument("--tagger", action="store_true", help="compute hints with gemkr_llamaindex.tags")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--mini", action="store_true", help="evaluate the reader on the mini benchmark")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy small CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from llama_index.core.schema import TextNode
    from llama_index.retrievers.bm25 import BM25Retriever

    from gemkr_llamaindex import assets
    from reader import VQAQueryEngine, VQAReader

    start = time.perf_counter()
    summaries = dict(assets.wiki_summaries())
    nodes = [TextNode(text=text, id_=title, metadata={"title": title}) for title, text in summaries.items()]
    retriever = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=args.top_k)
    print(f"BM25 over {len(nodes)} Wikipedia summaries: {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    reader = VQAReader(args.model).load()
    print(
        f"reader {args.model} ({'sees images' if reader.sees_images else 'text-only'}): "
        f"{time.perf_counter() - start:.1f} s"
    )
    tagger = build_tagger() if args.tagger else None
    # BM25 cannot see the image: give it the hints too, as the paper gives its text baselines captions.
    engine = VQAQueryEngine(
        retriever, reader, top_k=args.top_k, tagger=tagger, retrieve_with_hints=bool(tagger or args.tags)
    )

    if args.mini:
        evaluate_mini(retriever, reader, tagger, summaries, args.top_k)
        return 0

    image = None if args.no_image else (args.image or packaged_coffee_photo())
    start = time.perf_counter()
    response = engine.ask(args.question, image_path=image, tags=args.tags)
    print(f"\nimage:    {image}\nquestion: {args.question}\nhints:    {response.metadata['hints']}")
    print("sources:")
    for rank, node in enumerate(response.source_nodes, start=1):
        print(f"  {rank}. {node.node_id}  (score {node.score:.2f})")
    print(f"raw:      {response.metadata['raw_answer']!r}")
    print(f"answer:   {response.response}   ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
