"""A LlamaIndex retrieval evaluator that sends the query image (and tags) to the retriever.

The stock ``RetrieverEvaluator`` calls ``retriever.aretrieve(query_str)``, so image-aware retrievers
never see the image. :class:`VQARetrieverEvaluator` builds a :class:`VQAQueryBundle` with
``image_path`` and ``tags`` and scores the result with :mod:`eval_vqa.metrics`, putting every metric
under its canonical name (``"PRR@5 (substring)"``) in ``RetrievalEvalResult.metric_dict``. The
answers travel as ``expected_texts``, which is what pseudo-relevance compares passages against.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.evaluation.retrieval.base import RetrievalEvalMode, RetrievalEvalResult
from llama_index.core.evaluation.retrieval.evaluator import RetrieverEvaluator
from llama_index.core.evaluation.retrieval.metrics_base import RetrievalMetricResult
from llama_index.core.schema import NodeWithScore, QueryBundle

from gemkr_llamaindex.query import VQAQueryBundle

from .metrics import RELEVANCE_MODES, retrieval_scores


class VQARetrievalEvalResult(RetrievalEvalResult):
    """``RetrievalEvalResult`` plus the retriever's score of each retrieved node (for TREC run files)."""

    retrieved_scores: list[float | None] = Field(default_factory=list, description="scores, retrieval order")


class VQARetrieverEvaluator(RetrieverEvaluator):
    """Evaluate a retriever on image + question queries with the metrics of DESIGN.md.

    Use ``evaluate(question, expected_ids=gold_ids, expected_texts=answers, image_path=..., tags=...)``.
    ``metrics`` (LlamaIndex metric objects) may be left empty; ours are always computed.
    """

    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], description="cut-offs K")
    relevance_modes: list[str] = Field(default_factory=lambda: list(RELEVANCE_MODES))
    metrics: list[Any] = Field(default_factory=list, description="extra LlamaIndex retrieval metrics")

    async def aevaluate(
        self,
        query: str,
        expected_ids: list[str],
        expected_texts: list[str] | None = None,
        mode: RetrievalEvalMode = RetrievalEvalMode.TEXT,
        image_path: str | None = None,
        tags: str | None = None,
        **kwargs: Any,
    ) -> RetrievalEvalResult:
        bundle = VQAQueryBundle(query_str=query, image_path=image_path, tags=tags)
        nodes = await self.retriever.aretrieve(bundle)
        if self.node_postprocessors:
            for post in self.node_postprocessors:
                nodes = post.postprocess_nodes(nodes, query_bundle=bundle)
        return self.score_nodes(bundle, nodes, expected_ids, expected_texts, mode)

    def score_nodes(
        self,
        query: QueryBundle | str,
        nodes: list[NodeWithScore],
        expected_ids: list[str],
        expected_texts: list[str] | None = None,
        mode: RetrievalEvalMode = RetrievalEvalMode.TEXT,
    ) -> VQARetrievalEvalResult:
        """Score already retrieved (and postprocessed) ``nodes`` for ``query``.

        What :meth:`aevaluate` does after retrieving; the end-to-end runner retrieves itself, because
        the answerer needs the nodes (with their metadata), not only their ids and texts.
        """
        bundle = VQAQueryBundle.of(query)
        ids = [n.node.node_id for n in nodes]
        texts = [n.node.get_content() for n in nodes]
        scores = retrieval_scores(texts, ids, expected_texts or [], expected_ids, self.ks, self.relevance_modes)
        metric_dict = {name: RetrievalMetricResult(score=value) for name, value in scores.items()}
        for metric in self.metrics:
            metric_dict[metric.metric_name] = metric.compute(bundle.query_str, expected_ids, ids, expected_texts, texts)
        return VQARetrievalEvalResult(
            query=bundle.query_str, expected_ids=expected_ids, expected_texts=expected_texts, retrieved_ids=ids,
            retrieved_texts=texts, mode=mode, metric_dict=metric_dict, retrieved_scores=[n.score for n in nodes],
        )
