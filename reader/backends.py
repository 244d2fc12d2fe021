"""Hugging Face generation backends for the reader: a text-only causal LM and a vision-language model.

Both answer one question: "given a system prompt, a user text and zero or more images, what does the
model generate?" Decoding is greedy and deterministic (``do_sample=False``, one beam). Weights load
in fp32 on CPU and bf16 on GPU unless told otherwise. transformers and torch are imported here only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The library's one model resolver ("smollm2" = the packaged model, a .gguf file converted once, a checked
# local folder, or a hub id), re-exported for the reader.
from gemkr_llamaindex.assets import resolve_model as resolve_model

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

SPAN_BEAMS = 5  # beams of span-constrained answers (reader.spans)


def _load_error(model: str, exc: Exception) -> OSError:
    if Path(model).is_dir():
        return OSError(
            f"cannot load the model in folder {model!r} ({type(exc).__name__}: {exc}); it must be a folder "
            "written by save_pretrained() with a config transformers recognises"
        )
    return OSError(
        f"cannot load model {model!r}: it is not a local folder and transformers could not load it as a "
        f"hub id ({type(exc).__name__}: {exc}). Offline, only models already in the Hugging Face cache or "
        "saved to a local folder can be used."
    )


def is_vision_language(model_path: str) -> bool:
    """True when the model's config has a vision tower (LLaVA, Idefics, Qwen2-VL, SmolVLM, ...)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise _load_error(model_path, exc) from exc
    return getattr(config, "vision_config", None) is not None


def pick_device_dtype(device: str | None, dtype: str | None) -> tuple[Any, Any]:
    """``(torch.device, torch.dtype)``: CUDA + bf16 when available, else CPU + fp32."""
    import torch

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'")
    else:
        torch_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, torch_dtype


@dataclass
class Generation:
    """What one call produced: the new text and the exact prompt string the model saw."""

    text: str
    prompt: str
    num_input_tokens: int
    num_new_tokens: int


class _Backend:
    kind = "base"

    def __init__(self, model_path: str, device: Any, dtype: Any, max_new_tokens: int) -> None:
        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generate() at a time per model; aquery runs in threads
        self.model: Any = None

    @property
    def context_window(self) -> int:
        config = getattr(self.model, "config", None)
        text_config = getattr(config, "text_config", None) or config
        return int(getattr(text_config, "max_position_embeddings", 2048) or 2048)

    def _generation_config(self, tokenizer: Any) -> Any:
        from transformers import GenerationConfig

        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        if isinstance(pad, list):
            pad = pad[0]
        # Greedy and deterministic: the model's own sampling settings are deliberately not inherited.
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
        )

    def _check_length(self, num_input: int) -> None:
        if num_input + self.max_new_tokens > self.context_window:
            raise ValueError(
                f"prompt of {num_input} tokens + {self.max_new_tokens} new tokens exceeds the model's context "
                f"window ({self.context_window}); retrieve fewer passages or lower max_passage_chars"
            )

    def _run(self, inputs: dict[str, Any], tokenizer: Any, decode: Any, spans: Sequence[str] | None = None
             ) -> tuple[str, int]:
        """Greedy generation; with ``spans`` (passage texts) the answer can only be a span of them
        (:class:`~reader.spans.SpanTrie` as ``prefix_allowed_tokens_fn``)."""
        import torch

        n_in = int(inputs["input_ids"].shape[1])
        self._check_length(n_in)
        config = self._generation_config(tokenizer)
        trie = None
        if spans is not None:
            from .spans import SpanTrie

            trie = SpanTrie(spans, tokenizer, config.eos_token_id) or None
        with self._lock, torch.inference_mode():
            if trie is not None and set(inputs) <= {"input_ids", "attention_mask"}:
                from .spans import span_beam_search  # the prompt once, beams sharing its cache

                new = torch.tensor(span_beam_search(self.model, inputs["input_ids"], trie, SPAN_BEAMS,
                                                    self.max_new_tokens), dtype=torch.long)
                return decode(new), int(new.shape[0])
            extra: dict[str, Any] = {}
            if trie is not None:  # pictures too (a vision-language model): transformers' beam search
                config.num_beams = SPAN_BEAMS
                extra["prefix_allowed_tokens_fn"] = lambda batch_id, ids: trie.allowed(ids[n_in:].tolist())
            out = self.model.generate(**inputs, generation_config=config, **extra)
        new = out[0, n_in:]
        return decode(new), int(new.shape[0])

    def generate(
        self, system: str | None, text: str, images: list[Image.Image], history: Sequence[dict[str, str]],
        spans: Sequence[str] | None = None,
    ) -> Generation:
        raise NotImplementedError


