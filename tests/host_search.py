"""The constrained diverse beam search as it was before device-side candidate selection (frozen reference).

``benchmarks/retrieval_latency.py`` times it next to the library's search, and ``tests/test_decoding.py``
asserts that both return identical clues: this copy copies every beam's full-vocabulary log-prob row to
the host and walks beams in Python, which is what the library's search no longer does. It knows neither
document-start anchoring nor clues that end at a document's end (run the library's search with
``anchor="any"``, ``allow_doc_end=False`` to compare).

Original module docstring:

Knowledge-guided constrained diverse beam search, independent of the inference engine.

One loop over a batch of queries. Beams are split into groups with a Hamming diversity penalty between
groups (Vijayakumar et al., 2018); at every step the KB constrains each beam to tokens that continue a
string occurring in the KB (GetNext), the constraint being applied to log-softmax over the whole
vocabulary without renormalising (as in the paper's code). A beam stops once it is at least ``min_length``
tokens long and its clue occurs in exactly one document (ValidDistinct), or at ``max_length``; clues
that then still map to several documents are dropped. Finished clues are scored
``sum log p / len ** length_penalty`` and documents are ranked by their clues' scores.

Engines only answer "log-probabilities of the next token for these beams" through
:class:`LogProbBackend`; the KB is asked through its stateful API, batched over all beams of all queries
of a group at each step (groups are sequential because of the diversity penalty), so no beam's prefix is
ever searched again from its first token.

Candidate selection follows transformers' group beam search: each group takes the best
``2 x group_size`` (beam, token) candidates by cumulative penalised score, walks them in order, turns
finished ones into clues if they rank within the first ``group_size``, and keeps the others as live
beams until the group is full.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gemkr_llamaindex.decoding.beam_search import LogProbBackend
from gemkr_llamaindex.decoding.config import DecodingConfig
from gemkr_llamaindex.decoding.results import Clue, QueryResult


@dataclass
class _Beam:
    query: int
    group: int
    tokens: tuple[int, ...]
    score: float  # cumulative penalised score (steers the search)
    logprob: float  # cumulative model log-probability (ranks the clues)
    row: int  # row of this beam in the backend's latest output
    state: np.ndarray  # KB state of the clue so far, shape (S, 2)


@dataclass
class _Candidate:
    beam: _Beam
    token: int
    total: float  # beam.score + penalised log-prob
    logprob: float  # beam.logprob + log-prob
    order: tuple  # deterministic tie-break
    state: np.ndarray | None = None


class HostSideBeamSearch:
    """The pre-change search: full log-prob rows on the host, KB asked through extend/counts/unique_docs."""

    def __init__(self, config: DecodingConfig | None = None) -> None:
        self.config = config or DecodingConfig()
        self.timings: Counter[str] = Counter()  # seconds spent in the KB constraint vs the rest

    def __call__(self, backend: LogProbBackend, prompts: Any, num_queries: int, kb: Any,
                 decode: Callable[[Sequence[int]], str] | None = None) -> list[QueryResult]:
        self.kb = kb
        cfg = self.config
        k, kb = cfg.group_size, self.kb
        t0 = time.perf_counter()
        logp = backend.start(prompts)
        self.timings["model"] += time.perf_counter() - t0
        if logp.shape[0] != num_queries:
            raise ValueError(f"backend returned {logp.shape[0]} rows for {num_queries} queries")
        root = kb.root_states(1)[0]
        beams = [_Beam(q, g, (), 0.0, 0.0, q, root) for q in range(num_queries) for g in range(cfg.num_groups)]
        finished: list[list[Clue]] = [[] for _ in range(num_queries)]

        for step in range(cfg.max_length):
            new_len = step + 1
            last = new_len == cfg.max_length
            logp_cpu = logp.float().cpu()
            allowed = self._allowed_all(beams) if cfg.constraint == "mask" else None
            used: list[Counter[int]] = [Counter() for _ in range(num_queries)]
            next_beams: list[_Beam] = []
            for g in range(cfg.num_groups):
                group = [i for i, b in enumerate(beams) if b.group == g]
                if not group:
                    continue
                pen = self._penalised(logp_cpu, [beams[i] for i in group], used)
                if cfg.constraint == "mask":
                    cands = self._candidates_mask(beams, group, logp_cpu, pen, [allowed[i] for i in group])
                else:
                    cands = self._candidates_topk(beams, group, logp_cpu, pen)
                chosen = self._select(cands, k)
                t = time.perf_counter()
                flat = [c for per_q in chosen.values() for c in per_q]
                if flat:
                    missing = [c for c in flat if c.state is None]
                    if missing:
                        states = kb.extend(np.stack([c.beam.state for c in missing]), [c.token for c in missing])
                        for c, s in zip(missing, states):
                            c.state = s
                    uniq = kb.unique_docs(np.stack([c.state for c in flat]))
                else:
                    uniq = np.zeros(0, dtype=np.int64)
                self.timings["kb"] += time.perf_counter() - t
                pos = 0
                for q, per_q in chosen.items():
                    live = 0
                    for rank, c in enumerate(per_q):
                        u = int(uniq[pos + rank])
                        done = last or (cfg.stop_when_unique and new_len >= cfg.min_length and u >= 0)
                        if done:
                            if rank < k and u >= 0:
                                toks = [*c.beam.tokens, c.token]
                                finished[q].append(Clue(
                                    toks, c.logprob, c.logprob / (len(toks) ** cfg.length_penalty), u,
                                    kb.doc_id(u), decode(toks) if decode else "",
                                ))
                            continue
                        next_beams.append(_Beam(q, g, (*c.beam.tokens, c.token), c.total, c.logprob, c.beam.row, c.state))
                        used[q][c.token] += 1
                        live += 1
                        if live == k:
                            break
                    pos += len(per_q)
            if last or not next_beams:
                break
            t = time.perf_counter()
            parents = torch.tensor([b.row for b in next_beams], dtype=torch.long)
            tokens = torch.tensor([b.tokens[-1] for b in next_beams], dtype=torch.long)
            logp = backend.advance(parents, tokens)
            self.timings["model"] += time.perf_counter() - t
            for i, b in enumerate(next_beams):
                b.row = i
            beams = next_beams
        self.timings["total"] += time.perf_counter() - t0
        return [QueryResult.from_clues(c, cfg.doc_score) for c in finished]

    # ------------------------------------------------------------------ scoring
    def _penalised(self, logp: torch.Tensor, beams: list[_Beam], used: list[Counter[int]]) -> torch.Tensor:
        """Rows' log-probs minus the Hamming diversity penalty for tokens earlier groups took this step."""
        rows = logp[[b.row for b in beams]].clone()
        if self.config.diversity_penalty:
            for r, b in enumerate(beams):
                if used[b.query]:
                    toks = torch.tensor(list(used[b.query].keys()), dtype=torch.long)
                    cnt = torch.tensor(list(used[b.query].values()), dtype=rows.dtype)
                    rows[r, toks] -= self.config.diversity_penalty * cnt
        return rows

    def _allowed_all(self, beams: list[_Beam]) -> list[np.ndarray]:
        t = time.perf_counter()
        offsets, tokens = self.kb.next_tokens_of(np.stack([b.state for b in beams]))
        self.timings["kb"] += time.perf_counter() - t
        return [tokens[offsets[i] : offsets[i + 1]] for i in range(len(beams))]

    def _candidates_mask(self, beams, group, logp, pen, allowed, rows=None) -> list[_Candidate]:
        """(a) every continuation of each beam, masked out of the whole vocabulary; best 2k per beam.
        ``allowed[r]`` lists the continuations of the group's r-th beam; ``rows`` limits the beams."""
        need = 2 * self.config.group_size
        out = []
        for r in rows if rows is not None else range(len(group)):
            b = beams[group[r]]
            toks = torch.as_tensor(allowed[r], dtype=torch.long)
            if toks.numel() == 0:
                continue
            scores = pen[r, toks]
            keep = torch.isfinite(scores)
            toks, scores = toks[keep], scores[keep]
            if toks.numel() > need:
                top = torch.topk(scores, need).indices
                toks, scores = toks[top], scores[top]
            out.extend(self._make(b, r, toks.tolist(), scores.tolist(), logp))
        return out

    def _candidates_topk(self, beams, group, logp, pen) -> list[_Candidate]:
        """(b) the model's best tokens checked against the KB in descending order: each beam keeps the first
        2k allowed ones, which is all beam search can use. Exact: a beam whose prefix is rare (few rows, so
        few continuations) or whose best ``topk_candidates`` tokens hold fewer than 2k allowed ones has its
        continuations listed instead, as in (a)."""
        cfg = self.config
        need = 2 * cfg.group_size
        m = min(max(cfg.topk_candidates, need), pen.shape[1])
        states = np.stack([beams[i].state for i in group])
        t = time.perf_counter()
        counts = self.kb.counts(states)
        self.timings["kb"] += time.perf_counter() - t
        listed = [r for r in range(len(group)) if counts[r] <= cfg.enumerate_below]
        checked = [r for r in range(len(group)) if counts[r] > cfg.enumerate_below]
        out: list[_Candidate] = []
        if checked:
            top = torch.topk(pen[checked], m, dim=1)
            vals, toks = top.values.numpy(), top.indices.numpy()
            t = time.perf_counter()
            child = self.kb.extend(np.repeat(states[checked], m, axis=0), toks.reshape(-1))
            ok = (self.kb.counts(child) > 0).reshape(len(checked), m)
            self.timings["kb"] += time.perf_counter() - t
            child = child.reshape(len(checked), m, *child.shape[1:])
            for j, r in enumerate(checked):
                order = np.lexsort((toks[j], -vals[j]))  # best first; ties by token id, as in (a)
                pick = [o for o in order if ok[j, o] and np.isfinite(vals[j, o])][:need]
                exhausted = m == pen.shape[1] or not np.isfinite(vals[j]).all()
                if len(pick) < need and not exhausted:
                    listed.append(r)  # not enough allowed among the best m: list them all
                    continue
                b = beams[group[r]]
                cands = self._make(b, r, [int(toks[j, o]) for o in pick], [float(vals[j, o]) for o in pick], logp)
                for c, o in zip(cands, pick):
                    c.state = child[j, o]
                out.extend(cands)
        if listed:
            allowed = self._allowed_all([beams[group[r]] for r in listed])
            by_row = dict.fromkeys(range(len(group)))
            for r, a in zip(listed, allowed):
                by_row[r] = a
            out.extend(self._candidates_mask(beams, group, logp, pen, [by_row[r] for r in range(len(group))],
                                             rows=listed))
        return out

    def _make(self, beam: _Beam, r: int, toks: list[int], pens: list[float], logp: torch.Tensor) -> list[_Candidate]:
        lps = logp[beam.row, toks].tolist() if toks else []
        return [
            _Candidate(beam, t, beam.score + p, beam.logprob + lp, (beam.row, t))
            for t, p, lp in zip(toks, pens, lps)
        ]

    def _select(self, cands: list[_Candidate], k: int) -> dict[int, list[_Candidate]]:
        """Per query, the best 2k candidates by cumulative penalised score (ties: beam row, then token)."""
        per_q: dict[int, list[_Candidate]] = {}
        for c in cands:
            per_q.setdefault(c.beam.query, []).append(c)
        for q, lst in per_q.items():
            lst.sort(key=lambda c: (-c.total, c.order))
            per_q[q] = lst[: 2 * k]
        return per_q
