"""Brute-force reference for the knowledge base: linear scans over the token lists (tests only).

The scan is vectorised with numpy (documents concatenated with a -1 separator, candidates filtered
token by token) so it stays usable on the 1M-token Wikipedia corpus; it shares no code with the index.

Clues with an anchor and an end (``anchor="doc_start"``, ``end=True``) follow the KB's protocol:
an anchored occurrence starts at a document's first token; a clue that *ends* (the END token, -1)
matches the documents whose last tokens are the clue (anchored and ended: the whole document).
"""

from __future__ import annotations

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
