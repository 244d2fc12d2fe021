"""Knowledge-guided constrained diverse beam search, independent of the inference engine.

One loop over a batch of queries. Beams are split into groups with a Hamming diversity penalty between
groups (Vijayakumar et al., 2018); at every step the KB constrains each beam to tokens that continue a
string occurring in the KB (GetNext), the constraint being applied to log-softmax over the whole
vocabulary without renormalising (as in the paper's code). A beam stops once it is at least ``min_length``
tokens long and its clue occurs in exactly one document (ValidDistinct), or at ``max_length``; clues
that then still map to several documents are dropped. A beam may also end where its prefix ends a
document (the KB's ``END`` continuation, scored with the model's end-of-sequence token), whatever its
length. Finished clues are scored ``sum log p / len ** length_penalty`` and documents are ranked by
their clues' scores. Groups may start at document starts only (``anchor``): the clue then names the
entity a Wikipedia-like document opens with, GENRE-style.

Engines only answer "log-probabilities of the next token for these beams" through
:class:`LogProbBackend`. Candidate selection happens where the log-probabilities are (the GPU, when
there is one): the diversity penalty, each beam's best tokens and the masked top-k are tensor ops on the
backend's device, and only (beams x m) candidate ids and scores cross to the host, where the KB checks
them in one batched call (:mod:`~gemkr_llamaindex.decoding.constraint`).

Candidate selection follows transformers' group beam search: each group takes the best
``2 x group_size`` (beam, token) candidates by cumulative penalised score, walks them in order, turns
finished ones into clues if they rank within the first ``group_size``, and keeps the others as live
beams until the group is full.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from gemkr_llamaindex.decoding.config import DecodingConfig
from gemkr_llamaindex.decoding.constraint import END
from gemkr_llamaindex.decoding.results import Clue, QueryResult


class LogProbBackend(Protocol):
    """What the search needs from an inference engine: one object per search (it holds that search's
    cache). ``states`` are the KB states of the rows a call returns, for engines that must apply the
    constraint themselves before returning only their top log-probs (others ignore them)."""

    def start(self, prompts: Any, states: np.ndarray | None = None) -> torch.Tensor:
        """Run the prompts; return next-token log-probabilities, shape (num_queries, vocab)."""

    def advance(self, parents: torch.Tensor, tokens: torch.Tensor, states: np.ndarray | None = None) -> torch.Tensor:
        """Beam ``i`` continues row ``parents[i]`` of the previous output with ``tokens[i]``; return the new
        rows' next-token log-probabilities, shape (len(parents), vocab)."""


