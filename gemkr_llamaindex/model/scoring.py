"""Log-likelihood of clue tokens after a prompt (paper Eq. 1): the training loss's and the rankers' kernel.

``target_log_probs`` runs prompt + targets in one teacher-forced pass (training, and one prompt per
clue). ``shared_prompt_log_likelihood`` runs one prompt once and every distinct clue prefix once on its
key/value cache (tree attention), for many clues after one prompt (ranking, prior calibration).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gemkr_llamaindex.model.prompt import PromptEmbeds, right_pad
from gemkr_llamaindex.transformers_compat import cache_kwargs, output_cache


def target_log_probs(llm, prompt: PromptEmbeds, targets: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``log F(c_j | c_<j, Q)`` of right-padded targets after the prompt: (B, L) and its mask."""
    if len(targets) != len(prompt):
        raise ValueError(f"{len(targets)} targets for a prompt batch of {len(prompt)}")
    device = prompt.inputs_embeds.device
    tgt, tmask = right_pad(targets, pad, device)
    tlen = tgt.shape[1]
    embeds = torch.cat([prompt.inputs_embeds, llm.get_input_embeddings()(tgt)], dim=1)
    mask = torch.cat([prompt.attention_mask, tmask], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=tlen + 1)
    logits = out.logits[:, :tlen].float()  # position plen-1+j predicts target j
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return logp * tmask, tmask


@torch.no_grad()
def clue_log_likelihood(llm, prompt: PromptEmbeds, clue_ids: Sequence[Sequence[int]], pad: int,
                        batch_size: int = 32) -> torch.Tensor:
    """``sum_j log F(c_j | c_<j, Q)`` per clue as a float32 CPU tensor; ``prompt`` holds one prompt (scored
    against every clue) or one prompt per clue."""
    n = len(clue_ids)
    if len(prompt) not in (1, n):
        raise ValueError(f"prompt batch {len(prompt)} must be 1 or the number of clues {n}")
    if len(prompt) == 1 and n > 1:
        return shared_prompt_log_likelihood(llm, prompt, clue_ids, batch_size)
    scores = []
    for s in range(0, n, batch_size):
        chunk = clue_ids[s : s + batch_size]
        part = PromptEmbeds(prompt.inputs_embeds[s : s + batch_size], prompt.attention_mask[s : s + batch_size])
        logp, _ = target_log_probs(llm, part, chunk, pad)
        scores.append(logp.sum(1).float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


@dataclass
class EncodedPrompt:
    """One prompt run once: the log-probs of a clue's first token, the prompt's key/value cache (never
    written: each scoring pass works on a copy) and its mask. Reusable across calls for a fixed prompt
    (the prior pass's empty query) as long as the model's weights do not change."""

    first: torch.Tensor
    cache: Any
    attention_mask: torch.Tensor
    dtype: torch.dtype


@torch.no_grad()
def encode_prompt(llm, prompt: PromptEmbeds) -> EncodedPrompt:
    """Run one prompt (batch of 1) and keep what scoring clues after it needs."""
    if len(prompt) != 1:
        raise ValueError(f"encode_prompt takes one prompt, got {len(prompt)}")
    out = llm(inputs_embeds=prompt.inputs_embeds, attention_mask=prompt.attention_mask,
              position_ids=prompt.position_ids(), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts every clue's first token
    return EncodedPrompt(first, output_cache(out), prompt.attention_mask, prompt.inputs_embeds.dtype)


@torch.no_grad()
def shared_prompt_log_likelihood(llm, prompt: PromptEmbeds | EncodedPrompt, clue_ids: Sequence[Sequence[int]],
                                 batch_size: int = 32) -> torch.Tensor:
    """One prompt, many clues: run the prompt once, then every distinct clue prefix once (tree attention).

    Beams of one search share their first tokens, so the distinct prefixes are far fewer than the clues'
    padded tokens (measured on the development questions: ~30 against ~125 per query of 20 beams, see
    ``benchmarks/prior_scoring.py``). The prefixes form a trie; one pass over its nodes, each attending to
    the prompt and to its own ancestors only, at the position it has in its clue, gives every clue's token
    log-probabilities exactly as a padded batch would. ``batch_size`` clues (sorted, so that shared
    prefixes fall together) per pass. ``prompt`` may be an :class:`EncodedPrompt` kept from an earlier call."""
    if any(len(c) == 0 for c in clue_ids):
        raise ValueError("empty clue: every target needs at least one token")
    enc = prompt if isinstance(prompt, EncodedPrompt) else encode_prompt(llm, prompt)
    scores = torch.zeros(len(clue_ids))
    order = sorted(range(len(clue_ids)), key=lambda i: tuple(clue_ids[i]))
    for s in range(0, len(order), batch_size):
        chunk = [(i, tuple(int(t) for t in clue_ids[i])) for i in order[s : s + batch_size]]
        for i, c in chunk:
            scores[i] = enc.first[c[0]]
        if any(len(c) > 1 for _, c in chunk):
            for (i, _), extra in zip(chunk, _tree_pass(llm, enc, [c for _, c in chunk])):
                scores[i] += extra
    return scores


def _tree_pass(llm, enc: EncodedPrompt, clues: list[tuple[int, ...]]) -> list[float]:
    """``sum_{j>=1} log F(c_j | c_<j, prompt)`` per clue, from one forward pass over the trie of the clues'
    proper prefixes on top of (a copy of) the prompt's key/value cache."""
    node: dict[tuple[int, ...], int] = {}  # proper prefix -> its index in the pass
    for c in clues:
        for k in range(1, len(c)):
            node.setdefault(c[:k], len(node))
    prefixes = list(node)
    n = len(prefixes)
    device = enc.first.device
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for j, pre in enumerate(prefixes):
        for k in range(1, len(pre) + 1):
            allowed[j, node[pre[:k]]] = True  # the node itself and its ancestors
    plen = enc.attention_mask.shape[1]
    keep = torch.cat([enc.attention_mask[0].bool().cpu().expand(n, plen), allowed], dim=1)
    dtype = enc.dtype
    mask = torch.zeros(1, 1, n, plen + n, dtype=dtype, device=device)
    mask.masked_fill_(~keep.to(device)[None, None], torch.finfo(dtype).min)
    next_pos = int(enc.attention_mask.sum())  # position id of a clue's first token
    tokens = torch.tensor([[pre[-1] for pre in prefixes]], device=device)
    positions = torch.tensor([[next_pos + len(pre) - 1 for pre in prefixes]], device=device)
    step = llm(inputs_embeds=llm.get_input_embeddings()(tokens), attention_mask=mask, position_ids=positions,
               use_cache=True, **cache_kwargs(llm, copy.deepcopy(enc.cache)))
    logp = torch.log_softmax(step.logits[0].float(), dim=-1)  # row j predicts the token after prefix j
    rows, cols, owner = [], [], []
    for ci, c in enumerate(clues):
        for k in range(1, len(c)):
            rows.append(node[c[:k]])
            cols.append(c[k])
            owner.append(ci)
    picked = logp[torch.tensor(rows, device=device), torch.tensor(cols, device=device)].cpu()
    return torch.zeros(len(clues)).index_add_(0, torch.tensor(owner), picked).tolist()
