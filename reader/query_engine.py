"""``VQAQueryEngine``: retriever + reader, sending the *query image* to the reader first.

LlamaIndex's ``CustomQueryEngine`` keeps only ``query_str`` and the stock multimodal synthesiser
forwards retrieved images, not the query's; both lose what VQA needs. This engine turns each query
into one :class:`~gemkr_llamaindex.query.VQAQueryBundle`: the picture is decoded once, the
engine's tagger (the ``gemkr_llamaindex.tags.hint_tagger()`` contract) runs once on that decoded
picture, and the tags travel inside the bundle to the retriever (so a GeMKR retriever or a tag-aware
baseline does not tag again) and into the reader's prompt. The reader gets one user message
``[ImageBlock(query image), TextBlock(instructions, passages, hints, question)]``. The response's
``source_nodes`` are the retrieved ``NodeWithScore`` objects themselves, unchanged (whatever the
retriever stored in node metadata, GeMKR's clues for instance, comes along), even when the reader only
reads clue windows of them.
"""

from __future__ import annotations

import asyncio
import copy
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

from gemkr_llamaindex.query import VQAQueryBundle

from .images import check_image_path
from .postprocess import short_answer
from .prompt import DEFAULT_CLUE_WINDOW, DEFAULT_VQA_TEMPLATE, build_vqa_message, check_context, check_question

Tagger = Callable[[Any], "str | None"]
"""Any image input ``gemkr_llamaindex.images.load_image`` accepts -> a hint string or None; the engine
calls it with the ``LoadedImage`` it decoded (``gemkr_llamaindex.tags.hint_tagger()`` is one)."""


def _hint_text(tags: str | Sequence[str] | None) -> str | None:
    if tags is None or isinstance(tags, str):
        return tags
    return ", ".join(t.strip() for t in tags if t and t.strip())


