"""Supervised text sampling (paper §Instruction Tuning): knowledge clues cut from positive documents.

The benchmarks give relevant documents, not clues. For each (query, positive document):

1. split the document into sentences and count, per sentence, the query keyword hits (stop words removed,
   Snowball-stemmed); keep the sentences with the most hits (all of them when no keyword hits);
2. for every candidate start position ``i`` inside those sentences, count the hits ``c_i`` in the span
   ``w_{i:i+l}``; score ``π_i = c_i / (c_i + ρ)``; turn the scores into a distribution with a softmax;
3. sample ``m`` start positions from it and cut ``l`` tokens from each: m clues of equal length.

Everything happens on the knowledge base's own token ids of the document (``kb.doc_tokens``), so a clue is
a substring of the indexed document by construction and can be fed straight to the constrained decoder's
index. Clues that ``kb.unique_doc`` maps back to their own document are preferred (a few re-draws), and
``ClueStats`` reports the share that is unique.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    """NLTK's English stop-word list as shipped inside llama-index-core (no download, no nltk import)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llama_index.core")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "_static/nltk_cache/corpora/stopwords/english"
        if path.is_file():
            return frozenset(w.strip() for w in path.read_text().split() if w.strip())
    raise FileNotFoundError(
        "the English stop-word list that ships inside llama-index-core (_static/nltk_cache/corpora/stopwords/english) "
        "is missing; reinstall llama-index-core"
    )


@lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def keywords(text: str) -> set[str]:
    """Stemmed, lower-cased words of ``text`` that are not English stop words."""
    stops = _stop_words()
    words = [w.lower() for w in _WORD.findall(text)]
    return set(_stemmer().stemWords([w for w in words if w not in stops]))


@dataclass
class TokenView:
    """A document's token ids with, per token, whether a word starts in it and whether that word is a hit."""

    ids: np.ndarray
    word_start: np.ndarray  # bool (n,)
    hit: np.ndarray  # int (n,) 1 where a query keyword starts in this token
    sentences: list[tuple[int, int]]  # token ranges [start, end)


def token_view(ids: np.ndarray, tokenizer: Any, query_keywords: set[str]) -> TokenView:
    """Map words, keyword hits and sentence boundaries of the decoded text back onto token positions."""
    ids = np.asarray(ids, dtype=np.int64)
    pieces = tokenizer.batch_decode([[int(t)] for t in ids]) if len(ids) else []
    offsets = np.cumsum([0] + [len(p) for p in pieces])  # char start of token i = offsets[i]
    text = "".join(pieces)
    n = len(ids)
    word_start = np.zeros(n, dtype=bool)
    hit = np.zeros(n, dtype=np.int64)
    stemmer, stops = _stemmer(), _stop_words()
    for match in _WORD.finditer(text):
        tok = int(np.searchsorted(offsets, match.start(), side="right") - 1)
        word_start[tok] = True
        word = match.group().lower()
        if word not in stops and stemmer.stemWord(word) in query_keywords:
            hit[tok] = 1
    sentences, start_char = [], 0
    for match in _SENTENCE_END.finditer(text):
        sentences.append((start_char, match.end()))
        start_char = match.end()
    if start_char < len(text):
        sentences.append((start_char, len(text)))
    tok_ranges = []
    for a, b in sentences:
        ta = int(np.searchsorted(offsets, a, side="right") - 1)
        tb = int(np.searchsorted(offsets, b, side="left"))
        if tb > ta:
            tok_ranges.append((ta, min(tb, n)))
    return TokenView(ids, word_start, hit, tok_ranges or [(0, n)])


def start_distribution(view: TokenView, length: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate start positions and their softmax(π) probabilities, ``π_i = c_i / (c_i + ρ)``."""
    n = len(view.ids)
    last = max(n - length, 0)  # a clue must fit: starts in [0, n - l]
    sent_hits = [int(view.hit[a:b].sum()) for a, b in view.sentences]
    best = max(sent_hits)
    chosen = [s for s, h in zip(view.sentences, sent_hits) if h == best]  # most-hit sentences (all if 0 hits)
    cands = sorted({i for a, b in chosen for i in range(a, b) if i <= last and view.word_start[i]})
    if not cands:  # e.g. the best sentence starts after n - l: fall back to any fitting word start
        cands = [i for i in range(last + 1) if view.word_start[i]] or [0]
    cands = np.asarray(cands, dtype=np.int64)
    window = np.concatenate([[0], np.cumsum(view.hit)])
    counts = window[np.minimum(cands + length, n)] - window[cands]  # c_i: hits in w_{i:i+l}
    pi = counts / (counts + rho)
    p = np.exp(pi - pi.max())
    return cands, p / p.sum()


@dataclass
class Clue:
    doc_id: str
    token_ids: list[int]
    start: int
    unique: bool


@dataclass
class ClueStats:
    clues: int = 0
    unique: int = 0
    docs_missing: list[str] = field(default_factory=list)

    @property
    def unique_share(self) -> float:
        return self.unique / self.clues if self.clues else 0.0


class ClueSampler:
    """Samples ``m`` clues of ``length`` KB tokens per positive document; see the module docstring.

    ``rho`` is the paper's smoothing factor; ``redraws`` bounds the extra draws spent looking for a clue
    that maps back to its document only. ``seed`` makes sampling reproducible.
    """

    def __init__(self, kb: Any, m: int = 2, length: int = 12, rho: float = 1.0, redraws: int = 8, seed: int = 0):
        if m < 1 or length < 1 or rho <= 0:
            raise ValueError("need m >= 1, length >= 1 and rho > 0")
        self.kb, self.m, self.length, self.rho, self.redraws = kb, m, length, rho, redraws
        self.rng = np.random.default_rng(seed)
        self.stats = ClueStats()

    def sample(self, question: str, doc_id: str) -> list[Clue]:
        """``m`` clues for one positive document (fewer only if the document has fewer start positions)."""
        ids = np.asarray(self.kb.doc_tokens(doc_id), dtype=np.int64)
        if len(ids) == 0:
            return []
        view = token_view(ids, self.kb.tokenizer, keywords(question))
        cands, probs = start_distribution(view, self.length, self.rho)
        want = min(self.m, len(cands))
        clues: list[Clue] = []
        taken: set[int] = set()
        fallback: list[Clue] = []
        for _ in range(want + self.redraws):
            if len(clues) == want:
                break
            free = np.array([c not in taken for c in cands])
            if not free.any():
                break
            p = probs * free
            start = int(self.rng.choice(cands, p=p / p.sum()))
            taken.add(start)
            tokens = ids[start : start + self.length].tolist()
            clue = Clue(doc_id, tokens, start, self.kb.unique_doc(tokens) == doc_id)
            (clues if clue.unique else fallback).append(clue)
        clues.extend(fallback[: want - len(clues)])
        self.stats.clues += len(clues)
        self.stats.unique += sum(c.unique for c in clues)
        return clues

    def sample_many(self, question: str, doc_ids: Iterable[str]) -> list[Clue]:
        out = []
        for doc_id in doc_ids:
            try:
                out.extend(self.sample(question, doc_id))
            except KeyError:
                self.stats.docs_missing.append(doc_id)
        return out


def clue_texts(clues: Sequence[Clue], tokenizer: Any) -> list[str]:
    """The clues as text (for logs and docs)."""
    return [tokenizer.decode(c.token_ids) for c in clues]
