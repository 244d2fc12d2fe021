"""Answers that can only be spans of the retrieved passages: a token trie for constrained decoding.

A small reader model, given three passages, sometimes answers with a word that is in none of them
(it reads "Procyonidae" for "Felidae", or makes a word up). :class:`SpanTrie` holds every span of one to
``max_words`` words of the passages, tokenised as an answer begins (after the assistant marker, so
without a leading space; the first letter as written, capitalised and lower-cased), and answers the
decoder's one question, which tokens may follow what was generated so far. Handed to transformers'
``generate(prefix_allowed_tokens_fn=...)``, greedy decoding then picks the model's most likely *span*,
and the end-of-sequence token is allowed only where a span ends at a word boundary. The same idea as the
retriever's constrained decoding, over a trie of the few passages read instead of the FM-index of the
corpus.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_EDGE = "\"'`.,;:!?()[]{}"
_END = -1  # trie key marking "a span may end here"


def passage_spans(texts: Sequence[str], max_words: int = 3) -> list[str]:
    """Every span of 1..``max_words`` words of the texts (edge punctuation stripped), in three casings of
    its first letter, without duplicates."""
    out: dict[str, None] = {}
    for text in texts:
        words = [w.strip(_EDGE) for w in re.split(r"\s+", text or "")]
        words = [w for w in words if w]
        for i in range(len(words)):
            for j in range(i + 1, min(i + max_words, len(words)) + 1):
                span = " ".join(words[i:j])
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
