"""Hybrid retrieval the LlamaIndex way: ``QueryFusionRetriever`` over multimodal queries.

``MultimodalFusionRetriever`` is LlamaIndex's ``QueryFusionRetriever`` (reciprocal rank fusion by
default) with the three changes image + question queries need:

* **The picture reaches every retriever, for every query.** The stock class hands the caller's bundle
  on only for the original query; the queries its LLM generates (``num_queries > 1``) are rebuilt as
  ``QueryBundle(text)`` and lose ``image_path``. Here each generated query is a copy of the caller's
  :class:`~gemkr_llamaindex.query.VQAQueryBundle` with only the text changed: picture (decoded
  once, shared), ``image_path`` and visual ``tags`` travel with it. The LLM that writes the queries reads
  the question only (it is a text LLM's prompt).
* **Documents are fused by node id.** The stock class identifies a node by ``node.hash`` (text *and*
  metadata): the same document from GeMKR (metadata: its clues) and from BM25 (no metadata) is scored
  as two documents whose reciprocal ranks are never summed, both copies can take top-k slots, and
  ``BaseRetriever`` then drops the second copy by node id, so fewer than top-k hits come back, ranked
  wrongly, and the kept copy may be BM25's, without the clues. Here every retriever's copy of a
  document is replaced by one node before fusing: the copy of the first retriever that returned it
  (GeMKR's, with its clues, when GeMKR comes first), plus metadata keys it lacked from later copies.
* **No default LLM is resolved.** Without query generation (``num_queries=1``, the default) no LLM is
  needed and none is looked up (the stock class falls back to ``Settings.llm``, OpenAI, and fails
  offline); query generation needs an explicit ``llm=``.

Example::

    hybrid = MultimodalFusionRetriever([gemkr_retriever, bm25_retriever], similarity_top_k=5)
    hybrid.retrieve(VQAQueryBundle("Which family does this animal belong to?", image_path="cat.jpg"))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.llms import MockLLM
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle

from gemkr_llamaindex.query import VQAQueryBundle

Results = dict[tuple[str, int], list[NodeWithScore]]


def merge_by_node_id(results: Results) -> Results:
    """Point every hit of one document (same ``node_id``) at one node, so fusion counts it once.

    The kept node is the first one seen (retriever order), copied only when later copies add metadata
    keys it lacks; the retrievers' own node objects are never modified.
    """
    first: dict[str, BaseNode] = {}
    extra: dict[str, dict[str, Any]] = {}
    for hits in results.values():
        for hit in hits:
            node_id = hit.node.node_id
            if node_id not in first:
                first[node_id] = hit.node
                continue
            known = first[node_id].metadata
            for key, value in hit.node.metadata.items():
                if key not in known:
                    extra.setdefault(node_id, {}).setdefault(key, value)
    kept = dict(first)
    for node_id, more in extra.items():
        kept[node_id] = first[node_id].model_copy(deep=True)
        kept[node_id].metadata.update(more)
    for hits in results.values():
        for hit in hits:
            hit.node = kept[hit.node.node_id]
    return results


def with_picture(queries: Sequence[QueryBundle]) -> list[QueryBundle]:
    """``queries`` with the first one's picture and tags on every later one (the generated queries)."""
    if len(queries) < 2:
        return list(queries)
    original = VQAQueryBundle.of(queries[0])
    original.loaded_image()  # decode once, before the copies share it
    out = [queries[0]]
    for q in queries[1:]:
        bundle = copy.copy(original)  # shares the decoded picture
        bundle.query_str, bundle.custom_embedding_strs, bundle.embedding = q.query_str, None, None
        out.append(bundle)
    return out


class MultimodalFusionRetriever(QueryFusionRetriever):
    """``QueryFusionRetriever`` for image + question queries: the picture in every query, fusion by node id.

    Args:
        retrievers: LlamaIndex retrievers, the one whose node (metadata) should win first (e.g. GeMKR).
        similarity_top_k: fused hits returned.
        mode: a LlamaIndex fusion mode; default ``"reciprocal_rerank"`` (RRF, k = 60), which needs no
            comparable scores (GeMKR's are log-likelihoods, BM25's are not).
        num_queries: 1 (default) fuses the retrievers' rankings of the caller's query; n > 1 also asks
            ``llm`` for n - 1 rewrites of the question, each sent with the caller's picture and tags.
        use_async: run the retrievers concurrently through ``aretrieve`` (default: one after another).
        llm: the LLM that writes the extra queries; required when ``num_queries > 1``, unused otherwise.
    """

    def __init__(
        self,
        retrievers: Sequence[BaseRetriever],
        similarity_top_k: int = 5,
        mode: str = "reciprocal_rerank",
        num_queries: int = 1,
        use_async: bool = False,
        llm: Any = None,
        **kwargs: Any,
    ) -> None:
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        if num_queries > 1 and llm is None:
            raise ValueError(
                f"num_queries={num_queries} asks an LLM for {num_queries - 1} more queries: pass llm= (any "
                "LlamaIndex LLM); no default LLM is looked up (Settings.llm is OpenAI and needs the network)"
            )
        if not retrievers:
            raise ValueError("give at least one retriever to fuse")
        super().__init__(list(retrievers), llm=llm if llm is not None else MockLLM(), mode=mode,
                         similarity_top_k=similarity_top_k, num_queries=num_queries, use_async=use_async, **kwargs)

    @property
    def retrievers(self) -> list[BaseRetriever]:
        return list(self._retrievers)

    def _run_sync_queries(self, queries):  # type: ignore[override]
        return merge_by_node_id(super()._run_sync_queries(with_picture(queries)))

    def _run_nested_async_queries(self, queries):  # type: ignore[override]
        return merge_by_node_id(super()._run_nested_async_queries(with_picture(queries)))

    async def _run_async_queries(self, queries):  # type: ignore[override]
        return merge_by_node_id(await super()._run_async_queries(with_picture(queries)))
