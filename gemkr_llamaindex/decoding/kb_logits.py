"""The KB constraint as a logits transformation that keeps the search's scores exact (pure torch, no vLLM).

The paper's search masks the log-softmax over the *whole* vocabulary and does not renormalise: an allowed
token keeps its unconstrained log-probability ``log p(t)``. An engine such as vLLM instead reports either raw
log-probs (taken before any logits processor, so unmasked) or processed ones (log-softmax of the processed
logits, i.e. renormalised over whatever the processor left finite). :func:`mass_preserving_mask` makes that
renormalisation a no-op, so the engine's *processed* log-probs are exactly the masked, unrenormalised ones:

    Let A be the allowed ids, P = sum_{a in A} p(a), and s a disallowed "sink" id. The processed row is
    z_a = log p(a) for a in A, z_s = log(1 - P), and -inf elsewhere. Then logsumexp(z) = log(P + 1 - P) = 0,
    hence log_softmax(z) = z: every allowed id keeps log p(a) and the sink carries the disallowed mass.

The sink is not allowed by the KB, so the backend drops it from what it hands to the search. When every id is
allowed (P = 1) no sink is needed. Because only the *top* log-probs come back from such an engine,
:func:`logprobs_needed` says how many keep diverse beam search exact, and :class:`KBRows` tracks the KB state
of each backend row so the backend can tell the engine which tokens each row may continue with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

_LOG_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (``expm1`` near 0, ``log1p`` far from it).

    ``x`` is clamped to 0 first: a log-mass that rounds to a hair above 0 means "all mass", giving -inf.
    """
    x = x.clamp(max=0.0)
    return torch.where(x > _LOG_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def choose_sink(allowed: np.ndarray | Sequence[int], vocab_size: int) -> int | None:
    """The smallest token id not in ``allowed`` (sorted, distinct ids, as the KB returns them), or ``None``
    when all ``vocab_size`` ids are allowed and no mass has to be parked."""
    allowed = np.asarray(allowed, dtype=np.int64)
    if allowed.size >= vocab_size:
        return None
    gaps = np.flatnonzero(allowed != np.arange(allowed.size))
    return int(gaps[0]) if gaps.size else int(allowed.size)


def mass_preserving_mask(logits: torch.Tensor, allowed: torch.Tensor, sink: int | None) -> torch.Tensor:
    """The KB mask written so that any later log-softmax returns the *unrenormalised* masked log-probs.

    ``logits``: one row (V,) or rows (B, V) sharing ``allowed`` (1-D long tensor on the same device).
    Returns float32 rows holding ``log_softmax(logits)`` at the allowed ids, ``log(1 - P)`` (the whole
    disallowed mass, see the module docstring) at ``sink``, and -inf elsewhere. ``sink`` must be a disallowed
    id, or ``None`` only when every id is allowed.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = torch.full_like(logp, -math.inf)
    kept = logp.index_select(-1, allowed)
    out[..., allowed] = kept
    if sink is not None:
        # log P via logsumexp (no underflow for tiny P); log(1 - P) via log1mexp (no cancellation for P ~ 1).
        out[..., sink] = log1mexp(torch.logsumexp(kept, dim=-1))
    return out


def logprobs_needed(config: Any) -> int:
    """Top log-probs per row an engine must return for the search to stay exact: 2k + (G - 1)k + 1.

    Beam search uses each beam's best ``2k`` allowed tokens by *penalised* score (k = group size). The Hamming
    diversity penalty lowers only tokens that earlier groups took at this step, at most ``(G - 1) k`` of them,
    and never raises any; so among the best ``2k + (G - 1) k`` allowed tokens by log-prob at least ``2k`` are
    unpenalised and outrank everything further down. One more slot is for the sink, which may rank anywhere.
    """
    if config.diversity_penalty < 0:
        raise ValueError("a negative diversity_penalty raises scores of used tokens; top-N log-probs are not exact then")
    k = config.group_size
    penalised = (config.num_groups - 1) * k if config.diversity_penalty else 0
    return 2 * k + penalised + 1


def dense_logprobs(top: Sequence[Mapping[int, float]], vocab_size: int, sinks: Sequence[int | None]) -> torch.Tensor:
    """Rows of shape (len(top), vocab_size): -inf except the returned top log-probs, minus each row's sink.

    Exact for the search in both constraint modes when the rows hold ``logprobs_needed`` entries: every finite
    entry is an allowed token with its true log-prob, and the tokens beam search can pick are all among them.
    In ``"topk"`` mode a -inf among a row's best candidates marks the row exhausted, so the search keeps the
    allowed tokens it found instead of listing all continuations: the missing ones could not have been picked.
    """
    out = torch.full((len(top), vocab_size), -math.inf)
    for r, (row, sink) in enumerate(zip(top, sinks)):
        kept = [(t, v) for t, v in row.items() if t != sink and math.isfinite(v)]
        if kept:
            ids, vals = zip(*kept)
            out[r, list(ids)] = torch.tensor(vals, dtype=out.dtype)
    return out


class BackendRows:
    """Per backend row: the prompt it continues and the tokens generated so far (an engine that is fed
    whole inputs needs them); the rows' KB states come from the search with every call."""

    def __init__(self) -> None:
        self.prompt = np.zeros(0, dtype=np.int64)
        self.tokens: list[tuple[int, ...]] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def start(self, num_prompts: int) -> None:
        self.prompt = np.arange(num_prompts, dtype=np.int64)
        self.tokens = [()] * num_prompts

    def advance(self, parents: Sequence[int], tokens: Sequence[int]) -> None:
        parents = np.asarray(parents, dtype=np.int64)
        self.prompt = self.prompt[parents]
        self.tokens = [(*self.tokens[p], int(t)) for p, t in zip(parents.tolist(), np.asarray(tokens).tolist())]


def allowed_tokens(kb: Any, states: np.ndarray, end_token_id: int | None) -> list[np.ndarray]:
    """Each state's allowed next token ids (sorted, distinct): its KB continuations, with the KB's END
    continuation as ``end_token_id`` (dropped when that is None)."""
    offsets, tokens = kb.continuations(states)
    out = []
    for i in range(len(states)):
        row = tokens[offsets[i] : offsets[i + 1]]
        ends = row < 0
        if ends.any():
            row = row[~ends]
            if end_token_id is not None:
                row = np.unique(np.append(row, end_token_id))
        out.append(row)
    return out
