"""Evidence scoring: a document is ranked by every LM-scored n-gram it contains (SEAL-style).

The paper ranks a document by its best *unique* clue. SEAL (Bevilacqua et al., "Autoregressive Search
Engines", NeurIPS 2022, ``seal/keys.py``) ranks it by the sum of the weights of many n-grams, each
occurring anywhere in the corpus, so that several moderately rare phrases of a question that meet in one
document add up, as the terms of BM25 do. Here an n-gram ``n`` gets

    w(n, q) = max(0, log[P(n|q) (1 - P(n))] - log[P(n) (1 - P(n|q))]) ** alpha

where ``P(n|q)`` is the LM's probability of generating ``n`` as the response to the query (teacher
forced, so the product of its tokens' probabilities) and ``P(n) = (count(n) + s) / (tokens + s)`` its
smoothed corpus frequency from the FM-index: the log-odds of the LM against the corpus. A document's
score is the sum of the weights of the n-grams it contains, taken best first, each multiplied by
``1 - beta + beta * |new| / |types|``, where ``types`` are the n-gram's distinct token ids and ``new``
those not already in an n-gram counted for that document (so "family Felidae" and "Felidae" do not both
count in full). N-grams occurring more than ``max_count`` times are skipped (locating them costs one walk
per occurrence, and their weight is near zero anyway).

Evidence sources (each switchable; :data:`SOURCES`):

* ``clues``: the unique clues of the constrained search and all their prefixes;
* ``beams``: every n-gram the search visited (each live beam at every step: SEAL's partial hypotheses);
* ``query``: word n-grams of the question and the visual tags (:func:`query_ngrams`), scored by the LM
  under the query's own prompt;
* ``inflections``: the other inflected forms of the query's single words ("trains" -> "trained",
  "training"; :func:`word_forms`) that occur in the KB, scored the same way: what stemming gives BM25;
* ``unigrams``: the LM's distribution over the first token of the response (SEAL's unigram scores),
  for the ``unigram_top`` most likely tokens.

This module is the arithmetic and the n-gram extraction; the clue generator runs the LM and the KB.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

GENERATED = ("clues", "beams")  # sources the model wrote itself (weighted by ``generated_weight``)


@dataclass
class Ngram:
    """A candidate piece of evidence: KB token ids, the LM's log-probability under the query, its source."""

    token_ids: tuple[int, ...]
    logprob: float  # log P(n | q)
    source: str
    text: str = ""


@dataclass
class EvidenceItem:
    """What one n-gram added to one document's score (kept on the document for explanations)."""

    text: str
    source: str
    weight: float  # w(n, q), after the source's weight
    contribution: float  # weight x the coverage coefficient
    count: int  # occurrences of the n-gram in the KB

    def to_dict(self) -> dict:
        return {"text": self.text, "source": self.source, "weight": round(self.weight, 6),
                "contribution": round(self.contribution, 6), "count": self.count}


@dataclass
class DocumentEvidence:
    score: float = 0.0
    items: list[EvidenceItem] = field(default_factory=list)


def ngram_weight(logprob: float, count: int, num_tokens: int, alpha: float = 2.0, smoothing: float = 5.0) -> float:
    """SEAL's weight ``max(0, log[P(n|q)(1-P(n))] - log[P(n)(1-P(n|q))]) ** alpha``; 0 for an absent n-gram.

    ``logprob`` is ``log P(n|q)``; ``P(n) = (count + smoothing) / (num_tokens + smoothing)``.
    """
    if count <= 0 or not math.isfinite(logprob):
        return 0.0
    lp = min(logprob, -1e-10)  # P(n|q) = 1 would make the odds infinite
    prior = math.log((count + smoothing) / (num_tokens + smoothing))
    odds = (lp + math.log1p(-math.exp(prior))) - (prior + math.log1p(-math.exp(lp)))
    return max(odds, 0.0) ** alpha


def coverage_coefficient(types: frozenset[int], covered: set[int], beta: float) -> float:
    """``1 - beta + beta * |types - covered| / |types|``: 1 for new tokens only, ``1 - beta`` for none new."""
    if not covered:
        return 1.0
    return 1.0 - beta + beta * len(types - covered) / len(types)


