"""GeMKR inside a LlamaIndex query engine, on data that ships in packages (runs offline on a CPU).

    python examples/llamaindex_query_engine.py [--checkpoint DIR]

Builds a GeMKRIndex over 2,000 of the packaged Wikipedia summaries, retrieves for an image + question
with zero-shot SmolLM2 (or a trained GeMKR checkpoint), answers with the VQA reader, and round-trips the
index through persist / from_persist_dir.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from llama_index.core import Document
from llama_index.core.schema import QueryBundle

from gemkr_llamaindex import ClueGenerator, DecodingConfig, GeMKRIndex
from gemkr_llamaindex.assets import wiki_summaries
from gemkr_llamaindex.images import packaged_image_path
from reader import VQAQueryEngine, VQAReader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--docs", type=int, default=2000)
    args = p.parse_args()

    summaries = list(wiki_summaries())
    keep = summaries[: args.docs] + [s for s in summaries[args.docs:] if s[0] in {"Caffeine", "Coffee"}]
    docs = [Document(text=text, id_=title) for title, text in keep]
    work = Path(tempfile.mkdtemp(prefix="gemkr-example-"))
    # A generator holds no KB: it exists before the index and can serve several (defaults: DecodingConfig()).
    gen = (ClueGenerator.from_checkpoint(args.checkpoint) if args.checkpoint
           else ClueGenerator.zero_shot_llm("smollm2", config=DecodingConfig(min_length=5, anchor="mixed")))
    index = GeMKRIndex.from_documents(docs, generator=gen, kb_dir=work / "kb")

    query = QueryBundle(query_str="Which stimulant in this drink affects humans?",
                        image_path=str(packaged_image_path("skimage", "coffee")))
    retriever = index.as_retriever(generator=gen, similarity_top_k=3,
                                   tagger=lambda image: "espresso, coffee cup")  # or gemkr_llamaindex.tags
    for hit in retriever.retrieve(query):
        print(f"{hit.score:7.3f}  {hit.node.node_id:<24} clue: {hit.node.metadata['clues'][0]['text']!r}")

    engine = VQAQueryEngine(retriever, VQAReader(), top_k=3)
    print("answer:", engine.query(query))

    index.persist(work / "storage")
    again = GeMKRIndex.from_persist_dir(work / "storage", generator=gen)
    print("persisted and reloaded:", again.kb)


if __name__ == "__main__":
    main()
