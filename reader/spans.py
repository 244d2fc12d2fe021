"""Answers that can only be spans of the retrieved passages: a token trie and a beam search over it.

A small reader model, given three passages, sometimes answers with a word that is in none of them
(it reads "Procyonidae" for "Felidae", or makes a word up). :class:`SpanTrie` holds every span of one to
``max_words`` words of the passages, tokenised as an answer begins (after the assistant marker, so
without a leading space; the first letter as written, capitalised and lower-cased), and answers the
decoder's one question, which tokens may follow what was generated so far; the end-of-sequence token is
allowed only where a span ends. :func:`span_beam_search` picks the model's most likely whole span with a
small beam search (greedy decoding would commit to "The" and end at "The cat is"): the prompt runs once
and the beams share its key/value cache (the retriever's
:class:`~gemkr_llamaindex.decoding.HFBackend`), so it costs about what greedy decoding does. The same idea
as the retriever's constrained decoding, over a trie of the few passages read instead of the FM-index of
the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gemkr_llamaindex.decoding.evidence import word_spans

_END = -1  # trie key marking "a span may end here"


def passage_spans(texts: Sequence[str], max_words: int = 3) -> list[str]:
    """Every span of 1..``max_words`` words of the texts (edge punctuation stripped), in three casings of
    its first letter, without duplicates."""
    out: dict[str, None] = {}
    for text in texts:
        for words in word_spans(text or "", max_words):
            span = " ".join(words)
            for form in (span, span[:1].upper() + span[1:], span[:1].lower() + span[1:]):
                out.setdefault(form, None)
    return list(out)


class SpanTrie:
    """Token trie of the spans of some passages; :meth:`allowed` lists what may follow a generated prefix."""

    def __init__(self, texts: Sequence[str], tokenizer: Any, eos_token_id: int | Sequence[int], max_words: int = 3):
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.eos = [int(e) for e in (eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])]
        self.spans = passage_spans(texts, max_words)
        self.root: dict[int, dict] = {}
        ids = tokenizer(self.spans, add_special_tokens=False).input_ids if self.spans else []
        for seq in ids:
            node = self.root
            for t in seq:
                node = node.setdefault(int(t), {})
            node[_END] = {}

    def __bool__(self) -> bool:
        return bool(self.root)

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Tokens that extend ``generated`` to (a prefix of) a span, plus EOS where a span ends; EOS alone
        once the prefix has left the trie (which constrained decoding never lets happen)."""
        node = self.root
        for t in generated:
            node = node.get(int(t))
            if node is None:
                return list(self.eos)
        out = [t for t in node if t != _END]
        if _END in node:
            out += self.eos
        return out or list(self.eos)


def span_beam_search(model: Any, input_ids: Any, trie: SpanTrie, num_beams: int = 5, max_new_tokens: int = 20,
                     length_penalty: float = 1.0) -> list[int]:
    """The token ids (EOS excluded) of the span with the highest ``sum log p / len ** length_penalty``
    (EOS counted) that ``num_beams`` beams find, decoding after ``input_ids`` (1, P) under ``trie``."""
    import torch

    from gemkr_llamaindex.decoding import HFBackend, Prompts

    backend = HFBackend(model)
    logp = backend.start(Prompts(attention_mask=torch.ones_like(input_ids), input_ids=input_ids))
    eos = set(trie.eos)
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]  # (tokens, summed log-prob); row i of logp
    best: tuple[float, tuple[int, ...]] | None = None
    for _ in range(max_new_tokens):
        cands = []
        for row, (toks, total) in enumerate(beams):
            allowed = trie.allowed(list(toks))
            scores = logp[row, allowed].tolist()
            cands += [(total + s, row, toks, t) for t, s in zip(allowed, scores)]
        cands.sort(key=lambda c: -c[0])
        live = []
        for total, row, toks, t in cands:
            if t in eos:  # a finished span; every candidate of a step has the same length, so raw sums compare
                score = total / (len(toks) + 1) ** length_penalty
                if best is None or score > best[0]:
                    best = (score, toks)
            elif len(live) < num_beams:
                live.append((total, row, (*toks, t)))
        if not live:  # every span ended (the trie's depth bounds the search)
            break
        beams = [(toks, total) for total, _, toks in live]
        logp = backend.advance(torch.tensor([row for _, row, _ in live]), torch.tensor([toks[-1] for _, _, toks in live]))
    return list(best[1]) if best is not None else []
