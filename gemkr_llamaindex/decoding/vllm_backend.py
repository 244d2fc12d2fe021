"""vLLM backend (extra ``[vllm]``, GPU only) for :class:`~gemkr_llamaindex.decoding.ConstrainedBeamSearch`.

Written against vLLM 0.33 and UNTESTED on a GPU with vLLM: none was available when it was written. Tested on
CPU (tests/test_vllm_backend.py): the KB logits transformation (kb_logits), the per-request processor callable,
the row bookkeeping and prompt handling of :class:`TopLogprobsBackend`, and that a search over an engine that
returns only the top-N processed log-probs gives the same clues and scores as the HF backend. Checked once by
hand against the vLLM 0.33 wheel's Python modules on CPU: both processor loaders and validators, both runner
interfaces, and the V1 sampler, SamplingParams and output types driven by :class:`VLLMBackend`.

Design. vLLM is used as a "next-token log-prob server": every search step submits one request per live row
(prompt embeddings + the embeddings of the row's generated tokens, ``max_tokens=1``), prefix caching reuses
the KV of the shared prefix, and each request carries its KB-allowed tokens in ``SamplingParams.extra_args``.
The custom logits processor :data:`PROCESSOR_FQCN` applies :func:`~.kb_logits.mass_preserving_mask`, so with
``logprobs_mode="processed_logprobs"`` the returned log-probs are the paper's masked, *unrenormalised* ones
(proof in kb_logits). The backend drops the sink and returns dense -inf rows holding the top
``logprobs_needed(config)`` entries, which is all diverse beam search can use, in both constraint modes.

vLLM is imported lazily: importing this module never imports vLLM.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gemkr_llamaindex.decoding.kb_logits import (
    BackendRows,
    allowed_tokens,
    choose_sink,
    dense_logprobs,
    logprobs_needed,
    mass_preserving_mask,
)

INSTALL_HINT = "the vLLM backend needs vLLM: pip install 'gemkr-llamaindex[vllm]' on a CUDA machine"
EXTRA_KEY = "gemkr_kb"  # SamplingParams.extra_args key: {"allowed": [ids], "sink": id | None}
_PROCESSOR_NAME = "KBMaskLogitsProcessor"
PROCESSOR_FQCN = f"{__name__}:{_PROCESSOR_NAME}"
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted max_lora_rank values (and 1)


def _require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


class RequestKBMask:
    """One request's KB mask, as the per-request callable ``fn(output_ids, logits_row) -> logits_row``."""

    def __init__(self, allowed: Sequence[int], sink: int | None) -> None:
        self.allowed, self.sink = allowed, sink
        self._ids: torch.Tensor | None = None

    def __call__(self, output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        if self._ids is None or self._ids.device != logits.device:
            self._ids = torch.as_tensor(self.allowed, dtype=torch.long, device=logits.device)
        return mass_preserving_mask(logits, self._ids, self.sink)

    @staticmethod
    def from_params(params: Any) -> RequestKBMask | None:
        args = (getattr(params, "extra_args", None) or {}).get(EXTRA_KEY)
        if args is None:
            return None
        if not isinstance(args, dict) or not {"allowed", "sink"} <= set(args):
            raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be a dict with 'allowed' (token ids) and 'sink'")
        return RequestKBMask(args["allowed"], args["sink"])


def _processor_class() -> type:
    """The logits processor, built on first use. It implements both of vLLM 0.33's interfaces, so it loads
    whichever model runner vLLM picks: Model Runner V2 (``add_request`` / ``apply(logits, ctx)``, the default)
    and the V1 runner's per-request ``AdapterLogitsProcessor`` (``VLLM_USE_V2_MODEL_RUNNER=0``)."""
    _require_vllm()
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    try:
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
        bases: tuple[type, ...] = (AdapterLogitsProcessor, V2LogitsProcessor)
    except ImportError:  # vLLM without Model Runner V2 processors
        bases = (AdapterLogitsProcessor,)

    class KBMaskLogitsProcessor(*bases):
        """vLLM logits processor applying each request's KB mask (``extra_args[EXTRA_KEY]``)."""

        def __init__(self, vllm_config, *args) -> None:  # V1: (config, device, pin_memory); V2: (config, req_states)
            AdapterLogitsProcessor.__init__(self, vllm_config, None, False)
            self.slots: dict[int, RequestKBMask] = {}

        @classmethod
        def validate_params(cls, params) -> None:
            RequestKBMask.from_params(params)

        def is_argmax_invariant(self) -> bool:
            return False

        def new_req_logits_processor(self, params) -> RequestKBMask | None:  # V1 runner
            return RequestKBMask.from_params(params)

        def add_request(self, req_idx: int, params) -> bool:  # V2: slots are recycled, so always overwrite
            mask = RequestKBMask.from_params(params)
            if mask is None:
                self.slots.pop(req_idx, None)
            else:
                self.slots[req_idx] = mask
            return mask is not None

        def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
            if ctx is None:  # V1 runner: the per-request callables kept by AdapterLogitsProcessor
                return AdapterLogitsProcessor.apply(self, logits)
            if not self.slots:
                return logits
            # Rows are requests unless speculative decoding expands them; the host mapping avoids a device sync.
            same = logits.shape[0] == len(ctx.idx_mapping_np)
            row_slots = ctx.idx_mapping_np.tolist() if same else ctx.expanded_idx_mapping.tolist()
            for row, slot in enumerate(row_slots):
                if (mask := self.slots.get(slot)) is not None:
                    logits[row] = mask((), logits[row])
            return logits

    KBMaskLogitsProcessor.__module__ = __name__  # importable (and picklable) as PROCESSOR_FQCN
    KBMaskLogitsProcessor.__qualname__ = _PROCESSOR_NAME
    return KBMaskLogitsProcessor


def __getattr__(name: str) -> Any:
    # vLLM loads the processor by PROCESSOR_FQCN (also in its engine process): build it on first access.
    if name == _PROCESSOR_NAME:
        globals()[name] = cls = _processor_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unpad_prompts(prompts: Any) -> list[torch.Tensor | list[int]]:
    """Per prompt, its embeddings (L, H) on CPU or its token ids, without padding and hidden slots.

    Dropping masked positions is what the HF backend's attention mask and mask-following positions amount to.
    """
    keep = prompts.attention_mask.bool().cpu()
    if prompts.inputs_embeds is not None:
        x = prompts.inputs_embeds.detach().cpu()
        return [x[i][keep[i]] for i in range(x.shape[0])]
    ids = prompts.input_ids.cpu()
    return [ids[i][keep[i]].tolist() for i in range(ids.shape[0])]


class TopLogprobsBackend:
    """A :class:`~.beam_search.LogProbBackend` over an engine that returns each row's top-N KB-masked
    log-probs. Subclasses implement :meth:`_top`; everything else (rows, sinks, dense rows) is here. The
    search hands over each call's row states; the KB's END continuation is allowed as ``end_token_id``.
    One object per search (it holds that search's rows)."""

    masks_in_engine = True  # the search starts anchored and free groups on rows of their own

    def __init__(self, kb: Any, vocab_size: int, num_logprobs: int,
                 embed_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 end_token_id: int | None = None) -> None:
        self.kb, self.vocab_size, self.num_logprobs = kb, int(vocab_size), int(num_logprobs)
        self.embed_tokens, self.end_token_id = embed_tokens, end_token_id
        self.rows = BackendRows()
        self._prompts: list[torch.Tensor | list[int]] = []

    def start(self, prompts: Any, states: np.ndarray | None = None) -> torch.Tensor:
        self._prompts = unpad_prompts(prompts)
        if self._prompts and isinstance(self._prompts[0], torch.Tensor) and self.embed_tokens is None:
            raise ValueError("embedding prompts need embed_tokens= (the LLM's input embedding layer)")
        self.rows.start(len(self._prompts))
        return self._step(states)

    def advance(self, parents: torch.Tensor, tokens: torch.Tensor, states: np.ndarray | None = None) -> torch.Tensor:
        self.rows.advance(parents.tolist(), tokens.tolist())
        return self._step(states)

    def row_input(self, r: int) -> torch.Tensor | list[int]:
        """Row ``r``'s whole input: its prompt followed by its generated tokens (as embeddings if embedded)."""
        prompt, generated = self._prompts[self.rows.prompt[r]], list(self.rows.tokens[r])
        if not isinstance(prompt, torch.Tensor):
            return prompt + generated
        if not generated:
            return prompt
        weight = getattr(self.embed_tokens, "weight", None)
        ids = torch.tensor(generated, dtype=torch.long, device=weight.device if weight is not None else "cpu")
        with torch.no_grad():
            tail = self.embed_tokens(ids).detach().to("cpu", prompt.dtype)
        return torch.cat([prompt, tail])

    def _step(self, states: np.ndarray | None) -> torch.Tensor:
        if states is None or len(states) != len(self.rows):
            raise ValueError("this backend applies the KB constraint inside the engine: every call needs the KB "
                             "states of its rows (ConstrainedBeamSearch passes them)")
        allowed = allowed_tokens(self.kb, states, self.end_token_id)
        sinks = [choose_sink(a, self.vocab_size) for a in allowed]
        return dense_logprobs(self._top(allowed, sinks), self.vocab_size, sinks)

    def _top(self, allowed: list[np.ndarray], sinks: list[int | None]) -> list[dict[int, float]]:
        """Per row: {token: processed log-prob} for its top ``num_logprobs`` tokens after the KB mask."""
        raise NotImplementedError


class VLLMBackend(TopLogprobsBackend):
    """One search's next-token log-probs from a ``vllm.LLM`` (made by :class:`VLLMServer`)."""

    def __init__(self, llm: Any, kb: Any, *, vocab_size: int, num_logprobs: int,
                 embed_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None, lora_request: Any = None,
                 end_token_id: int | None = None) -> None:
        _require_vllm()
        super().__init__(kb, vocab_size, num_logprobs, embed_tokens, end_token_id)
        self.llm, self.lora_request = llm, lora_request

    def _top(self, allowed: list[np.ndarray], sinks: list[int | None]) -> list[dict[int, float]]:
        from vllm import SamplingParams

        prompts, params = [], []
        for r, (a, sink) in enumerate(zip(allowed, sinks)):
            x = self.row_input(r)
            prompts.append({"prompt_embeds": x} if isinstance(x, torch.Tensor) else {"prompt_token_ids": x})
            # Greedy: one token whose choice is irrelevant; the processed log-probs are what we read.
            params.append(SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.num_logprobs, detokenize=False,
                                         extra_args={EXTRA_KEY: {"allowed": a.tolist(), "sink": sink}}))
        outs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        return [{int(t): float(lp.logprob) for t, lp in o.outputs[0].logprobs[0].items()} for o in outs]


