"""The KB over the packaged Wikipedia summaries with the SmolLM2 tokenizer, built once and cached."""

from __future__ import annotations

from gemkr_llamaindex.assets import cache_dir, wiki_summaries
from gemkr_llamaindex.kb.errors import IndexFormatError
from gemkr_llamaindex.kb.knowledge_base import KnowledgeBase


def wiki_summaries_kb() -> KnowledgeBase:
    """Open the cached KB of the 10,033 summaries, building it on first use (or if the copy is unusable)."""
    path = cache_dir() / "kb" / "wiki-summaries-titled-smollm2"  # "Title. extract" passages (assets.wiki_summaries)
    if path.exists():
        try:
            return KnowledgeBase.open(path)
        except IndexFormatError as exc:
            print(f"cached KB unusable ({exc}); rebuilding")
    print(f"building the KB over the packaged Wikipedia summaries into {path} (once)")
    return KnowledgeBase.build(list(wiki_summaries()), "smollm2", path, overwrite=True)