class CausalLMBackend(_Backend):
    """Any ``AutoModelForCausalLM``; text in, text out, rendered with the tokenizer's chat template."""

    kind = "text"

    def __init__(self, model_path: str, device: Any, dtype: Any, max_new_tokens: int) -> None:
        super().__init__(model_path, device, dtype, max_new_tokens)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise _load_error(model_path, exc) from exc
        self.model = model.to(device).eval()

    def render(self, system: str | None, text: str, history: Sequence[dict[str, str]] = ()) -> str:
        """The prompt string: the chat template if the tokenizer has one, else a plain layout."""
        messages = ([{"role": "system", "content": system}] if system else []) + list(history)
        messages.append({"role": "user", "content": text})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def generate(
        self, system: str | None, text: str, images: list[Image.Image], history: Sequence[dict[str, str]],
        spans: Sequence[str] | None = None,
    ) -> Generation:
        if images:
            raise ValueError("CausalLMBackend is text-only; turn images into hints before calling it")
        prompt = self.render(system, text, history)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        # A chat template already writes BOS and the role markers; adding special tokens would double BOS.
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not has_template).to(
            self.device
        )
        decoded, n_new = self._run(
            dict(inputs), self.tokenizer, lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), spans
        )
        return Generation(decoded.strip(), prompt, int(inputs["input_ids"].shape[1]), n_new)


class VisionLanguageBackend(_Backend):
    """Any ``AutoModelForImageTextToText`` with its ``AutoProcessor``; images go first in the user turn."""

    kind = "vlm"

    def __init__(self, model_path: str, device: Any, dtype: Any, max_new_tokens: int) -> None:
        super().__init__(model_path, device, dtype, max_new_tokens)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(model_path)
            model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise _load_error(model_path, exc) from exc
        self.model = model.to(device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)

    def render(
        self, system: str | None, text: str, num_images: int, history: Sequence[dict[str, str]] = ()
    ) -> str:
        """The prompt string from the processor's chat template (image placeholders before the text)."""
        from jinja2 import TemplateError

        user = {
            "role": "user",
            "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}],
        }
        past = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in history]
        template = getattr(self.processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None
        )
        if template:
            if system:
                conversation = [
                    {"role": "system", "content": [{"type": "text", "text": system}]},
                    *past,
                    user,
                ]
                try:
                    return self.processor.apply_chat_template(
                        conversation, add_generation_prompt=True, tokenize=False
                    )
                except TemplateError:
                    pass  # some templates reject a system turn: fold it into the user text below
                user["content"][-1]["text"] = f"{system}\n\n{text}"
            return self.processor.apply_chat_template(
                [*past, user], add_generation_prompt=True, tokenize=False
            )
        image_token = getattr(self.processor, "image_token", None) or "<image>"
        head = f"{system}\n\n" if system else ""
        return f"{image_token * num_images}\n{head}{text}\nAnswer:"

    def processor_inputs(self, prompt: str, images: list[Image.Image]) -> dict[str, Any]:
        """Tensors for ``generate`` (token ids with the image tokens expanded, pixel values in model dtype)."""
        kwargs: dict[str, Any] = {"text": prompt, "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        inputs = dict(self.processor(**kwargs).to(self.device))
        for key, value in inputs.items():
            if key.startswith("pixel_values") and value.is_floating_point():
                inputs[key] = value.to(self.dtype)
        return inputs

    def generate(
        self, system: str | None, text: str, images: list[Image.Image], history: Sequence[dict[str, str]],
        spans: Sequence[str] | None = None,
    ) -> Generation:
        prompt = self.render(system, text, len(images), history)
        inputs = self.processor_inputs(prompt, images)
        decoded, n_new = self._run(
            inputs, self.tokenizer, lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), spans
        )
        return Generation(decoded.strip(), prompt, int(inputs["input_ids"].shape[1]), n_new)


def load_backend(
    model: str,
    backend: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    max_new_tokens: int = 20,
) -> _Backend:
    """Load ``model`` (already resolved) as a text-only (``"text"``) or vision-language (``"vlm"``) backend."""
    if backend not in {"auto", "text", "vlm"}:
        raise ValueError(f"backend must be 'auto', 'text' or 'vlm', got {backend!r}")
    dev, torch_dtype = pick_device_dtype(device, dtype)
    if backend == "auto":
        backend = "vlm" if is_vision_language(model) else "text"
    cls = VisionLanguageBackend if backend == "vlm" else CausalLMBackend
    return cls(model, dev, torch_dtype, max_new_tokens)
