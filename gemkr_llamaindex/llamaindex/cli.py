"""``gemkr retrieve``: clues and documents for an image + question over a KB directory."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    r = subparsers.add_parser("retrieve", help="generate knowledge clues and rank KB documents for a query")
    r.add_argument("kb_dir", help="a KB directory (gemkr kb build)")
    r.add_argument("--question", "-q", default="", help="the question")
    r.add_argument("--image", "-i", default=None, help="query image path")
    r.add_argument("--checkpoint", default=None, help="trained GeMKR checkpoint; default: zero-shot --llm")
    r.add_argument("--llm", default="smollm2", help="zero-shot causal LM (name/path; 'smollm2' = packaged)")
    r.add_argument("--tags", default="auto",
                   help="visual tags: 'auto' (classifier + OCR, needs the [tags] extra), 'none', or literal text")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--beams", type=int, default=20)
    r.add_argument("--groups", type=int, default=4)
    r.add_argument("--min-length", type=int, default=10)
    r.add_argument("--max-length", type=int, default=15)
    r.add_argument("--constraint", choices=["topk", "mask"], default="topk")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.kb import KnowledgeBase
    from gemkr_llamaindex.llamaindex import ClueGenerator, ClueQuery

    kb = KnowledgeBase.open(args.kb_dir)
    cfg = DecodingConfig(num_beams=args.beams, num_groups=args.groups, min_length=args.min_length,
                         max_length=args.max_length, constraint=args.constraint)
    tags = None
    if args.tags == "auto" and args.image:
        from gemkr_llamaindex.tags import default_tagger, format_tags

        tags = format_tags(default_tagger().tag(args.image)) or None
    elif args.tags not in ("auto", "none"):
        tags = args.tags
    gen = (ClueGenerator.from_checkpoint(args.checkpoint, kb, config=cfg) if args.checkpoint
           else ClueGenerator.zero_shot_from(kb, args.llm, config=cfg))
    res = gen.generate([ClueQuery(question=args.question, image=args.image, tags=tags)])[0]
    if args.json:
        print(json.dumps({"tags": tags, "docs": [
            {"doc_id": d.doc_id, "score": d.score, "clues": [c.to_dict() for c in d.clues]} for d in res.docs[: args.top_k]
        ]}, indent=2, ensure_ascii=False))
        return 0
    mode = f"checkpoint {args.checkpoint}" if args.checkpoint else f"zero-shot {args.llm}"
    print(f"{mode}; visual tags: {tags or '-'}")
    for rank, d in enumerate(res.docs[: args.top_k], start=1):
        print(f"{rank}. {d.doc_id}  score {d.score:.3f}  clue {d.clues[0].text!r}")
    return 0
