"""The constraint interface: everything the search asks a knowledge base, in a few batched calls.

The search keeps one KB *state* per beam (a ``(S, 2)`` int64 array of suffix-array row ranges, one per
shard) and never searches a prefix again from its first token. Per group step it makes at most two
calls: ``step`` for the candidate tokens it checks (extend + counts + unique document, fused in one
native call) and, for beams whose prefix is rare, ``children`` (every continuation with its state,
count and unique document). A sharded or remote KB implements these few methods and plugs in.

``END`` (-1) is the continuation "the clue ends at a document's end": a clue may end there like at EOS,
so a document shorter than ``min_length`` (or one whose text is a prefix of another's) stays reachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

END = -1
ANCHORS = ("any", "doc_start")


@runtime_checkable
class ConstraintIndex(Protocol):
    """What :class:`~gemkr_llamaindex.decoding.beam_search.ConstrainedBeamSearch` needs from a KB."""

    def root_states(self, batch: int = 1, anchor: str = "any") -> np.ndarray:
        """States of the empty prefix, shape (batch, S, 2); ``anchor="doc_start"`` only matches at the first
        token of a document."""

    def counts(self, states: np.ndarray) -> np.ndarray:
        """Occurrences per state, shape (B,)."""

    def step(self, states: np.ndarray, tokens: Sequence[int] | np.ndarray) -> Any:
        """Extend state ``b`` by ``tokens[b]`` (``END`` allowed); returns an object with ``states`` (B, S, 2),
        ``counts`` (B,) and ``unique`` (B,): the KB position of the one document holding every occurrence,
        or -1. One native call."""

    def continuations(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(offsets, tokens)`` of every continuation of each state, ``END`` first where it applies."""

    def children(self, states: np.ndarray) -> Any:
        """CSR continuations with their states, counts and unique documents (fields ``offsets``, ``tokens``,
        ``counts``, ``states``, ``unique``), ``END`` included."""

    def doc_id(self, index: int) -> str:
        """The user's id of the document at KB position ``index``."""
