"""Brute-force reference for the knowledge base: linear scans over the token lists (tests only).

The scan is vectorised with numpy (documents concatenated with a -1 separator, candidates filtered
token by token) so it stays usable on the 1M-token Wikipedia corpus; it shares no code with the index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
