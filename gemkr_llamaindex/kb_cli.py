"""``gemkr kb build|info|query``: the command line of :mod:`gemkr_llamaindex.kb` (kept outside it, since
the KB imports nothing of the rest of the package; here tokenizer names and the packaged corpus resolve)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

WIKI_INPUT = "wiki-summaries"  # the packaged Wikipedia summaries


def register(subparsers: Any) -> None:
    kb = subparsers.add_parser("kb", help="build, inspect and query an FM-index knowledge base")
    sub = kb.add_subparsers(dest="kb_command", required=True)

    b = sub.add_parser("build", help="tokenize a corpus and build a KB directory")
    add_build_arguments(b)
    b.set_defaults(func=run_build)

    i = sub.add_parser("info", help="print a KB's manifest summary")
    i.add_argument("kb_dir")
    i.add_argument("--verify", action="store_true", help="check every file's checksum (open() does by default)")
    i.add_argument("--no-verify", action="store_true", help="skip the checksums (sizes and structure are still checked)")
    i.add_argument("--short-docs", type=int, default=10, metavar="N",
                   help="report how many documents are shorter than N tokens (default 10)")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=run_info)

    q = sub.add_parser("query", help="look a text up: count, documents, continuations")
    q.add_argument("kb_dir")
    q.add_argument("text")
    q.add_argument("--limit", type=int, default=5, help="documents to show")
    q.add_argument("--max-next", type=int, default=20, help="continuations to show")
    q.set_defaults(func=run_query)


def add_build_arguments(b: argparse.ArgumentParser) -> None:
    """The options of a KB build (also those of ``gemkr ray build``)."""
    b.add_argument("--input", required=True,
                   help=f"corpus file (.jsonl, .csv 'kid,text', .tsv incl. DPR psgs_w100.tsv) or {WIKI_INPUT!r}")
    b.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer name or path, or 'smollm2'")
    b.add_argument("--out", required=True, help="KB directory to create")
    b.add_argument("--max-ram-gb", type=float, default=None, help="peak build memory budget (sets shard size)")
    b.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard (overrides --max-ram-gb)")
    b.add_argument("--id-field", default=None, help="id field/column (default: id, kid, passage_id, ...)")
    b.add_argument("--text-field", default=None, help="text field/column (default: text, passage_content, ...)")
    b.add_argument("--no-title", action="store_true", help="do not prepend a title column to the text")
    b.add_argument("--lowercase", action="store_true", help="lower-case documents and queries")
    b.add_argument("--unicode", choices=["NFC", "NFKC", "NFD", "NFKD"], default=None, help="unicode normalisation")
    b.add_argument("--skip-empty", action="store_true", help="skip empty documents instead of failing")
    b.add_argument("--overwrite", action="store_true", help="replace an existing KB directory")


def build_inputs(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """``(docs, tokenizer, KnowledgeBase.build keyword arguments)`` from the parsed build options (the
    tokenizer's name resolved: ``"smollm2"`` is the packaged one)."""
    from gemkr_llamaindex.assets import load_tokenizer

    if args.input == WIKI_INPUT:
        from gemkr_llamaindex.assets import wiki_summaries

        docs: Any = list(wiki_summaries())
        options: dict[str, Any] = {}
    else:
        docs = args.input
        options = {"id_field": args.id_field, "text_field": args.text_field, "include_title": not args.no_title}
    options.update(max_ram_gb=args.max_ram_gb, shard_tokens=args.shard_tokens, lowercase=args.lowercase,
                   unicode_normalization=args.unicode, skip_empty=args.skip_empty, overwrite=args.overwrite)
    return docs, load_tokenizer(args.tokenizer), options


def run_build(args: argparse.Namespace) -> int:
    from gemkr_llamaindex.kb import KnowledgeBase

    docs, tokenizer, options = build_inputs(args)
    kb = KnowledgeBase.build(docs, tokenizer, args.out, **options)
    print(f"built {kb.path}: {kb.num_docs} documents, {kb.num_tokens} tokens, {kb.num_shards} shard(s) "
          f"in {kb.manifest['build']['seconds']:.1f} s")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from gemkr_llamaindex.kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb_dir, verify=not args.no_verify)
    m = kb.manifest
    if args.json:
        print(json.dumps(m, indent=2, ensure_ascii=False))
        return 0
    size = sum(r["bytes"] for r in m["files"].values())
    index_bytes = sum(s["file_size"] for s in kb.shard_info())
    print(f"KB            {kb.path}")
    print(f"documents     {kb.num_docs:,}")
    print(f"tokens        {kb.num_tokens:,}")
    print(f"tokenizer     {m['tokenizer']['name_or_path']} (vocab {m['tokenizer']['vocab_size']:,})")
    print(f"normalisation {m['normalization']}")
    print(f"shards        {kb.num_shards}")
    print(f"index size    {index_bytes / 2**20:.1f} MiB ({index_bytes / max(kb.num_tokens, 1):.2f} bytes/token)")
    print(f"total size    {size / 2**20:.1f} MiB (with document texts and ids)")
    print(f"built         {m['created']} in {m['build']['seconds']:.1f} s, format v{m['format_version']}")
    print(f"build id      {kb.build_id}")
    lengths = kb.doc_lengths()
    print(f"doc lengths   min {int(lengths.min())}, median {int(np.median(lengths))}, max {int(lengths.max())} tokens")
    print(f"documents shorter than {args.short_docs} tokens: {int((lengths < args.short_docs).sum()):,}")
    if not args.no_verify:
        print("checksums     OK")
    return 0


def run_query(args: argparse.Namespace) -> int:
    from gemkr_llamaindex.kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb_dir)
    ids = kb.encode(args.text)
    print(f"query         {args.text!r} -> {len(ids)} tokens {ids}")
    print(f"count         {kb.count(ids)}")
    unique = kb.unique_doc(ids)
    print(f"unique doc    {unique if unique is not None else '-'}")
    docs = kb.doc_ids(ids)
    print(f"documents     {len(docs)}")
    for doc_id in docs[: args.limit]:
        snippet = kb.text(doc_id)[:100].replace("\n", " ")
        print(f"  {doc_id}: {snippet}...")
    nxt = kb.next_tokens(ids)
    shown = ", ".join(repr(kb.decode([t])) for t in nxt[: args.max_next])
    more = f" ... (+{len(nxt) - args.max_next})" if len(nxt) > args.max_next else ""
    print(f"continuations {len(nxt)}: {shown}{more}")
    return 0
