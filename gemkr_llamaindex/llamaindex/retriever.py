"""GeMKRRetriever: a LlamaIndex retriever whose hits are the documents GeMKR's clues map to."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from gemkr_llamaindex.decoding import QueryResult, SearchStats
from gemkr_llamaindex.images import HintTagger, ImageInput
from gemkr_llamaindex.llamaindex.clue_generator import ClueGenerator
from gemkr_llamaindex.llamaindex.query import VQAQueryBundle

CLUES_KEY = "clues"
EVIDENCE_KEY = "evidence"


class GeMKRRetriever(BaseRetriever):
    """Retrieves the top-k documents of ``kb`` by clue log-likelihood.

    Reads the question (``query_str``), the picture (``image_path``, or a
    :class:`~gemkr_llamaindex.llamaindex.query.VQAQueryBundle`'s ``image``) and its visual ``tags``;
    text-only queries work too. Each returned ``NodeWithScore`` carries the KB document as its node
    (``node_id`` = KB doc id; the docstore's node when one is given, else built from the KB's text) and,
    in ``node.metadata["clues"]``, the generated clues that map to it with their scores (the key is
    excluded from the text sent to LLMs and embedders).

    This is the one place where a generator meets a KB: the generator's tokenizer is checked against
    ``kb`` here, and every query decodes against ``kb``.

    What a score is depends on the generator's scoring: under the paper's clue scoring, a length-normalised
    (and, with ``prior_weight``, prior-calibrated) clue log-likelihood, negative or small; under evidence
    scoring (``DecodingConfig.evidence``), the sum of the n-gram weights the document collected, >= 0, and
    ``node.metadata["evidence"]`` lists those n-grams (text, source, weight, contribution, KB count).

    ``tagger`` (optional): any image input -> hint string (``gemkr_llamaindex.tags.hint_tagger()``); it
    fills the visual-tags slot when a query brings no tags of its own.

    ``batch_window_ms`` (optional, off by default): concurrent ``retrieve``/``aretrieve`` calls arriving
    within this window share one decoding batch of up to ``max_batch`` queries
    (:mod:`gemkr_llamaindex.llamaindex.batching`); each still gets exactly its own hits.
    """

    def __init__(
        self,
        generator: ClueGenerator,
        kb: Any,
        docstore: Any = None,
        similarity_top_k: int = 5,
        tagger: HintTagger | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        batch_window_ms: float | None = None,
        max_batch: int = 8,
    ) -> None:
        if similarity_top_k < 1:
            raise ValueError("similarity_top_k must be >= 1")
        if not isinstance(generator, ClueGenerator):
            raise TypeError(f"generator must be a ClueGenerator, got {type(generator).__name__}")
        generator.check_kb(kb)  # TokenizerMismatchError names both tokenizers
        self.generator = generator
        self.kb = kb
        self.docstore = docstore
        self.similarity_top_k = similarity_top_k
        self.tagger = tagger
        self._batcher = None
        if batch_window_ms is not None:
            from gemkr_llamaindex.llamaindex.batching import MicroBatcher

            self._batcher = MicroBatcher(lambda bundles: self.generator.generate(bundles, self.kb),
                                         batch_window_ms, max_batch)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _bundle(self, q: QueryBundle | str) -> VQAQueryBundle:
        """The query as a VQAQueryBundle, its picture decoded once and tagged when it brings no tags.

        The retriever's own tags go on a copy: the caller's bundle (and so, in a query engine, the
        reader's prompt) is left as it came."""
        bundle = VQAQueryBundle.of(q)
        if bundle.tags is None and self.tagger is not None:
            image: ImageInput | None = bundle.loaded_image()
            if image is not None:
                bundle = copy.copy(bundle)  # shares the decoded picture
                bundle.tags = self.tagger(image)
        return bundle

    def _node_for(self, doc_id: str, doc_index: int) -> TextNode:
        node = None
        if self.docstore is not None:
            node = self.docstore.get_node(doc_id, raise_error=False)
        if node is None:  # a bare KB: build the node from the stored text
            node = TextNode(id_=doc_id, text=self.kb.text(doc_index))
        return node.model_copy(deep=True)

    def results(self, queries: Sequence[QueryBundle | str], stats: SearchStats | None = None) -> list[QueryResult]:
        """The raw decoding results (every clue, every document) for many queries."""
        return self.generator.generate([self._bundle(q) for q in queries], self.kb, stats=stats)

    def retrieve_batch(self, queries: Sequence[QueryBundle | str]) -> list[list[NodeWithScore]]:
        """Retrieve for many queries with batched decoding (evaluation throughput)."""
        return [self._hits(res) for res in self.results(queries)]

    def _hits(self, res: QueryResult) -> list[NodeWithScore]:
        hits = []
        for doc in res.docs[: self.similarity_top_k]:
            node = self._node_for(doc.doc_id, doc.doc_index)
            node.metadata[CLUES_KEY] = [
                {"text": c.text, "score": round(c.score, 6), "logprob": round(c.logprob, 6)} for c in doc.clues
            ]
            keys_added = [CLUES_KEY]
            if doc.evidence:  # evidence scoring: the n-grams that scored the document, largest share first
                node.metadata[EVIDENCE_KEY] = [e.to_dict() for e in sorted(doc.evidence, key=lambda e: -e.contribution)]
                keys_added.append(EVIDENCE_KEY)
            for keys in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
                keys.extend(k for k in keys_added if k not in keys)
            hits.append(NodeWithScore(node=node, score=float(doc.score)))
        return hits

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._batcher is None:
            return self.retrieve_batch([query_bundle])[0]
        bundle = self._bundle(query_bundle)
        self.generator.validate([bundle])  # a bad query fails its own call, never its batch-mates'
        return self._hits(self._batcher(bundle))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # decoding is CPU/GPU-bound: run it in a worker thread so the event loop stays free; every call
        # builds its own decoding state, so concurrent calls equal sequential ones
        return await asyncio.to_thread(self._retrieve, query_bundle)
