"""Prompt assembly: the instruction template's text, tokenized, with the visual tokens spliced in.

The template renders ``before`` + [visual slot] + ``after`` (``model.template``). Prompts are
left-padded to a common length so the clue that follows starts at the same column for every row; the
attention mask hides padding and empty object slots, and positions follow the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gemkr_llamaindex.model.template import InstructionTemplate


@dataclass
class PromptEmbeds:
    """The left-padded multimodal prompt: feed ``inputs_embeds`` + ``attention_mask`` to the LLM."""

    inputs_embeds: torch.Tensor  # (B, P, H)
    attention_mask: torch.Tensor  # (B, P) long, 0 on padding and on empty object slots

    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(1) - 1).clamp(min=0)

    def __len__(self) -> int:
        return self.inputs_embeds.shape[0]


def left_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one left-padded (B, L) id tensor and its 0/1 mask (the prompt side of a batch: every
    row's next token then sits in the same column)."""
    length = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, length - len(r):] = 1
    return ids.to(device), mask.to(device)


def right_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one right-padded (B, L) id tensor and its 0/1 mask (the clue side of a batch)."""
    if any(len(r) == 0 for r in rows):
        raise ValueError("empty clue: every target needs at least one token")
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


class PromptBuilder:
    """Tokenizes the template around the visual slot and splices visual tokens into the embeddings."""

    def __init__(self, template: InstructionTemplate, tokenizer, image_slot: bool) -> None:
        self.template, self.tokenizer, self.image_slot = template, tokenizer, image_slot

    def piece(self, question: str, tags: str | None) -> tuple[list[int], list[int]]:
        """The token ids before and after the visual slot (BOS included before) of one query."""
        before, after = self.template.split(question, tags, self.image_slot)
        return self.tokenizer(before).input_ids, self.tokenizer(after, add_special_tokens=False).input_ids

    def pieces(self, questions: Sequence[str], tags: Sequence[str | None]) -> list[tuple[list[int], list[int]]]:
        """Per query, the token ids before and after the visual slot (BOS included before)."""
        return [self.piece(q, t) for q, t in zip(questions, tags)]

    def lengths(self, questions: Sequence[str], tags: Sequence[str | None], n_visual: int) -> list[int]:
        """Prompt length in positions per query (visual slots included), without building any tensor."""
        return [len(b) + n_visual + len(a) for b, a in self.pieces(questions, tags)]

    def assemble(self, embed: torch.nn.Module, pieces: Sequence[tuple[Sequence[int], Sequence[int]]],
                 vis_tokens: torch.Tensor | None, vis_mask: torch.Tensor | None) -> PromptEmbeds:
        """``before`` + visual tokens (B, V, H; hidden where ``vis_mask`` is False) + ``after``, left-padded;
        ``pieces`` are each query's ``(before, after)`` ids (:meth:`piece`)."""
        n_vis = 0 if vis_tokens is None else vis_tokens.shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = left_pad([[*b, *([pad] * n_vis), *a] for b, a in pieces], pad)
        length = ids.shape[1]
        is_vis = torch.zeros(len(pieces), length, dtype=torch.bool)
        for i, (_, a) in enumerate(pieces):
            end = length - len(a)  # the slot sits just before ``after``
            is_vis[i, end - n_vis : end] = True
        device = embed.weight.device
        ids, mask, is_vis = ids.to(device), mask.bool().to(device), is_vis.to(device)
        embeds = embed(ids)
        if n_vis:
            mask[is_vis] = vis_mask.reshape(-1)  # hide empty object slots
            embeds = embeds.masked_scatter(is_vis.unsqueeze(-1), vis_tokens.to(embeds.dtype))  # row-major order
        return PromptEmbeds(embeds, mask.long())
