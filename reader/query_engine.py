"""``VQAQueryEngine``: retriever + reader, sending the *query image* to the reader first.

LlamaIndex's ``CustomQueryEngine`` keeps only ``query_str`` and the stock multimodal synthesiser
forwards retrieved images, not the query's; both lose what VQA needs. This engine keeps the whole
``QueryBundle`` (``image_path`` included) for the retriever, and builds one user message
``[ImageBlock(query image), TextBlock(instructions, passages, hints, question)]`` for the reader.
The response's ``source_nodes`` are the retrieved ``NodeWithScore``s unchanged, so whatever the
retriever stored in node metadata (GeMKR's generated clues, for instance) comes along.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.llms.llm import LLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.mixin import PromptDictType, PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from .images import load_image
from .postprocess import short_answer
from .prompt import DEFAULT_VQA_TEMPLATE, build_vqa_message, check_question


class VQAQueryEngine(BaseQueryEngine):
    """Answer image + question queries with any LlamaIndex retriever and any chat LLM.

    Args:
        retriever: any ``BaseRetriever``; it receives the ``QueryBundle`` as given (with ``image_path``).
        reader: a chat LLM that accepts ``ImageBlock``s; default ``VQAReader()`` (packaged SmolLM2).
        top_k: keep at most this many retrieved nodes (the retriever's own top-k still applies first).
        tagger: image (PIL) -> hints ("tiger cat, EMT") written into the prompt for every reader.
        template: prompt text with ``{passages}``, ``{hints}`` and ``{question}``.
        max_passage_chars: each passage is clipped to this many characters in the prompt.
        max_words / lowercase: short-answer post-processing (see :func:`reader.postprocess.short_answer`).
        retrieve_with_hints: append the hints to the retriever's query text too (helps text retrievers
            such as BM25, which cannot see the image; the paper likewise gives its text baselines captions).
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        reader: LLM | None = None,
        top_k: int | None = 5,
        tagger: Callable[[Any], Any] | None = None,
        template: str = DEFAULT_VQA_TEMPLATE,
        max_passage_chars: int = 600,
        max_words: int = 3,
        lowercase: bool = False,
        retrieve_with_hints: bool = False,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever must be a llama_index BaseRetriever, got {type(retriever).__name__}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if reader is None:
            from .llm import VQAReader

            reader = VQAReader()
        if not isinstance(reader, LLM):
            raise TypeError(f"reader must be a llama_index LLM (e.g. VQAReader), got {type(reader).__name__}")
        self._retriever = retriever
        self._reader = reader
        self._top_k = top_k
        self._tagger = tagger
        self._template = self._check_template(template)
        self._max_passage_chars = max_passage_chars
        self._max_words = max_words
        self._lowercase = lowercase
        self._retrieve_with_hints = retrieve_with_hints
        super().__init__(callback_manager=callback_manager)

    @staticmethod
    def _check_template(template: str) -> str:
        missing = [v for v in ("{passages}", "{hints}", "{question}") if v not in template]
        if missing:
            raise ValueError(f"the VQA template lacks {', '.join(missing)}; it needs all three placeholders")
        return template

    @property
    def retriever(self) -> BaseRetriever:
        return self._retriever

    @property
    def reader(self) -> LLM:
        return self._reader

    # -- PromptMixin -------------------------------------------------------------------------------
    def _get_prompts(self) -> PromptDictType:
        return {"vqa_prompt": PromptTemplate(self._template)}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if "vqa_prompt" in prompts:
            self._template = self._check_template(prompts["vqa_prompt"].get_template())

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    # -- retrieval and synthesis -------------------------------------------------------------------
    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """The retriever's nodes for the bundle (image path included), cut to ``top_k``."""
        nodes = self._retriever.retrieve(query_bundle)
        return list(nodes[: self._top_k] if self._top_k is not None else nodes)

    def synthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        tags: str | Sequence[str] | None = None,
    ) -> Response:
        """Ask the reader with the query image first and the ``nodes`` as numbered passages.

        ``tags`` are the image's hints; when None they come from the engine's ``tagger`` (if any).
        """
        if tags is None:
            tags = self._hints(query_bundle)
        return self._synthesize(query_bundle, nodes, tags, additional_source_nodes)

    def _synthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        tags: str | Sequence[str] | None,
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> Response:
        image_path = query_bundle.image_path
        question = check_question(query_bundle.query_str, image_path is not None)
        message = build_vqa_message(
            question,
            image_path,
            nodes,
            tags,
            template=self._template,
            max_passage_chars=self._max_passage_chars,
        )
        chat = self._reader.chat([message])
        raw = chat.message.content or ""
        answer = short_answer(raw, question, max_words=self._max_words, lowercase=self._lowercase)
        sources = list(nodes) + list(additional_source_nodes or [])
        reader_raw = chat.raw if isinstance(chat.raw, dict) else {}
        return Response(
            response=answer,
            source_nodes=sources,
            metadata={
                "question": question,
                "image_path": str(image_path) if image_path is not None else None,
                "raw_answer": raw,
                "prompt": message.blocks[-1].text,
                "message": message,
                "hints": tags if tags is None or isinstance(tags, str) else ", ".join(tags),
                "reader_prompt": reader_raw.get("prompt"),
            },
        )

    def _hints(self, query_bundle: QueryBundle) -> str | Sequence[str] | None:
        if self._tagger is None or query_bundle.image_path is None:
            return None
        return self._tagger(load_image(query_bundle.image_path))

    def _run(self, query_bundle: QueryBundle, tags: str | Sequence[str] | None = None) -> Response:
        # Fail on an empty query or a bad image before spending time on retrieval.
        check_question(query_bundle.query_str, query_bundle.image_path is not None)
        image = load_image(query_bundle.image_path) if query_bundle.image_path is not None else None
        if tags is None and self._tagger is not None and image is not None:
            tags = self._tagger(image)
        retrieval_bundle = query_bundle
        hint_text = tags if tags is None or isinstance(tags, str) else ", ".join(tags)
        if self._retrieve_with_hints and hint_text and hint_text.strip():
            retrieval_bundle = QueryBundle(
                query_str=f"{query_bundle.query_str} {hint_text.strip()}".strip(),
                image_path=query_bundle.image_path,
                custom_embedding_strs=query_bundle.custom_embedding_strs,
                embedding=query_bundle.embedding,
            )
        return self._synthesize(query_bundle, self.retrieve(retrieval_bundle), tags)

    def _query(self, query_bundle: QueryBundle) -> Response:
        return self._run(query_bundle)

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        # Retrieval and generation are blocking CPU/GPU work: keep the event loop free.
        return await asyncio.to_thread(self._run, query_bundle)

    def ask(
        self, question: str, image_path: str | Path | None = None, tags: str | Sequence[str] | None = None
    ) -> Response:
        """Query with ``question`` about ``image_path``, optionally with already-computed ``tags`` (hints)."""
        bundle = QueryBundle(
            query_str=question or "", image_path=str(image_path) if image_path is not None else None
        )
        if tags is None:
            return self.query(bundle)  # type: ignore[return-value]
        with self.callback_manager.as_trace("query"):
            return self._run(bundle, tags)
