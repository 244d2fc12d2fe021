"""The ``gold`` oracle: a "retriever" that returns the query's gold documents, for upper-bound rows.

It is not a retriever: it reads the annotations. An end-to-end run puts it beside the real
retrievers so that the answerer's score on the gold passages bounds what better retrieval can buy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from .common import split_docs

GoldKey = tuple[str, "str | None"]


class GoldOracleRetriever(BaseRetriever):
    """Returns the gold documents of the query, in annotation order, at most ``similarity_top_k``.

    ``gold`` maps ``(question, image_path)`` (what the runner puts in the bundle) to gold doc ids;
    two queries with the same question and image share the union of their gold ids. Gold ids missing
    from the corpus are skipped; a query without gold documents gets an empty list. Every node scores
    1.0 and carries only the passage text.

    Raises:
        ValueError: no query has gold document ids (OK-VQA, for instance, has only answers).
    """

    def __init__(self, docs: Iterable[tuple[str, str]], gold: Mapping[GoldKey, list[str]],
                 similarity_top_k: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        doc_ids, texts = split_docs(docs)
        self.texts = dict(zip(doc_ids, texts))
        if not any(gold.values()):
            raise ValueError("the gold oracle needs gold document ids, and no query of this dataset has any")
        self.gold = {key: list(ids) for key, ids in gold.items()}
        self.similarity_top_k = similarity_top_k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        key = (query_bundle.query_str, query_bundle.image_path or None)
        ids = [doc_id for doc_id in self.gold.get(key, []) if doc_id in self.texts]
        return [NodeWithScore(node=TextNode(id_=doc_id, text=self.texts[doc_id]), score=1.0)
                for doc_id in ids[: self.similarity_top_k]]
