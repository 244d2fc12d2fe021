"""GeMKRRetriever: a LlamaIndex retriever whose hits are the documents GeMKR's clues map to."""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TextNode

from gemkr_llamaindex.decoding import QueryResult, SearchStats
from gemkr_llamaindex.generation import ClueGenerator
from gemkr_llamaindex.images import HintTagger, ImageInput
from gemkr_llamaindex.query import VQAQueryBundle

CLUES_KEY = "clues"
EVIDENCE_KEY = "evidence"
SHARE_KEY = "score_softmax"


def softmax(scores: Sequence[float]) -> list[float]:
    """``exp(s_i) / sum_j exp(s_j)``, computed stably (any real scores; ``-inf`` gets 0; ``+inf`` ties share 1)."""
    if not scores:
        return []
    top = max(scores)
    if math.isinf(top):
        tied = [float(s == top) for s in scores]
        return [t / sum(tied) for t in tied]
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


class GeMKRRetriever(BaseRetriever):
    """Retrieves the top-k documents of ``kb`` by clue log-likelihood.

    Reads the question (``query_str``), the picture (``image_path``, or a
    :class:`~gemkr_llamaindex.query.VQAQueryBundle`'s ``image``) and its visual ``tags``;
    text-only queries work too. Each returned ``NodeWithScore`` carries the KB document as its node
    (``node_id`` = KB doc id; the docstore's node when one is given, else built from the KB's text) and,
    in ``node.metadata["clues"]``, the generated clues that map to it with their scores (the key is
    excluded from the text sent to LLMs and embedders).

    This is the one place where a generator meets a KB: the generator's tokenizer is checked against
    ``kb`` here, and every query decodes against ``kb``.

    ``NodeWithScore.score`` is the document's score, whose scale depends on the generator's scoring
    (``docs/scoring.md``): the paper's length-normalised clue log-likelihood (always <= 0) or a
    prior-calibrated one (``prior_weight > 0``: either sign); under evidence scoring
    (``DecodingConfig.evidence``, the shipped checkpoint's default) the sum of the n-gram weights the
    document collected (>= 0), with ``node.metadata["evidence"]`` listing those n-grams (text, source,
    weight, contribution, KB count). For cutoffs, ``node.metadata["score_softmax"]`` holds the document's
    softmax share over every document the search reached (in [0, 1], whatever the mode; independent of
    ``similarity_top_k``), and ``normalize_scores=True`` makes that share the score, so
    ``SimilarityPostprocessor(similarity_cutoff=0.2)`` keeps the documents holding at least a fifth of it.

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
        normalize_scores: bool = False,
    ) -> None:
        if similarity_top_k < 1:
            raise ValueError("similarity_top_k must be >= 1")
        if not isinstance(generator, ClueGenerator):
            raise TypeError(f"generator must be a ClueGenerator, got {type(generator).__name__}")
        self.bound = generator.bind(kb)  # TokenizerMismatchError names both tokenizers
        self.generator = generator
        self.kb = kb
        self.docstore = docstore
        self.similarity_top_k = similarity_top_k
        self.tagger = tagger
        self.batch_window_ms, self.max_batch = batch_window_ms, max_batch
        self.normalize_scores = normalize_scores
        self._batcher = None
        if batch_window_ms is not None:
            from gemkr_llamaindex.llamaindex.batching import MicroBatcher

            self._batcher = MicroBatcher(self.bound.generate_prepared, batch_window_ms, max_batch)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    # ------------------------------------------------------------------ built, persisted, loaded
    @classmethod
    def from_defaults(
        cls,
        nodes: Sequence[BaseNode] | None = None,
        kb: Any = None,
        *,
        generator: ClueGenerator,
        docstore: Any = None,
        kb_dir: str | Path | None = None,
        similarity_top_k: int = 5,
        **kwargs: Any,
    ) -> GeMKRRetriever:
        """A retriever over ``nodes`` (a KB is built from them with the generator's tokenizer, in ``kb_dir``
        or once in the cache (:func:`gemkr_llamaindex.kb_cache.cached_kb`), and they become the docstore)
        or over an existing ``kb``: exactly one."""
        if (nodes is None) == (kb is None):
            raise ValueError("GeMKRRetriever.from_defaults takes exactly one of nodes= (a KB is built from them) or kb=")
        if nodes is not None:
            from llama_index.core.storage.docstore import SimpleDocumentStore

            from gemkr_llamaindex.kb import KnowledgeBase
            from gemkr_llamaindex.kb_cache import cached_kb

            nodes = list(nodes)
            kb = (cached_kb(nodes, generator.tokenizer, show_progress=False) if kb_dir is None
                  else KnowledgeBase.build(nodes, generator.tokenizer, kb_dir))
            if docstore is None:
                docstore = SimpleDocumentStore()
                docstore.add_documents(nodes)
        return cls(generator, kb, docstore=docstore, similarity_top_k=similarity_top_k, **kwargs)

    def persist(self, persist_dir: str | Path) -> None:
        """Write the KB, the docstore and ``retriever.json`` (arguments and the generator's spec: where its
        model is, a fingerprint, decoding settings) to ``persist_dir``; see :mod:`~gemkr_llamaindex.llamaindex.persist`."""
        from gemkr_llamaindex.llamaindex.persist import persist_retriever

        persist_retriever(self, persist_dir)

    @classmethod
    def from_persist_dir(cls, persist_dir: str | Path, generator: ClueGenerator | None = None,
                         **kwargs: Any) -> GeMKRRetriever:
        """The retriever :meth:`persist` wrote, its generator rebuilt from the recorded spec (a missing or
        changed model is an error) unless ``generator=`` is given; ``kwargs`` override constructor arguments
        (a ``tagger`` is a callable and is not persisted: pass it again)."""
        from gemkr_llamaindex.llamaindex.persist import load_retriever

        return load_retriever(cls, persist_dir, generator, **kwargs)

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
        if not isinstance(node, TextNode):  # a Document: since LlamaIndex 0.14 not a TextNode, and NodeWithScore.text
            # (the stock RetrieverEvaluator reads it) refuses anything else
            return TextNode(id_=node.node_id, text=node.get_content(), metadata=copy.deepcopy(node.metadata),
                            excluded_llm_metadata_keys=list(node.excluded_llm_metadata_keys),
                            excluded_embed_metadata_keys=list(node.excluded_embed_metadata_keys),
                            relationships=copy.deepcopy(node.relationships))
        return node.model_copy(deep=True)

    def results(self, queries: Sequence[QueryBundle | str], stats: SearchStats | None = None) -> list[QueryResult]:
        """The raw decoding results (every clue, every document) for many queries."""
        return self.bound.generate([self._bundle(q) for q in queries], stats=stats)

    def retrieve_batch(self, queries: Sequence[QueryBundle | str]) -> list[list[NodeWithScore]]:
        """Retrieve for many queries with batched decoding (evaluation throughput)."""
        return [self._hits(res) for res in self.results(queries)]

    def _hits(self, res: QueryResult) -> list[NodeWithScore]:
        """The top-k documents as nodes carrying their clues, evidence (evidence scorings) and softmax share
        of the scores of every document ``res`` reached (the score itself with ``normalize_scores``)."""
        shares = softmax([float(d.score) for d in res.docs])
        hits = []
        for doc, share in zip(res.docs[: self.similarity_top_k], shares):
            node = self._node_for(doc.doc_id, doc.doc_index)
            node.metadata[CLUES_KEY] = [
                {"text": c.text, "score": round(c.score, 6), "logprob": round(c.logprob, 6)} for c in doc.clues
            ]
            node.metadata[SHARE_KEY] = share
            added = [CLUES_KEY, SHARE_KEY]
            if doc.evidence:  # evidence scoring: the n-grams that scored the document, largest share first
                node.metadata[EVIDENCE_KEY] = [e.to_dict() for e in sorted(doc.evidence, key=lambda e: -e.contribution)]
                added.append(EVIDENCE_KEY)
            for keys in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
                keys.extend(k for k in added if k not in keys)
            hits.append(NodeWithScore(node=node, score=share if self.normalize_scores else float(doc.score)))
        return hits

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._batcher is None:
            return self.retrieve_batch([query_bundle])[0]
        bundle = self._bundle(query_bundle)
        (prepared,) = self.bound.prepare([bundle])  # a bad query fails its own call, never its batch-mates'
        return self._hits(self._batcher(prepared))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # decoding is CPU/GPU-bound: run it in a worker thread so the event loop stays free; every call
        # builds its own decoding state, so concurrent calls equal sequential ones
        return await asyncio.to_thread(self._retrieve, query_bundle)
