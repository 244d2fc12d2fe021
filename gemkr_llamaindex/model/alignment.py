"""Multi-modal alignment (paper Eq. 7): ``H'_v = Linear([h_cls; H_R])`` into the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn


class VisualAlignment(nn.Module):
    """Maps the image token ``h_cls`` and the object features ``H_R`` to LLM input embeddings (Eq. 7).

    ``h_cls`` (B, d) and ``H_R`` (B, r, d) are stacked into 1 + r visual tokens and one shared linear layer
    projects each into the LLM hidden size. The returned mask marks real tokens: padded object slots are
    hidden from the LLM by the attention mask rather than fed as bias vectors.

    A query without a picture gets one learned embedding, ``no_image``, in place of its visual tokens
    (its object slots hidden): an input the model sees in training on text-only rows, unlike a black
    picture, which it never saw.
    """

    def __init__(self, vision_width: int, llm_hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(vision_width, llm_hidden)
        self.no_image = nn.Parameter(torch.randn(llm_hidden) * 0.02)

    def forward(
        self, h_cls: torch.Tensor, h_r: torch.Tensor, object_mask: torch.Tensor, has_image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.proj(torch.cat([h_cls.unsqueeze(1), h_r.to(h_cls.dtype)], dim=1))  # (B, 1 + r, H)
        cls_mask = torch.ones(h_cls.shape[0], 1, dtype=torch.bool, device=h_cls.device)
        mask = torch.cat([cls_mask, object_mask.to(torch.bool)], dim=1)
        if has_image is not None and not bool(has_image.all()):
            absent = ~has_image.to(torch.bool)
            tokens = tokens.clone()
            tokens[absent, 0] = self.no_image.to(tokens.dtype)
            mask = mask.clone()
            mask[absent, 1:] = False
        return tokens, mask