@dataclass
class SearchStats:
    """Where one search spent its time (seconds) and how often it asked the KB; one object per call, so
    concurrent searches never share it."""

    model: float = 0.0
    kb: float = 0.0
    total: float = 0.0
    kb_calls: int = 0
    steps: int = 0

    def add(self, other: SearchStats) -> None:
        for name in ("model", "kb", "total", "kb_calls", "steps"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Beam:
    query: int
    group: int
    tokens: tuple[int, ...]
    score: float  # cumulative penalised score (steers the search)
    logprob: float  # cumulative model log-probability (ranks the clues)
    row: int  # row of this beam in the backend's latest output
    state: np.ndarray  # KB state of the clue so far, shape (S, 2)
    count: int  # occurrences of the clue so far
    cum: tuple[float, ...] = ()  # model log-probability of each prefix of ``tokens`` (evidence scoring)


@dataclass
class _Candidate:
    beam: _Beam
    token: int  # a vocabulary id, or END
    total: float  # beam.score + penalised log-prob
    logprob: float  # beam.logprob + log-prob
    order: tuple  # deterministic tie-break: (beam row, token id; END as the end-of-sequence id)
    state: np.ndarray | None = None
    count: int = 0
    unique: int = -1


@dataclass
class _Group:
    """One group's live beams at one step, with their rows in the backend output."""

    beams: list[_Beam]
    rows: torch.Tensor  # (n,) long, on the backend's device
    pen: torch.Tensor  # (n, V) penalised log-probs, on the backend's device
    logp: torch.Tensor  # (n, V) log-probs, on the backend's device
    cands: list[_Candidate] = field(default_factory=list)


def repeat_prompts(prompts: Any, times: int) -> Any:
    """Each prompt ``times`` times in a row (rows ``q * times + i``); the prompts themselves when once."""
    if times == 1:
        return prompts
    fields = {name: getattr(prompts, name) for name in ("attention_mask", "inputs_embeds", "input_ids")}
    return type(prompts)(**{k: v.repeat_interleave(times, dim=0) if v is not None else None for k, v in fields.items()})


class ConstrainedBeamSearch:
    """Runs :class:`DecodingConfig`'s search for a batch of prompts against a KB given per call."""

    def __init__(self, config: DecodingConfig | None = None) -> None:
        self.config = config or DecodingConfig()

    def __call__(self, backend: LogProbBackend, prompts: Any, num_queries: int, kb: Any, *,
                 decode: Callable[[Sequence[int]], str] | None = None, end_token_id: int | None = None,
                 stats: SearchStats | None = None, keep_history: bool = False) -> list[QueryResult]:
        """Clues and ranked documents for each of ``num_queries`` prompts. ``end_token_id`` (the model's
        EOS) lets a clue end at a document's end; ``stats`` (optional) receives this call's timings;
        ``keep_history`` records every n-gram a live beam held (``QueryResult.visited``)."""
        cfg = self.config
        st = stats if stats is not None else SearchStats()
        t0 = time.perf_counter()
        end_id = end_token_id if cfg.allow_doc_end else None
        anchors = cfg.group_anchors()
        kinds = sorted(set(anchors))  # "any" and/or "doc_start"
        roots = {a: self._kb(st, kb.root_states, 1, a)[0] for a in kinds}
        root_counts = {a: int(self._kb(st, kb.counts, roots[a][None])[0]) for a in kinds}
        # An engine that masks before returning its top log-probs needs one first row per root (anchored
        # and free groups allow different first tokens); others share one row per query.
        per_query = len(kinds) if getattr(backend, "masks_in_engine", False) else 1
        start_states = np.stack([roots[kinds[i % per_query]] if per_query > 1 else roots["any" if "any" in roots
                                 else "doc_start"] for i in range(num_queries * per_query)])
        t = time.perf_counter()
        logp = backend.start(repeat_prompts(prompts, per_query), start_states)
        st.model += time.perf_counter() - t
        if logp.shape[0] != num_queries * per_query:
            raise ValueError(f"backend returned {logp.shape[0]} rows for {num_queries * per_query} prompts")
        beams = [_Beam(q, g, (), 0.0, 0.0, q * per_query + (kinds.index(anchors[g]) if per_query > 1 else 0),
                       roots[anchors[g]], root_counts[anchors[g]])
                 for q in range(num_queries) for g in range(cfg.num_groups)]
        finished: list[list[Clue]] = [[] for _ in range(num_queries)]
        visited: list[dict[tuple[int, ...], float]] | None = [{} for _ in range(num_queries)] if keep_history else None

        for step in range(cfg.max_length):
            st.steps += 1
            new_len = step + 1
            last = new_len == cfg.max_length
            logp = logp.float()
            allowed = self._continuations(st, kb, beams) if cfg.constraint == "mask" else None
            used = (torch.zeros(num_queries, logp.shape[1], device=logp.device)
                    if cfg.diversity_penalty and cfg.num_groups > 1 else None)
            next_beams: list[_Beam] = []
            for g in range(cfg.num_groups):
                idx = [i for i, b in enumerate(beams) if b.group == g]
                if not idx:
                    continue
                group = self._group([beams[i] for i in idx], logp, used)
                if cfg.constraint == "mask":
                    self._candidates_listed(group, range(len(idx)), [allowed[i] for i in idx], end_id)
                    self._step_missing(st, kb, group.cands)
                else:
                    self._candidates_topk(st, kb, group, end_id)
                for q, per_q in self._select(group.cands).items():
                    live = 0
                    for rank, c in enumerate(per_q):
                        done = c.token == END or last or (
                            cfg.stop_when_unique and new_len >= cfg.min_length and c.unique >= 0)
                        if done:
                            if rank < cfg.group_size and c.unique >= 0:
                                toks = [*c.beam.tokens] + ([] if c.token == END else [c.token])
                                finished[q].append(Clue(
                                    toks, c.logprob, cfg.length_normalised(c.logprob, len(toks)), c.unique,
                                    kb.doc_id(c.unique), decode(toks) if decode else "", ends_document=c.token == END,
                                    prefix_logprobs=[*c.beam.cum] + ([] if c.token == END else [c.logprob]),
                                ))
                            continue
                        beam = _Beam(q, g, (*c.beam.tokens, c.token), c.total, c.logprob, c.beam.row, c.state, c.count,
                                     (*c.beam.cum, c.logprob))
                        next_beams.append(beam)
                        if visited is not None:
                            visited[q][beam.tokens] = beam.logprob
                        live += 1
                        if live == cfg.group_size:
                            break
                if used is not None:
                    mine = [b for b in next_beams if b.group == g]
                    if mine:
                        qs = torch.tensor([b.query for b in mine], device=used.device)
                        ts = torch.tensor([b.tokens[-1] for b in mine], device=used.device)
                        used.index_put_((qs, ts), torch.ones(len(mine), device=used.device), accumulate=True)
            if last or not next_beams:
                break
            t = time.perf_counter()
            parents = torch.tensor([b.row for b in next_beams], dtype=torch.long)
            tokens = torch.tensor([b.tokens[-1] for b in next_beams], dtype=torch.long)
            logp = backend.advance(parents, tokens, np.stack([b.state for b in next_beams]))
            st.model += time.perf_counter() - t
            for i, b in enumerate(next_beams):
                b.row = i
            beams = next_beams
        st.total += time.perf_counter() - t0
        return [QueryResult.from_clues(c, cfg.doc_score, visited[q] if visited is not None else None)
                for q, c in enumerate(finished)]

    # ------------------------------------------------------------------ KB calls
    @staticmethod
    def _kb(st: SearchStats, fn: Callable, *args: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args)
        st.kb += time.perf_counter() - t
        st.kb_calls += 1
        return out

    def _continuations(self, st: SearchStats, kb: Any, beams: Sequence[_Beam]) -> list[np.ndarray]:
        offsets, tokens = self._kb(st, kb.continuations, np.stack([b.state for b in beams]))
        return [tokens[offsets[i] : offsets[i + 1]] for i in range(len(beams))]

    def _step_missing(self, st: SearchStats, kb: Any, cands: Sequence[_Candidate]) -> None:
        """States, counts and unique documents of the candidates that lack them: one ``step`` call."""
        missing = [c for c in cands if c.state is None]
        if not missing:
            return
        res = self._kb(st, kb.step, np.stack([c.beam.state for c in missing]),
                       np.array([c.token for c in missing], dtype=np.int64))
        for c, s, n, u in zip(missing, res.states, res.counts.tolist(), res.unique.tolist()):
            c.state, c.count, c.unique = s, n, u

    # ------------------------------------------------------------------ candidates
    def _group(self, beams: list[_Beam], logp: torch.Tensor, used: torch.Tensor | None) -> _Group:
        """The group's rows with the Hamming diversity penalty for tokens earlier groups took this step."""
        rows = torch.tensor([b.row for b in beams], dtype=torch.long, device=logp.device)
        lp = logp.index_select(0, rows)
        pen = lp
        if used is not None:
            qs = torch.tensor([b.query for b in beams], dtype=torch.long, device=logp.device)
            pen = lp - self.config.diversity_penalty * used.index_select(0, qs)
        return _Group(beams, rows, pen, lp)

    def _candidates_listed(self, group: _Group, which: Sequence[int], allowed: Sequence[np.ndarray],
                           end_id: int | None, children: Any = None) -> None:
        """(a) every continuation of the beams ``which`` masked out of the whole vocabulary; each keeps its
        best 2k (one padded top-k on the device). ``allowed[j]`` lists beam ``which[j]``'s continuations
        (``END`` = the end-of-sequence id); ``children`` (optional) carries their states already."""
        need = 2 * self.config.group_size
        ids, where = [], []
        for toks in allowed:
            toks = np.asarray(toks, dtype=np.int64)
            keep = np.ones(len(toks), dtype=bool)
            if end_id is None:
                keep &= toks != END
            where.append(np.flatnonzero(keep))
            ids.append(np.where(toks[keep] == END, end_id if end_id is not None else 0, toks[keep]))
        width = max((len(x) for x in ids), default=0)
        if width == 0:
            return
        device = group.pen.device
        tok = torch.zeros(len(ids), width, dtype=torch.long)
        valid = torch.zeros(len(ids), width, dtype=torch.bool)
        for j, x in enumerate(ids):
            tok[j, : len(x)] = torch.from_numpy(x)
            valid[j, : len(x)] = True
        tok, valid = tok.to(device), valid.to(device)
        rows = torch.as_tensor(list(which), dtype=torch.long, device=device)
        pen = group.pen.index_select(0, rows).gather(1, tok).masked_fill(~valid, -torch.inf)
        top = torch.topk(pen, min(need, width), dim=1)
        lp = group.logp.index_select(0, rows).gather(1, tok.gather(1, top.indices))
        vals, pos, lps = top.values.cpu().numpy(), top.indices.cpu().numpy(), lp.cpu().numpy()
        for j, r in enumerate(which):
            b = group.beams[r]
            # best first; ties by token id, as the reference search orders them
            order = sorted((o for o in range(vals.shape[1]) if np.isfinite(vals[j, o])),
                           key=lambda o, j=j: (-vals[j, o], int(ids[j][pos[j, o]])))
            for o in order:
                p = int(pos[j, o])
                token = int(allowed[j][where[j][p]])
                c = _Candidate(b, token, b.score + float(vals[j, o]), b.logprob + float(lps[j, o]),
                               (b.row, int(ids[j][p])))
                if children is not None:  # CSR row j of a children() result: states etc. are known
                    k = int(children.offsets[j]) + int(where[j][p])
                    c.state, c.count, c.unique = children.states[k], int(children.counts[k]), int(children.unique[k])
                group.cands.append(c)

    def _candidates_topk(self, st: SearchStats, kb: Any, group: _Group, end_id: int | None) -> None:
        """(b) each beam's best ``m`` tokens on the device, checked against the KB in one ``step`` call: a
        beam keeps its first 2k allowed ones, which is all beam search can use. Exact: a beam whose prefix
        is rare (at most ``enumerate_below`` occurrences, so few continuations) or whose best ``m`` tokens
        hold fewer than 2k allowed ones has its continuations listed instead, as in (a). The model's
        end-of-sequence token among the best ``m`` stands for ``END``."""
        cfg = self.config
        need = 2 * cfg.group_size
        vocab = group.pen.shape[1]
        m = min(max(cfg.topk_candidates, need), vocab)
        listed = [r for r, b in enumerate(group.beams) if b.count <= cfg.enumerate_below]
        checked = [r for r, b in enumerate(group.beams) if b.count > cfg.enumerate_below]
        if checked:
            rows = torch.as_tensor(checked, dtype=torch.long, device=group.pen.device)
            top = torch.topk(group.pen.index_select(0, rows), m, dim=1)
            lps = group.logp.index_select(0, rows).gather(1, top.indices).cpu().numpy()
            vals, toks = top.values.cpu().numpy(), top.indices.cpu().numpy()
            probe = toks.copy()
            if end_id is not None:
                probe[probe == end_id] = END
            states = np.stack([group.beams[r].state for r in checked])
            res = self._kb(st, kb.step, np.repeat(states, m, axis=0), probe.reshape(-1))
            counts, unique = res.counts.reshape(len(checked), m), res.unique.reshape(len(checked), m)
            child = res.states.reshape(len(checked), m, *res.states.shape[1:])
            for j, r in enumerate(checked):
                order = np.lexsort((toks[j], -vals[j]))  # best first; ties by token id, as in (a)
                pick = [o for o in order if counts[j, o] > 0 and np.isfinite(vals[j, o])][:need]
                exhausted = m == vocab or not np.isfinite(vals[j]).all()
                if len(pick) < need and not exhausted:
                    listed.append(r)  # not enough allowed among the best m: list them all
                    continue
                b = group.beams[r]
                for o in pick:
                    group.cands.append(_Candidate(
                        b, int(probe[j, o]), b.score + float(vals[j, o]), b.logprob + float(lps[j, o]),
                        (b.row, int(toks[j, o])), child[j, o], int(counts[j, o]), int(unique[j, o])))
        if listed:
            listed.sort()
            ch = self._kb(st, kb.children, np.stack([group.beams[r].state for r in listed]))
            allowed = [ch.tokens[ch.offsets[j] : ch.offsets[j + 1]] for j in range(len(listed))]
            self._candidates_listed(group, listed, allowed, end_id, ch)

    def _select(self, cands: list[_Candidate]) -> dict[int, list[_Candidate]]:
        """Per query, the best 2k candidates by cumulative penalised score (ties: beam row, then token)."""
        k = self.config.group_size
        per_q: dict[int, list[_Candidate]] = {}
        for c in cands:
            per_q.setdefault(c.beam.query, []).append(c)
        for q, lst in per_q.items():
            lst.sort(key=lambda c: (-c.total, c.order))
            per_q[q] = lst[: 2 * k]
        return per_q
