"""Knowledge bases built once per corpus and tokenizer, and kept in the cache directory.

:func:`cached_kb` is the one place that opens or builds such a KB: the packaged Wikipedia summaries'
(:func:`wiki_summaries_kb`), the evaluation's, and an index's built without a folder of its own. The
folder's name is a digest of the corpus's fingerprint (:func:`gemkr_llamaindex.kb.corpus_fingerprint`)
and of the tokenizer's (the parts of its pipeline that decide the ids), so another corpus or tokenizer
never opens it; a copy that no longer opens is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from gemkr_llamaindex.assets import DEFAULT_LLM, cache_dir, load_tokenizer, wiki_summaries
from gemkr_llamaindex.kb import IndexFormatError, KnowledgeBase, corpus_fingerprint, hash_fields
from gemkr_llamaindex.kb.corpus import iter_documents
from gemkr_llamaindex.kb.tokenization import fingerprint


def cached_kb(docs: Iterable[Any], tokenizer: Any, *, show_progress: bool = True, **build_options: Any) -> KnowledgeBase:
    """Open the cached KB of ``docs`` (``(doc_id, text)`` pairs or LlamaIndex nodes) for ``tokenizer``
    (an instance, or a name :func:`gemkr_llamaindex.assets.load_tokenizer` resolves), building it the
    first time; ``build_options`` (``lowercase=True`` ...) go to :meth:`KnowledgeBase.build` and into the key."""
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    pairs = list(iter_documents(docs))
    key = hashlib.sha256()
    hash_fields(key, corpus_fingerprint(pairs)["sha256"], json.dumps(fingerprint(tok), sort_keys=True),
                json.dumps(build_options, sort_keys=True, default=str))
    path = cache_dir() / "kb" / key.hexdigest()[:20]
    if path.exists():
        try:
            return KnowledgeBase.open(path, tokenizer=tok)
        except IndexFormatError as exc:
            print(f"cached KB unusable ({exc}); rebuilding")
    if show_progress:
        print(f"building the KB of {len(pairs):,} documents into {path} (once)")
    return KnowledgeBase.build(pairs, tok, path, overwrite=True, show_progress=show_progress, **build_options)


def wiki_summaries_kb() -> KnowledgeBase:
    """The KB of the 10,033 packaged Wikipedia summaries ("Title. extract" passages) with SmolLM2's tokenizer."""
    return cached_kb(wiki_summaries(), DEFAULT_LLM)