def aggregate(ngrams: Sequence[Ngram], counts: Sequence[int], docs: Sequence[Iterable[int]], num_tokens: int, *,
              alpha: float = 2.0, beta: float = 0.8, smoothing: float = 5.0, max_count: int = 1500,
              source_weights: dict[str, float] | None = None) -> dict[int, DocumentEvidence]:
    """Every document's summed evidence. ``counts[i]`` and ``docs[i]`` (KB positions) belong to ``ngrams[i]``.

    Each distinct token sequence counts once, with its best weight over the sources that produced it
    (``source_weights`` multiplies a source's weights; default 1). N-grams are taken by decreasing weight
    (ties: shorter first, then token ids), and each document applies its own coverage discount.
    """
    weights = source_weights or {}
    best: dict[tuple[int, ...], tuple[float, int, Ngram]] = {}
    for i, n in enumerate(ngrams):
        count = int(counts[i])
        if count <= 0 or count > max_count:
            continue
        w = weights.get(n.source, 1.0) * ngram_weight(n.logprob, count, num_tokens, alpha, smoothing)
        if w <= 0.0:
            continue
        key = tuple(n.token_ids)
        if key not in best or w > best[key][0]:
            best[key] = (w, i, n)
    order = sorted(best.items(), key=lambda kv: (-kv[1][0], len(kv[0]), kv[0]))
    out: dict[int, DocumentEvidence] = {}
    covered: dict[int, set[int]] = {}
    for key, (w, i, n) in order:
        types = frozenset(key)
        for d in docs[i]:
            d = int(d)
            seen = covered.setdefault(d, set())
            c = w * coverage_coefficient(types, seen, beta)
            seen |= types
            ev = out.setdefault(d, DocumentEvidence())
            ev.score += c
            ev.items.append(EvidenceItem(n.text, n.source, w, c, int(counts[i])))
    return out


# ---------------------------------------------------------------------- the query's own n-grams
_SEGMENT = re.compile(r"[,;:!?()\[\]{}\"\n]+|\.(?=\s|$)")  # n-grams never cross these (tags are comma-separated)
_EDGE = "\"'`.,;:!?()[]{}"


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """English stop words (NLTK's list, which llama-index-core ships with its data: no download)."""
    from llama_index.core.utils import globals_helper

    return frozenset(w.lower() for w in globals_helper.stopwords)


def word_spans(text: str, max_words: int) -> Iterator[list[str]]:
    """Every run of 1..``max_words`` consecutive words of ``text`` (split at white space, edge punctuation
    stripped), in order of appearance. The query's n-grams and the reader's answer spans both build on it."""
    words = [w for w in (w.strip(_EDGE) for w in text.split()) if w]
    for i in range(len(words)):
        for j in range(i + 1, min(i + max_words, len(words)) + 1):
            yield words[i:j]


def query_spans(text: str, max_words: int = 3) -> list[str]:
    """Word spans of 1..``max_words`` words within each segment of ``text`` (split at punctuation and
    commas), in order of appearance, without duplicates; spans made of stop words only are dropped."""
    stop = stopwords()
    out: dict[str, None] = {}
    for segment in _SEGMENT.split(text or ""):
        for span in word_spans(segment, max_words):
            if not all(w.lower() in stop for w in span):
                out.setdefault(" ".join(span), None)
    return list(out)


def span_variants(span: str) -> list[str]:
    """The forms a span takes inside documents: after a space as written, after a space with a capital
    first letter, and opening a document (no space, capitalised: a titled passage starts with its title)."""
    cap = span[:1].upper() + span[1:]
    return list(dict.fromkeys([" " + span, " " + cap, cap]))


