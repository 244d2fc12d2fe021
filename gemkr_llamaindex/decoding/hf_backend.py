"""Hugging Face backend: KV-cached decoding of a causal LM (plain, or with LoRA merged or not).

Prompts come as input embeddings (the GeMKR multimodal prompt) or token ids, left-padded with an
attention mask; positions follow the mask so padding and hidden slots take no position. Beams reuse the
prompt's KV cache: each step reorders the cache rows to the surviving beams and feeds one token each.
Only the last position's logits are computed (``logits_to_keep=1``), in the prefill and in every step.

One ``HFBackend`` holds one search's cache: create one per search (``ClueGenerator`` does), never share
one between threads. The model itself is read-only and may be shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gemkr_llamaindex.transformers_compat import cache_kwargs, output_cache


@dataclass
class Prompts:
    """A left-padded batch of prompts: either ``inputs_embeds`` (B, P, H) or ``input_ids`` (B, P)."""

    attention_mask: torch.Tensor  # (B, P)
    inputs_embeds: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.inputs_embeds is None) == (self.input_ids is None):
            raise ValueError("give exactly one of inputs_embeds and input_ids")


class HFBackend:
    """Next-token log-probabilities of a transformers causal LM for the beams of a search."""

    def __init__(self, model: torch.nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        """``autocast_dtype``: None = bf16 autocast on a GPU, none on a CPU; ``torch.float32`` = never."""
        self.model = model
        self.device = next(model.parameters()).device
        if autocast_dtype is None and self.device.type == "cuda":
            autocast_dtype = torch.bfloat16
        self.autocast_dtype = autocast_dtype
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._next_pos: torch.Tensor | None = None

    def _forward(self, **kwargs) -> torch.Tensor:
        enabled = self.autocast_dtype not in (None, torch.float32)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
            out = self.model(use_cache=True, logits_to_keep=1, **cache_kwargs(self.model, self._cache), **kwargs)
        self._cache = output_cache(out)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def start(self, prompts: Prompts, states: np.ndarray | None = None) -> torch.Tensor:
        self._cache = None
        mask = prompts.attention_mask.to(self.device).long()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = (
            {"inputs_embeds": prompts.inputs_embeds.to(self.device)}
            if prompts.inputs_embeds is not None
            else {"input_ids": prompts.input_ids.to(self.device)}
        )
        logp = self._forward(attention_mask=mask, position_ids=pos, **inputs)
        self._mask = mask
        self._next_pos = pos[:, -1] + 1
        return logp

    def advance(self, parents: torch.Tensor, tokens: torch.Tensor, states: np.ndarray | None = None) -> torch.Tensor:
        if self._cache is None:
            raise RuntimeError("call start() before advance()")
        parents = parents.to(self.device)
        self._cache.reorder_cache(parents)
        mask = torch.cat([self._mask[parents], torch.ones(len(parents), 1, dtype=torch.long, device=self.device)], 1)
        pos = self._next_pos[parents]
        logp = self._forward(input_ids=tokens.to(self.device)[:, None], attention_mask=mask, position_ids=pos[:, None])
        self._mask, self._next_pos = mask, pos + 1
        return logp
