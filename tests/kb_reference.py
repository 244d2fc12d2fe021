"""Brute-force reference for the knowledge base: linear scans over the token lists (tests only).

The scan is vectorised with numpy (documents concatenated with a -1 separator, candidates filtered
token by token) so it stays usable on the 1M-token Wikipedia corpus; it shares no code with the index.

Clues with an anchor and an end (``anchor="doc_start"``, ``end=True``) follow the KB's protocol:
an anchored occurrence starts at a document's first token; a clue that *ends* (the END token, -1)
matches the documents whose last tokens are the clue (anchored and ended: the whole document).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

END = -1


class ReferenceKB:
    def __init__(self, docs: Sequence[Sequence[int]]) -> None:
        self.docs = [list(d) for d in docs]
        parts, owner = [], []
        for d, doc in enumerate(self.docs):
            parts.append(np.asarray(doc, dtype=np.int64))
            parts.append(np.array([-1]))
            owner.extend([d] * (len(doc) + 1))
        self.text = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        self.owner = np.asarray(owner, dtype=np.int64)

    def _starts(self, ids: Sequence[int]) -> np.ndarray:
        """Start positions (in the concatenation) of every occurrence of ids."""
        ids = [int(t) for t in ids]
        pos = np.flatnonzero(self.text == ids[0])
        for k, t in enumerate(ids[1:], start=1):
            pos = pos[pos + k < len(self.text)]
            pos = pos[self.text[pos + k] == t]
        return pos

    def count(self, ids: Sequence[int]) -> int:
        if not len(ids):
            return sum(map(len, self.docs))
        return len(self._starts(ids))

    def next_tokens(self, ids: Sequence[int]) -> list[int]:
        if not len(ids):
            return sorted(set(self.text[self.text >= 0].tolist()))
        after = self._starts(ids) + len(ids)
        nxt = self.text[after[after < len(self.text)]]
        return sorted(set(nxt[nxt >= 0].tolist()))

    def doc_indices(self, ids: Sequence[int]) -> list[int]:
        if not len(ids):
            return list(range(len(self.docs)))
        return sorted(set(self.owner[self._starts(ids)].tolist()))

    def unique_doc_index(self, ids: Sequence[int]) -> int:
        docs = self.doc_indices(ids)
        return docs[0] if len(docs) == 1 else -1

    # ---------------------------------------------------------------- anchored / ended clues
    def occurrences(self, ids: Sequence[int], anchor: str = "any") -> list[tuple[int, int]]:
        """(document, start) of every occurrence; the empty clue occurs at every position 0..len(doc)."""
        ids = [int(t) for t in ids]
        out = []
        for d, doc in enumerate(self.docs):
            last = 0 if anchor == "doc_start" else len(doc) - len(ids)
            for i in range(0, last + 1):
                if doc[i : i + len(ids)] == ids and len(doc) >= i + len(ids):
                    out.append((d, i))
        return out

    def ending_docs(self, ids: Sequence[int], anchor: str = "any") -> list[int]:
        """Documents in which the clue ends at the document's last token (anchored: the document is the clue)."""
        ids = [int(t) for t in ids]
        return [d for d, doc in enumerate(self.docs)
                if doc[len(doc) - len(ids):] == ids and (anchor == "any" or len(doc) == len(ids))
                and len(doc) >= len(ids)]

    def clue_count(self, ids: Sequence[int], anchor: str = "any", end: bool = False) -> int:
        return len(self.ending_docs(ids, anchor)) if end else len(self.occurrences(ids, anchor))

    def clue_docs(self, ids: Sequence[int], anchor: str = "any", end: bool = False) -> list[int]:
        if end:
            return self.ending_docs(ids, anchor)
        return sorted({d for d, _ in self.occurrences(ids, anchor)})

    def clue_unique(self, ids: Sequence[int], anchor: str = "any", end: bool = False) -> int:
        docs = self.clue_docs(ids, anchor, end)
        return docs[0] if len(docs) == 1 else -1

    def continuations(self, ids: Sequence[int], anchor: str = "any", end: bool = False) -> list[int]:
        """Allowed next tokens: END first if some occurrence ends a document, then sorted token ids."""
        if end:
            return []
        nxt = set()
        for d, i in self.occurrences(ids, anchor):
            if i + len(ids) < len(self.docs[d]):
                nxt.add(self.docs[d][i + len(ids)])
        head = [END] if self.ending_docs(ids, anchor) else []
        return head + sorted(nxt)

    def short_docs(self, n: int) -> int:
        return sum(1 for d in self.docs if len(d) < n)


# ---------------------------------------------------------------------- random corpora of token ids
def random_corpus(seed: int, n_docs: int = 30, vocab: int = 12, length: tuple[int, int] = (3, 20)) -> list[list[int]]:
    """Seeded documents over a small vocabulary: many repeated n-grams, some in several documents."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(*length))] for _ in range(n_docs)]


def occurring_ngrams(docs: list[list[int]], rng: random.Random, n: int) -> list[tuple[int, ...]]:
    """``n`` n-grams of 1-4 tokens cut from the documents, plus two that most likely occur nowhere."""
    out = []
    for _ in range(n):
        d = docs[rng.randrange(len(docs))]
        a = rng.randrange(len(d))
        out.append(tuple(d[a : a + rng.randint(1, 4)]))
    out += [(0, 1, 2, 3, 4, 5, 6), (11, 11, 11, 11, 11)]
    return out


def build_random_kb(directory, sharded: bool):
    """A KB (one shard, or several) over ``random_corpus(7)`` with a 12-word tokenizer, and its documents."""
    from conftest import as_text, word_tokenizer

    from gemkr_llamaindex.kb import KnowledgeBase

    docs = random_corpus(7)
    pairs = [(f"d{i}", as_text(d)) for i, d in enumerate(docs)]
    shard_tokens = sum(map(len, docs)) // 3 + 1 if sharded else None
    kb = KnowledgeBase.build(pairs, word_tokenizer(12), directory / "kb", show_progress=False, shard_tokens=shard_tokens)
    assert (kb.num_shards > 1) == sharded
    return kb, docs