class VQAQueryEngine(BaseQueryEngine):
    """Answer image + question queries with any LlamaIndex retriever and any chat LLM.

    Args:
        retriever: any ``BaseRetriever``; it receives the query's ``VQAQueryBundle`` (question,
            ``image_path``, the decoded picture, ``tags``).
        reader: a chat LLM that accepts ``ImageBlock``s; default ``VQAReader()`` (packaged SmolLM2).
        top_k: keep at most this many retrieved nodes (the retriever's own top-k still applies first).
        tagger: the tagger contract (``gemkr_llamaindex.tags.hint_tagger()``): image -> hint string or
            None, called once per query on the decoded picture unless the bundle already has ``tags``.
            Its hints go to the retriever (``bundle.tags``) and into the prompt for every reader; when it
            finds nothing, ``bundle.tags`` becomes "" (tagged, nothing found) so nobody tags again.
        template: prompt text with ``{passages}``, ``{hints}`` and ``{question}``.
        max_passage_chars: each passage is clipped to this many characters in the prompt.
        context: ``"passage"`` (read each passage from its start), ``"clue_window"`` (read the
            sentences around its GeMKR clues, ``node.metadata["clues"]``) or ``"evidence_window"``
            (around its clues and strongest evidence n-grams); nodes without any fall back to the passage
            head; see :mod:`reader.prompt`.
        clue_window: sentences kept on each side of a clue's sentence (default 1).
        max_words / lowercase: short-answer post-processing (see :func:`reader.postprocess.short_answer`).
        retrieve_with_hints: append the hints to the retriever's query text too (helps text retrievers
            such as a plain BM25, which read neither the image nor ``tags``; the paper likewise gives its
            text baselines captions).
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        reader: LLM | None = None,
        top_k: int | None = 5,
        tagger: Tagger | None = None,
        template: str = DEFAULT_VQA_TEMPLATE,
        max_passage_chars: int = 600,
        max_words: int = 3,
        lowercase: bool = False,
        retrieve_with_hints: bool = False,
        context: str = "passage",
        clue_window: int = DEFAULT_CLUE_WINDOW,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever must be a llama_index BaseRetriever, got {type(retriever).__name__}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        check_context(context, clue_window)
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
        self._context = context
        self._clue_window = clue_window
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

    # -- the query bundle --------------------------------------------------------------------------
    def bundle(self, query: QueryBundle | str, tags: str | Sequence[str] | None = None) -> VQAQueryBundle:
        """The query as the one ``VQAQueryBundle`` every step shares: checked, decoded once, tagged once.

        A ``VQAQueryBundle`` passed in is used (and its ``tags`` filled) as it is; a plain
        ``QueryBundle`` or string is converted. ``tags`` given here win over the bundle's and the tagger's.

        Raises:
            ValueError: empty question without an image, or an undecodable image.
            FileNotFoundError: ``image_path`` names no file.
        """
        bundle = VQAQueryBundle.of(query)
        check_question(bundle.query_str, bundle.has_image)
        image = self._decode(bundle)
        if tags is not None:
            bundle.tags = _hint_text(tags)
        elif bundle.tags is None and self._tagger is not None and image is not None:
            bundle.tags = _hint_text(self._tagger(image)) or ""
        return bundle

    @staticmethod
    def _decode(bundle: VQAQueryBundle) -> Any:
        """The bundle's picture decoded (once; cached in the bundle), with errors that name the file."""
        from gemkr_llamaindex.images import ImageLoadError

        if not bundle.has_image:
            return None
        if bundle.image_path is not None:
            check_image_path(bundle.image_path)
        try:
            return bundle.loaded_image()
        except ImageLoadError as exc:
            where = repr(str(bundle.image_path)) if bundle.image_path is not None else "(in-memory image)"
            raise ValueError(
                f"cannot decode query image {where} ({exc.reason}); "
                "it must be an image file Pillow can read (JPEG, PNG, WebP, ...)"
            ) from exc

    # -- retrieval and synthesis -------------------------------------------------------------------
    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """The retriever's nodes for the bundle (image and tags included), cut to ``top_k``."""
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

        ``tags`` are the image's hints; when None they are the bundle's, or the engine's tagger's.
        """
        return self._synthesize(self.bundle(query_bundle, tags), nodes, additional_source_nodes)

    def _synthesize(
        self,
        bundle: VQAQueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> Response:
        image_path = bundle.image_path
        question = check_question(bundle.query_str, bundle.has_image)
        message = build_vqa_message(
            question,
            image_path,
            nodes,
            bundle.tags,
            template=self._template,
            max_passage_chars=self._max_passage_chars,
            context=self._context,
            clue_window=self._clue_window,
            image=bundle.loaded_image() if image_path is None and bundle.has_image else None,
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
                "hints": bundle.tags,
                "context": self._context,
                "reader_prompt": reader_raw.get("prompt"),
                "reader_input_tokens": reader_raw.get("num_input_tokens"),
            },
        )

    def _run(self, query_bundle: QueryBundle | str, tags: str | Sequence[str] | None = None) -> Response:
        # One bundle per query; an empty query or a bad image fails here, before any retrieval.
        bundle = self.bundle(query_bundle, tags)
        retrieval_bundle = bundle
        if self._retrieve_with_hints and bundle.tags and bundle.tags.strip():
            retrieval_bundle = copy.copy(bundle)  # shares the decoded picture
            retrieval_bundle.query_str = f"{bundle.query_str} {bundle.tags.strip()}".strip()
        return self._synthesize(bundle, self.retrieve(retrieval_bundle))

    def _query(self, query_bundle: QueryBundle) -> Response:
        return self._run(query_bundle)

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        # Retrieval and generation are blocking CPU/GPU work: keep the event loop free.
        return await asyncio.to_thread(self._run, query_bundle)

    def ask(
        self, question: str, image_path: str | Path | None = None, tags: str | Sequence[str] | None = None
    ) -> Response:
        """Query with ``question`` about ``image_path``, optionally with already-computed ``tags`` (hints)."""
        bundle = VQAQueryBundle(
            query_str=question or "", image_path=str(image_path) if image_path is not None else None
        )
        if tags is None:
            return self.query(bundle)  # type: ignore[return-value]
        with self.callback_manager.as_trace("query"):
            return self._run(bundle, tags)
