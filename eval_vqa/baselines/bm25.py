"""BM25 baseline: llama-index-retrievers-bm25 (bm25s, English stemming and stop words) over the corpus."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.retrievers.bm25 import BM25Retriever

from .common import clamp_top_k, query_text, split_docs


class BM25Baseline(BM25Retriever):
    """``BM25Retriever`` whose query is the question plus, with ``use_tags``, the bundle's visual tags.

    Nodes carry only their text (no metadata), so BM25 scores the passage alone; ``node.id_`` is the
    corpus doc id.
    """

    def __init__(self, docs: Iterable[tuple[str, str]], similarity_top_k: int = 10, use_tags: bool = True,
                 **kwargs) -> None:
        doc_ids, texts = split_docs(docs)
        nodes = [TextNode(id_=i, text=t) for i, t in zip(doc_ids, texts)]
        # the parent logs (not warns) and clamps a too-large k; we warn and clamp ourselves
        k = clamp_top_k(similarity_top_k, len(nodes), type(self).__name__)
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        super().__init__(nodes=nodes, similarity_top_k=k, **kwargs)
        self.use_tags = use_tags

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return super()._retrieve(QueryBundle(query_str=query_text(query_bundle, self.use_tags)))
