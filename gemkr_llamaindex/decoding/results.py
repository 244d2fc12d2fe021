"""What constrained decoding returns: clues and the documents they map to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gemkr_llamaindex.decoding.evidence import EvidenceItem


@dataclass
class Clue:
    """A generated knowledge clue: a token sequence that occurs in the KB."""

    token_ids: list[int]
    logprob: float  # sum of the model's log-probabilities of the clue tokens
    score: float  # logprob / len ** length_penalty: the ranking score
    doc_index: int  # KB position of the one document it maps to
    doc_id: str
    text: str = ""
    ends_document: bool = False  # the clue reaches its document's end (finished by the KB's END)
    prior_logprob: float | None = None  # log-likelihood under an empty query (calibrated scores only)
    prefix_logprobs: list[float] = field(default_factory=list)  # log-likelihood of each prefix of token_ids

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "logprob": self.logprob, "score": self.score,
                "doc_index": self.doc_index, "doc_id": self.doc_id, "ends_document": self.ends_document,
                "prior_logprob": self.prior_logprob, "prefix_logprobs": self.prefix_logprobs}


@dataclass
class DocumentHit:
    """A ranked document: its score, the clues that map to it and, under evidence scoring, the n-grams
    that scored it (best first)."""

    doc_index: int
    doc_id: str
    score: float
    clues: list[Clue] = field(default_factory=list)
    evidence: list[EvidenceItem] = field(default_factory=list)


@dataclass
class QueryResult:
    """Distinct clues sorted by score (best first) and the deduplicated documents they map to, best first.

    ``visited`` (searches run with ``keep_history``): every n-gram a live beam held, with its model
    log-likelihood."""

    clues: list[Clue]
    docs: list[DocumentHit]
    visited: dict[tuple[int, ...], float] | None = None

    @classmethod
    def from_clues(cls, clues: list[Clue], doc_score: str = "max",
                   visited: dict[tuple[int, ...], float] | None = None) -> QueryResult:
        clues = sorted(clues, key=lambda c: (-c.score, c.token_ids))
        # Different groups can finish the same clue: keep each token sequence once (its best score).
        seen: set[tuple[int, ...]] = set()
        clues = [c for c in clues if not (tuple(c.token_ids) in seen or seen.add(tuple(c.token_ids)))]
        by_doc: dict[int, DocumentHit] = {}
        for c in clues:
            hit = by_doc.setdefault(c.doc_index, DocumentHit(c.doc_index, c.doc_id, c.score))
            hit.clues.append(c)
        if doc_score == "logsumexp":
            for hit in by_doc.values():
                m = max(c.score for c in hit.clues)
                hit.score = m + math.log(sum(math.exp(c.score - m) for c in hit.clues))
        docs = sorted(by_doc.values(), key=lambda h: (-h.score, h.doc_index))
        return cls(clues, docs, visited)
