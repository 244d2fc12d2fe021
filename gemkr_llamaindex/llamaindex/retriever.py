"""GeMKRRetriever: a LlamaIndex retriever whose hits are the documents GeMKR's clues map to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle

from gemkr_llamaindex.llamaindex.clue_generator import ClueGenerator, ClueQuery

CLUES_KEY = "clues"


class GeMKRRetriever(BaseRetriever):
    """Retrieves the top-k documents by clue log-likelihood.

    Reads ``QueryBundle.query_str`` and ``QueryBundle.image_path`` (text-only queries work too). Each
    returned ``NodeWithScore`` carries the KB document as its node (``node_id`` = KB doc id) and, in
    ``node.metadata["clues"]``, the generated clues that map to it with their scores (the key is excluded
    from the text sent to LLMs and embedders).

    Scores are length-normalised log-likelihoods, i.e. negative numbers: LlamaIndex's
    ``SimilarityPostprocessor`` (whose cutoff is a similarity, default None/0) would drop every hit at a
    cutoff of 0 — use a negative cutoff such as ``similarity_cutoff=-2.0``, or rank-based postprocessors.

    ``tagger`` (optional): a callable image -> hint string (see ``gemkr_llamaindex.tags``) whose output
    fills the instruction's visual-tags slot.
    """

    def __init__(
        self,
        generator: ClueGenerator,
        docstore: Any = None,
        similarity_top_k: int = 5,
        tagger: Callable[[Any], str] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if similarity_top_k < 1:
            raise ValueError("similarity_top_k must be >= 1")
        self.generator = generator
        self.docstore = docstore
        self.similarity_top_k = similarity_top_k
        self.tagger = tagger
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _to_query(self, q: QueryBundle | str) -> ClueQuery:
        if isinstance(q, str):
            q = QueryBundle(query_str=q)
        image = getattr(q, "image_path", None) or None
        tags = getattr(q, "tags", None)  # a bundle may carry precomputed hints (eval_vqa's VQAQueryBundle)
        if tags is None and self.tagger is not None and image is not None:
            tags = self.tagger(image)
        return ClueQuery(question=q.query_str or "", image=image, tags=tags)

    def _node_for(self, doc_id: str, doc_index: int):
        from llama_index.core.schema import TextNode

        node = None
        if self.docstore is not None:
            node = self.docstore.get_node(doc_id, raise_error=False)
        if node is None:  # a bare KB: build the node from the stored text
            node = TextNode(id_=doc_id, text=self.generator.kb.text(doc_index))
        return node.model_copy(deep=True)

    def retrieve_batch(self, queries: Sequence[QueryBundle | str]) -> list[list[NodeWithScore]]:
        """Retrieve for many queries with batched decoding (evaluation throughput)."""
        results = self.generator.generate([self._to_query(q) for q in queries])
        out = []
        for res in results:
            hits = []
            for doc in res.docs[: self.similarity_top_k]:
                node = self._node_for(doc.doc_id, doc.doc_index)
                node.metadata[CLUES_KEY] = [
                    {"text": c.text, "score": round(c.score, 6), "logprob": round(c.logprob, 6)} for c in doc.clues
                ]
                for keys in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
                    if CLUES_KEY not in keys:
                        keys.append(CLUES_KEY)
                hits.append(NodeWithScore(node=node, score=float(doc.score)))
            out.append(hits)
        return out

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.retrieve_batch([query_bundle])[0]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # decoding is CPU/GPU-bound: run it in a worker thread so the event loop stays free
        return await asyncio.to_thread(self._retrieve, query_bundle)
