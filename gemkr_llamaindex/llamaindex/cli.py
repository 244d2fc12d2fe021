"""``gemkr retrieve``: clues and documents for an image + question over a KB directory.

Decoding settings default to :class:`~gemkr_llamaindex.decoding.DecodingConfig` (or the checkpoint's own
``decoding.json``); flags and ``--option key=value`` override single fields.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gemkr_llamaindex.assets import DEFAULT_LLM

FLAGS = ("beams", "groups", "min_length", "max_length", "constraint", "anchor")  # DecodingConfig options as flags


def register(subparsers: Any) -> None:
    r = subparsers.add_parser("retrieve", help="generate knowledge clues and rank KB documents for a query")
    r.add_argument("kb_dir", help="a KB directory (gemkr kb build)")
    r.add_argument("--question", "-q", default="", help="the question")
    r.add_argument("--image", "-i", default=None, help="query image path")
    r.add_argument("--checkpoint", default=None, help="trained GeMKR checkpoint; default: zero-shot --llm")
    r.add_argument("--llm", default=DEFAULT_LLM, help="zero-shot causal LM (folder, .gguf file, or 'smollm2' = packaged)")
    r.add_argument("--tags", default="auto",
                   help="visual tags: 'auto' (classifier + OCR, needs the [tags] extra), 'none', or literal text")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--beams", type=int, default=None, help="default: DecodingConfig / the checkpoint's")
    r.add_argument("--groups", type=int, default=None)
    r.add_argument("--min-length", type=int, default=None)
    r.add_argument("--max-length", type=int, default=None)
    r.add_argument("--constraint", choices=["topk", "mask"], default=None)
    r.add_argument("--anchor", choices=["any", "doc_start", "mixed"], default=None)
    r.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any DecodingConfig field")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=run)


def decoding_config(args: argparse.Namespace, base: Any = None):
    """``base`` (or the defaults) with the flags and ``--option`` pairs that were given."""
    from gemkr_llamaindex.decoding import DecodingConfig

    options: dict[str, Any] = {flag: getattr(args, flag) for flag in FLAGS if getattr(args, flag) is not None}
    for pair in args.option:
        if "=" not in pair:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip()] = value
    return DecodingConfig.from_options(options, base)


def run(args: argparse.Namespace) -> int:
    from gemkr_llamaindex.generation import checkpoint_decoding_config
    from gemkr_llamaindex.kb import KnowledgeBase
    from gemkr_llamaindex.llamaindex import ClueGenerator, GeMKRRetriever, VQAQueryBundle

    kb = KnowledgeBase.open(args.kb_dir)
    tags = None if args.tags in ("auto", "none") else args.tags
    tagger = None
    if args.tags == "auto" and args.image:
        from gemkr_llamaindex.tags import hint_tagger

        tagger = hint_tagger()
    if args.checkpoint:
        gen = ClueGenerator.from_checkpoint(args.checkpoint,
                                            config=decoding_config(args, checkpoint_decoding_config(args.checkpoint)))
    else:
        gen = ClueGenerator.zero_shot_llm(args.llm, config=decoding_config(args))
    retriever = GeMKRRetriever(gen, kb, similarity_top_k=args.top_k, tagger=tagger)
    bundle = retriever._bundle(VQAQueryBundle(query_str=args.question, image_path=args.image, tags=tags))
    res = retriever.results([bundle])[0]
    if args.json:
        print(json.dumps({"tags": bundle.tags, "docs": [
            {"doc_id": d.doc_id, "score": d.score, "clues": [c.to_dict() for c in d.clues],
             "evidence": [e.to_dict() for e in d.evidence]} for d in res.docs[: args.top_k]
        ]}, indent=2, ensure_ascii=False))
        return 0
    mode = f"checkpoint {args.checkpoint}" if args.checkpoint else f"zero-shot {args.llm}"
    print(f"{mode}; visual tags: {bundle.tags or '-'}")
    for rank, d in enumerate(res.docs[: args.top_k], start=1):
        print(f"{rank}. {d.doc_id}  score {d.score:.3f}  {why(d)}")
    return 0


def why(hit: Any) -> str:
    """What ranked a document: its strongest evidence n-grams (evidence scoring), else its best clue."""
    if hit.evidence:
        top = sorted(hit.evidence, key=lambda e: -e.contribution)[:3]
        return "evidence " + ", ".join(f"{e.text!r} ({e.source})" for e in top)
    return f"clue {hit.clues[0].text!r}" if hit.clues else ""