def word_forms(word: str) -> list[str]:
    """Other inflected forms of an English word by regular suffix rules (plural, past, gerund), without
    the word itself: ``"trains"`` -> ``train, trained, training, ...``. Most candidates occur nowhere;
    the KB's counts keep the real ones. Words under 4 letters and stop words get none."""
    if len(word) < 4 or not word.isalpha() or word.lower() in stopwords():
        return []
    stems = {word[: len(word) - len(suffix)] + repl
             for suffix, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("ing", ""), ("ing", "e"))
             if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss")} or {word}
    forms: dict[str, None] = {}
    for b in stems:
        base = b[:-1] if b.endswith("e") else b
        for form in (b, b + "s", b + "es", base + "ed", base + "ing"):
            forms.setdefault(form, None)
        if b.endswith("y"):
            forms.setdefault(b[:-1] + "ies", None)
    forms.pop(word, None)
    return list(forms)


def query_ngrams(question: str, tags: str | None, encode: Callable[[Sequence[str]], list[list[int]]],
                 max_words: int = 3, inflections: bool = False) -> list[tuple[str, tuple[int, ...], str]]:
    """``(text, KB token ids, source)`` of every variant of every word span of the question and the tags
    (source ``"query"``) and, with ``inflections``, of the other forms of their single words (source
    ``"inflections"``).

    ``encode`` tokenizes a batch of strings exactly as the KB's documents were (``KnowledgeBase.encode_batch``).
    Whether an n-gram occurs in the KB is left to the caller's batched lookup.
    """
    spans = query_spans(question, max_words) + query_spans(tags or "", max_words)
    texts = {v: "query" for s in spans for v in span_variants(s)}
    if inflections:
        for s in spans:
            if " " not in s:
                for form in word_forms(s):
                    for v in span_variants(form):
                        texts.setdefault(v, "inflections")
    ids = encode(list(texts)) if texts else []
    seen: set[tuple[int, ...]] = set()
    out = []
    for (t, source), i in zip(texts.items(), ids):
        key = tuple(int(x) for x in i)
        if key and key not in seen:
            seen.add(key)
            out.append((t, key, source))
    return out


def word_start_mask(tokenizer) -> np.ndarray:
    """(vocab,) bool: whether a token begins a new word (a leading space or word-boundary marker, or a
    first character that is not a letter or digit). Byte-level BPE marks the space with ``Ġ``,
    SentencePiece with ``▁``."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return np.array([not p or p[0] in "Ġ▁ \n\t" or not p[0].isalnum() for p in pieces], dtype=bool)


def clue_prefixes(token_ids: Sequence[int], prefix_logprobs: Sequence[float], starts: np.ndarray | None
                  ) -> list[tuple[tuple[int, ...], float]]:
    """Every prefix of a clue with its log-likelihood; with ``starts`` (:func:`word_start_mask`) only the
    prefixes that end where a word ends (the clue's next token starts a word), and the whole clue."""
    n = len(prefix_logprobs)
    return [(tuple(token_ids[:k]), float(prefix_logprobs[k - 1])) for k in range(1, n + 1)
            if starts is None or k == n or bool(starts[token_ids[k]])]


def visited_ngrams(visited: dict[tuple[int, ...], float], starts: np.ndarray | None) -> list[tuple[tuple[int, ...], float]]:
    """The n-grams a search visited; with ``starts``, those that some visited continuation shows to end
    where a word ends (a beam went on with a token that starts a word), or that no beam continued."""
    if starts is None:
        return list(visited.items())
    ended: dict[tuple[int, ...], bool] = {}
    for toks in visited:
        if len(toks) > 1:
            parent = toks[:-1]
            ended[parent] = ended.get(parent, False) or bool(starts[toks[-1]])
    return [(t, lp) for t, lp in visited.items() if ended.get(t, True)]


def top_unigrams(first_logprobs: np.ndarray, top: int) -> list[tuple[int, float]]:
    """The ``top`` most likely first tokens ``(token id, log-prob)``, best first (ties: smaller id)."""
    lp = np.asarray(first_logprobs, dtype=np.float64)
    top = min(int(top), lp.shape[0])
    idx = np.argpartition(-lp, top - 1)[:top] if top < lp.shape[0] else np.arange(lp.shape[0])
    idx = sorted(idx.tolist(), key=lambda i: (-lp[i], i))
    return [(int(i), float(lp[i])) for i in idx]
