"""Prompts of clue generation: prepared once per query, built into a batch's tensors.

Both kinds of model implement :class:`PromptSource`:

* :class:`TemplatePrompts`, a trained :class:`~gemkr_llamaindex.model.gemkr.GeMKRModel`: the instruction
  template (paper §Instruction Data Construction) tokenised around the visual slot, with the aligned CLIP
  [CLS] and object features spliced into the LLM's input embeddings (paper Eq. 7) when the model has a
  vision tower;
* :class:`ChatPrompts`, any instruct causal LM read zero-shot: a chat instruction holding the question and
  the visual tags (the picture reaches the model only through them).

:meth:`PromptSource.prepare` tokenises a query once: its pieces and its length in positions, which the
generator checks against the model's context before any forward pass. :meth:`PromptSource.build` turns
prepared prompts into one left-padded batch without tokenising again. The prior pass's empty query is
prepared the same way (:meth:`PromptSource.empty`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from gemkr_llamaindex.decoding import Prompts
from gemkr_llamaindex.model.prompt import PromptEmbeds, left_pad

ZERO_SHOT_SYSTEM = (
    "You are a knowledge retriever. Quote the beginning of an encyclopedia sentence that answers the "
    "question about the image."
)


@dataclass(frozen=True)
class PreparedPrompt:
    """One query's prompt, tokenised: the ids before and after the visual slot (a chat prompt has no slot:
    all of it is ``before``) and its length in positions, the slot included."""

    question: str  # as the model reads it (cut to fit the context under on_long_prompt="truncate")
    tags: str | None
    before: tuple[int, ...]
    after: tuple[int, ...]
    length: int


class PromptSource(Protocol):
    """What the generator needs from a kind of model to make its prompts."""

    def prepare(self, question: str, tags: str | None) -> PreparedPrompt:
        """Tokenise one query's prompt (once)."""

    def build(self, prepared: Sequence[PreparedPrompt], images: Sequence[Any] | None = None) -> Prompts:
        """The left-padded batch of prepared prompts (``images``: the decoded pictures, for a model that
        reads pixels)."""


class ChatPrompts:
    """Zero-shot prompts: the tokenizer's chat template (system instruction, then question and tags)."""

    def __init__(self, tokenizer: Any, system_prompt: str = ZERO_SHOT_SYSTEM) -> None:
        self.tokenizer, self.system_prompt = tokenizer, system_prompt

    def prepare(self, question: str, tags: str | None) -> PreparedPrompt:
        user = f"Question: {question.strip()}"
        if tags:
            user += f"\nVisual tags: {tags}"
        if getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
        else:
            ids = self.tokenizer(f"{self.system_prompt}\n{user}\nAnswer:").input_ids
        return PreparedPrompt(question, tags, tuple(ids), (), len(ids))

    def build(self, prepared: Sequence[PreparedPrompt], images: Sequence[Any] | None = None) -> Prompts:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = left_pad([p.before for p in prepared], pad)
        return Prompts(attention_mask=mask, input_ids=ids)


class TemplatePrompts:
    """A trained GeMKR model's prompts: its template around the visual slot (``model.prompts``)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def prepare(self, question: str, tags: str | None) -> PreparedPrompt:
        before, after = self.model.prompts.piece(question, tags)
        return PreparedPrompt(question, tags, tuple(before), tuple(after),
                              len(before) + self.model.num_visual_tokens + len(after))

    def build(self, prepared: Sequence[PreparedPrompt], images: Sequence[Any] | None = None) -> Prompts:
        if not self.model.has_vision:
            images = None
        elif images is None:
            images = [None] * len(prepared)
        with torch.inference_mode():
            p = self.model.embed_pieces([(q.before, q.after) for q in prepared], images=images)
        return Prompts(attention_mask=p.attention_mask, inputs_embeds=p.inputs_embeds)


def empty_prompt(source: PromptSource) -> PreparedPrompt:
    """The empty query's prompt (no question, no tags, no picture): the prior calibration's condition."""
    return source.prepare("", None)


def prompt_embeds(llm: Any, prompts: Prompts, row: int) -> PromptEmbeds:
    """Row ``row`` of a batch as input embeddings (token ids embedded), for scoring passes over one prompt."""
    device = llm.get_input_embeddings().weight.device
    mask = prompts.attention_mask[row : row + 1].to(device)
    if prompts.inputs_embeds is not None:
        return PromptEmbeds(prompts.inputs_embeds[row : row + 1].to(device), mask)
    with torch.inference_mode():
        return PromptEmbeds(llm.get_input_embeddings()(prompts.input_ids[row : row + 1].to(device)), mask)
