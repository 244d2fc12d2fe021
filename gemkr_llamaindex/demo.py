"""``make demo``: the embedded default, end to end on what ships in packages.

Builds (once, then cached) the knowledge base over the 10,033 packaged Wikipedia summaries with the
SmolLM2 tokenizer and looks a few texts up in it.
"""

from __future__ import annotations

import time

from gemkr_llamaindex.assets import cache_dir, wiki_summaries
from gemkr_llamaindex.kb import IndexFormatError, KnowledgeBase

LOOKUPS = [" the Eiffel Tower", " capital and largest city of", " Apollo 11", " photosynthesis"]


def demo_kb() -> KnowledgeBase:
    """The demo KB from the cache, built on first use (or rebuilt if the cached copy is damaged)."""
    path = cache_dir() / "kb" / "wiki-summaries-smollm2"
    if path.exists():
        try:
            return KnowledgeBase.open(path)
        except IndexFormatError as exc:
            print(f"cached KB unusable ({exc}); rebuilding")
    print(f"building the KB over the packaged Wikipedia summaries into {path} (once)")
    return KnowledgeBase.build(list(wiki_summaries()), "smollm2", path, overwrite=True)


def main() -> None:
    t0 = time.perf_counter()
    kb = demo_kb()
    print(f"{kb}  ready in {time.perf_counter() - t0:.1f} s\n")
    for text in LOOKUPS:
        ids = kb.encode(text)
        t = time.perf_counter()
        count, nxt, docs, unique = kb.count(ids), kb.next_tokens(ids), kb.doc_ids(ids, limit=3), kb.unique_doc(ids)
        us = (time.perf_counter() - t) * 1e6
        shown = ", ".join(repr(kb.decode([tok])) for tok in nxt[:8])
        print(f"{text!r}: {count} occurrences in {len(kb.doc_indices(ids))} docs; unique doc: {unique}")
        print(f"    first docs: {docs}")
        print(f"    next tokens ({len(nxt)}): {shown}{' ...' if len(nxt) > 8 else ''}")
        print(f"    ({us:.0f} us for the four look-ups)")


if __name__ == "__main__":
    main()