class VLLMServer:
    """A vLLM engine shared by every search: calling it with a KB makes one search's :class:`VLLMBackend`.

    Pass it as ``ClueGenerator(..., backend=server)``; the engine (heavy, on the GPU) is built once, each
    search gets its own rows, so concurrent retrievals never share per-search state.
    """

    def __init__(self, llm: Any, *, vocab_size: int, num_logprobs: int,
                 embed_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None, lora_request: Any = None) -> None:
        self.llm, self.vocab_size, self.num_logprobs = llm, vocab_size, num_logprobs
        self.embed_tokens, self.lora_request = embed_tokens, lora_request

    def __call__(self, kb: Any, end_token_id: int | None = None) -> VLLMBackend:
        return VLLMBackend(self.llm, kb, vocab_size=self.vocab_size, num_logprobs=self.num_logprobs,
                           embed_tokens=self.embed_tokens, lora_request=self.lora_request, end_token_id=end_token_id)

    @staticmethod
    def create_llm(model: str | Path, *, num_logprobs: int, lora_rank: int | None = None, **llm_kwargs: Any) -> Any:
        """A ``vllm.LLM`` set up for this backend; ``llm_kwargs`` go to ``vllm.LLM`` (e.g. ``dtype``,
        ``gpu_memory_utilization``, which must leave room for the HF model that builds the prompts)."""
        _require_vllm()
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": str(model), "enable_prompt_embeds": True, "logits_processors": [PROCESSOR_FQCN],
            "logprobs_mode": "processed_logprobs", "max_logprobs": max(num_logprobs, 20), "enable_prefix_caching": True,
        }
        if lora_rank:
            rank = next((r for r in _LORA_RANKS if r >= lora_rank), None)
            if rank is None:
                raise ValueError(f"LoRA rank {lora_rank} exceeds vLLM's largest max_lora_rank {_LORA_RANKS[-1]}")
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        return LLM(**{**kwargs, **llm_kwargs})

    @classmethod
    def from_gemkr(cls, model: Any, config: Any = None, adapter_dir: str | Path | None = None,
                   **llm_kwargs: Any) -> VLLMServer:
        """A server for a trained GeMKRModel: vLLM loads the base LLM named in its config plus its LoRA
        adapter, exported to ``adapter_dir`` (a temporary folder when None)."""
        _require_vllm()
        from vllm.lora.request import LoRARequest

        from gemkr_llamaindex.assets import resolve_model
        from gemkr_llamaindex.decoding.config import DecodingConfig

        adapter = export_lora_adapter(model, adapter_dir or tempfile.mkdtemp(prefix="gemkr-lora-"))
        n = logprobs_needed(config or DecodingConfig())
        llm = cls.create_llm(resolve_model(model.config.llm), num_logprobs=n, lora_rank=model.config.lora_r, **llm_kwargs)
        embed = model.llm.get_input_embeddings()
        return cls(llm, vocab_size=embed.num_embeddings, num_logprobs=n, embed_tokens=embed,
                   lora_request=LoRARequest("gemkr", 1, str(adapter)))


def export_lora_adapter(model: Any, out_dir: str | Path) -> Path:
    """Write the LoRA adapter of a GeMKRModel (or a peft model) as peft's ``adapter_config.json`` +
    ``adapter_model.safetensors``, the folder a vLLM ``LoRARequest`` points to."""
    from peft import PeftModel

    peft_model = getattr(model, "llm", model)
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"{type(peft_model).__name__} carries no peft LoRA adapter to export (expected a PeftModel)")
    out = Path(out_dir)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    return out
