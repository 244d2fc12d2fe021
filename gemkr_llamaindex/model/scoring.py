"""Log-likelihood of clue tokens after a prompt (paper Eq. 1): the training loss's and the rankers' kernel.

``target_log_probs`` runs prompt + targets in one teacher-forced pass (training, and one prompt per
clue). ``shared_prompt_log_likelihood`` runs one prompt once and reuses its key/value cache for many
clues (ranking candidate documents for one query).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

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
        return shared_prompt_log_likelihood(llm, prompt, clue_ids, pad, batch_size)
    scores = []
    for s in range(0, n, batch_size):
        chunk = clue_ids[s : s + batch_size]
        part = PromptEmbeds(prompt.inputs_embeds[s : s + batch_size], prompt.attention_mask[s : s + batch_size])
        logp, _ = target_log_probs(llm, part, chunk, pad)
        scores.append(logp.sum(1).float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


@torch.no_grad()
def shared_prompt_log_likelihood(llm, prompt: PromptEmbeds, clue_ids: Sequence[Sequence[int]], pad: int,
                                 batch_size: int = 32) -> torch.Tensor:
    """One prompt, many clues: run the prompt once and reuse its key/value cache for every chunk."""
    if any(len(c) == 0 for c in clue_ids):
        raise ValueError("empty clue: every target needs at least one token")
    out = llm(inputs_embeds=prompt.inputs_embeds, attention_mask=prompt.attention_mask,
              position_ids=prompt.position_ids(), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts every clue's first token
    prompt_cache = output_cache(out)
    next_pos = int(prompt.attention_mask.sum())  # position id of the first clue token
    embed = llm.get_input_embeddings()
    device = prompt.inputs_embeds.device
    scores = []
    for s in range(0, len(clue_ids), batch_size):
        chunk = clue_ids[s : s + batch_size]
        tgt, tmask = right_pad(chunk, pad, device)
        b, tlen = tgt.shape
        score = first[tgt[:, 0]]
        if tlen > 1:
            cache = copy.deepcopy(prompt_cache)
            cache.batch_repeat_interleave(b)
            mask = torch.cat([prompt.attention_mask.expand(b, -1), tmask[:, :-1]], dim=1)
            positions = (next_pos + torch.arange(tlen - 1, device=device)).expand(b, -1)
            step = llm(inputs_embeds=embed(tgt[:, :-1]), attention_mask=mask, position_ids=positions, use_cache=True,
                       **cache_kwargs(llm, cache))
            logp = torch.log_softmax(step.logits.float(), dim=-1).gather(-1, tgt[:, 1:, None]).squeeze(-1)
            score = score + (logp * tmask[:, 1:]).sum(1)
        scores.append(score.float().cpu())
    return torch.cat(scores)
