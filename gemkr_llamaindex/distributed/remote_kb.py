"""A knowledge base whose shards are served by Ray actors: the same constraint interface, across machines.

Each actor memory-maps one contiguous group of the KB's shards (on a multi-node cluster the KB folder
must be at the same path on every node: a shared filesystem, or a copy per node). A search state is one
row range per shard, so the driver's ``(B, S, 2)`` states split along the shard axis into one slice per
actor. Every call of the constraint interface becomes one batched call per actor, all in flight at once,
and their answers are merged with the rules the native multi-shard index uses within one machine:
continuations are the union (``END`` first, then increasing ids), counts add up, document lists
concatenate (actors hold consecutive document numbers), and a state has a unique document only if
exactly one actor has occurrences and its own answer is unique. So clues, counts and scores equal those
of the local KB.

    kb = open_remote_kb("kb_dir", groups=4)        # 4 actors; the driver maps no shard
    retriever = GeMKRRetriever(generator, kb)      # decoding, LookupDoc, texts: unchanged
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gemkr_llamaindex.kb.knowledge_base import KnowledgeBase

#: How long a query waits for the shard actors' answer to one call before it is an error.
DEFAULT_TIMEOUT_S = 120.0
#: Key stride for merging CSR lists: (state, token + 1) -> state * _STRIDE + token + 1 (token ids < 2^32).
_STRIDE = np.int64(1) << np.int64(33)


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError('the Ray parts need the [ray] extra: pip install "gemkr-llamaindex[ray]"') from exc
    return ray


def shard_groups(shards: list[dict[str, Any]], groups: int) -> list[tuple[int, int]]:
    """Split the shard list into at most ``groups`` contiguous ``(start, stop)`` runs of similar token counts."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    groups = min(groups, len(shards))
    cum = np.cumsum([s["num_tokens"] + 1 for s in shards], dtype=np.float64)
    cuts = [0]
    for g in range(1, groups):
        cut = int(np.searchsorted(cum, cum[-1] * g / groups)) + 1
        cuts.append(min(max(cut, cuts[-1] + 1), len(shards) - (groups - g)))
    cuts.append(len(shards))
    return list(zip(cuts[:-1], cuts[1:]))


class ShardGroupServer:
    """The Ray actor's body: the native index over one group of shards, answering in global numbers.

    ``doc_base`` is the KB position of the group's first document; document numbers it returns are
    shifted by it, so the driver merges without knowing the group's layout.
    """

    def __init__(self, folder: str, files: dict[str, dict[str, Any]], names: list[str], doc_base: int,
                 verify: bool) -> None:
        from gemkr_llamaindex.kb import _fmindex
        from gemkr_llamaindex.kb.store import check_files

        folder_path = Path(folder)
        check_files(folder_path, {n: files[n] for n in names}, verify)
        self._set = _fmindex.ShardSet([str(folder_path / n) for n in names])
        self._base = int(doc_base)

    def info(self) -> dict[str, Any]:
        return {"n_docs": int(self._set.n_docs),
                "shards": [dict(self._set.shard_info(i)) for i in range(self._set.n_shards)]}

    def pid(self) -> int:
        """The actor's process id (to find a stalled actor on its node)."""
        import os

        return os.getpid()

    def _docs(self, docs: np.ndarray) -> np.ndarray:
        return docs + self._base

    def _unique(self, unique: np.ndarray) -> np.ndarray:
        return np.where(unique >= 0, unique + self._base, -1)

    def root(self, batch: int, anchored: bool) -> np.ndarray:
        return self._set.root(batch, anchored)

    def search(self, ids: np.ndarray, anchored: bool) -> np.ndarray:
        return self._set.search(ids, anchored)

    def count_of(self, ids: np.ndarray) -> int:
        return int(self._set.count_of(ids))

    def count_unique_of(self, ids: np.ndarray) -> tuple[int, int]:
        state = self._set.search(ids, False)
        return int(self._set.counts(state)[0]), int(self._unique(self._set.unique_docs(state))[0])

    def docs_of(self, ids: np.ndarray) -> np.ndarray:
        return self._docs(self._set.docs_of(ids))

    def docs(self, states: np.ndarray) -> np.ndarray:
        return self._docs(self._set.docs(states))

    def search_many(self, ids: np.ndarray, offsets: np.ndarray, anchored: bool) -> np.ndarray:
        return self._set.search_many(ids, offsets, anchored)

    def docs_many(self, states: np.ndarray, max_count: int) -> tuple[np.ndarray, np.ndarray]:
        offsets, docs = self._set.docs_many(states, max_count)
        return offsets, self._docs(docs)

    def step(self, states: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out, counts, unique = self._set.step(states, tokens)
        return out, counts, self._unique(unique)

    def extend(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self._set.extend(states, tokens)

    def counts(self, states: np.ndarray) -> np.ndarray:
        return self._set.counts(states)

    def counts_unique(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._set.counts(states), self._unique(self._set.unique_docs(states))

    def next_tokens(self, states: np.ndarray, with_end: bool) -> tuple[np.ndarray, np.ndarray]:
        return self._set.next_tokens(states, with_end)

    def children(self, states: np.ndarray, with_unique: bool) -> tuple:
        offsets, tokens, counts, child_states, unique = self._set.children(states, with_unique)
        return offsets, tokens, counts, child_states, None if unique is None else self._unique(unique)


def merge_unique(counts: list[np.ndarray], unique: list[np.ndarray]) -> np.ndarray:
    """Per state: the one actor's unique document where exactly one actor has occurrences, else -1."""
    holders = np.sum([c > 0 for c in counts], axis=0)
    out = np.full(len(counts[0]), -1, dtype=np.int64)
    for c, u in zip(counts, unique):
        pick = (c > 0) & (holders == 1)
        out[pick] = u[pick]
    return out


def _csr_keys(offsets: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    return rows * _STRIDE + (tokens.astype(np.int64) + 1)


def _csr_from_keys(keys: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rows = keys // _STRIDE
    offsets = np.searchsorted(rows, np.arange(batch + 1, dtype=np.int64)).astype(np.int64)
    return offsets, keys % _STRIDE - 1


class RemoteShardSet:
    """The native ``ShardSet`` interface with its shards in Ray actors (see the module docstring).

    Built by :func:`open_remote_kb` through ``KnowledgeBase.open(index_factory=...)``.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], verify: bool, *, groups: int = 2,
                 actor_options: dict[str, Any] | None = None, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        ray = import_ray()
        self._ray = ray
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds (or None to wait for ever), got {timeout!r}")
        self.timeout = timeout
        shards = manifest["shards"]
        self._groups = shard_groups(shards, groups)
        self._slices = [slice(a, b) for a, b in self._groups]
        actor_cls = ray.remote(ShardGroupServer)
        opts = {"num_cpus": 1, **(actor_options or {})}
        self._actors = [
            actor_cls.options(**opts).remote(str(folder), manifest["files"], [s["file"] for s in shards[a:b]],
                                             int(shards[a]["doc_base"]), bool(verify))
            for a, b in self._groups
        ]
        try:  # surfaces open errors here; loading and checking shards may take longer than a query's timeout
            start_wait = None if timeout is None else max(timeout, DEFAULT_TIMEOUT_S)
            infos = self._wait([actor.info.remote() for actor in self._actors], "info", start_wait)
        except BaseException:
            self.close()
            raise
        self._shard_info = []
        for (a, _), info in zip(self._groups, infos):
            for k, si in enumerate(info["shards"]):
                self._shard_info.append({**si, "doc_base": int(shards[a + k]["doc_base"])})
        self.n_shards = len(shards)
        self.n_docs = sum(i["n_docs"] for i in infos)
        self._roots: dict[bool, np.ndarray] = {}

    @property
    def num_actors(self) -> int:
        return len(self._actors)

    def close(self) -> None:
        for actor in getattr(self, "_actors", []):
            self._ray.kill(actor)
        self._actors = []

    def shard_info(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n_shards:
            raise IndexError("no such shard")
        return dict(self._shard_info[i])

    # ---------------------------------------------------------------- fan-out
    def _get(self, refs: list[Any], method: str) -> list[Any]:
        """``ray.get`` with the KB's timeout: a stalled or lost actor is an error, not a query that hangs."""
        return self._wait(refs, method, self.timeout)

    def _wait(self, refs: list[Any], method: str, timeout: float | None) -> list[Any]:
        try:
            return self._ray.get(refs, timeout=timeout)
        except self._ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"the KB's shard actors did not answer {method!r} within {timeout} s (an actor may be stalled, "
                "overloaded or on a lost node); check the Ray cluster, or raise open_remote_kb(timeout=...)"
            ) from None

    def _call(self, method: str, *args: Any) -> list[Any]:
        return self._get([getattr(a, method).remote(*args) for a in self._actors], method)

    def _call_split(self, method: str, states: np.ndarray, *args: Any) -> list[Any]:
        states = np.asarray(states, dtype=np.int64)
        if states.ndim != 3 or states.shape[1:] != (self.n_shards, 2):
            raise ValueError(f"states must have shape (B, {self.n_shards}, 2), got {states.shape}")
        parts = [np.ascontiguousarray(states[:, sl]) for sl in self._slices]
        return self._get([getattr(a, method).remote(p, *args) for a, p in zip(self._actors, parts)], method)

    # ---------------------------------------------------------------- the ShardSet methods
    def root(self, batch: int, anchored: bool = False) -> np.ndarray:
        if anchored not in self._roots:
            self._roots[anchored] = np.concatenate(self._call("root", 1, bool(anchored)), axis=1)
        return np.repeat(self._roots[anchored], int(batch), axis=0)

    def search(self, ids: np.ndarray, anchored: bool = False) -> np.ndarray:
        return np.concatenate(self._call("search", np.asarray(ids, dtype=np.int64), bool(anchored)), axis=1)

    def count_of(self, ids: np.ndarray) -> int:
        return int(sum(self._call("count_of", np.asarray(ids, dtype=np.int64))))

    def unique_doc_of(self, ids: np.ndarray) -> int:
        parts = self._call("count_unique_of", np.asarray(ids, dtype=np.int64))
        return int(merge_unique([np.array([c]) for c, _ in parts], [np.array([u]) for _, u in parts])[0])

    def docs_of(self, ids: np.ndarray) -> np.ndarray:
        return np.concatenate(self._call("docs_of", np.asarray(ids, dtype=np.int64)))

    def docs(self, states: np.ndarray) -> np.ndarray:
        return np.concatenate(self._call_split("docs", states))

    def search_many(self, ids: np.ndarray, offsets: np.ndarray, anchored: bool = False) -> np.ndarray:
        parts = self._call("search_many", np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64),
                           bool(anchored))
        return np.concatenate(parts, axis=1)

    def docs_many(self, states: np.ndarray, max_count: int) -> tuple[np.ndarray, np.ndarray]:
        # the cap applies to the total count, so states over it are emptied before the fan-out
        states = np.array(states, dtype=np.int64)
        counts = self.counts(states)
        states[(counts > max_count) | (counts == 0)] = 0
        parts = self._call_split("docs_many", states, np.iinfo(np.int64).max)
        lists = [[d[o[b]:o[b + 1]] for b in range(len(states))] for o, d in parts]
        per_state = [np.concatenate([lst[b] for lst in lists]) for b in range(len(states))]  # groups in doc order
        offsets = np.zeros(len(states) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in per_state])
        return offsets, (np.concatenate(per_state) if per_state else np.zeros(0, dtype=np.int64)).astype(np.int64)

    def step(self, states: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = self._call_split("step", states, np.asarray(tokens, dtype=np.int64))
        counts = [p[1] for p in parts]
        return (np.concatenate([p[0] for p in parts], axis=1), np.sum(counts, axis=0),
                merge_unique(counts, [p[2] for p in parts]))

    def extend(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return np.concatenate(self._call_split("extend", states, np.asarray(tokens, dtype=np.int64)), axis=1)

    def counts(self, states: np.ndarray) -> np.ndarray:
        return np.sum(self._call_split("counts", states), axis=0)

    def unique_docs(self, states: np.ndarray) -> np.ndarray:
        parts = self._call_split("counts_unique", states)
        return merge_unique([c for c, _ in parts], [u for _, u in parts])

    def next_tokens(self, states: np.ndarray, with_end: bool = False) -> tuple[np.ndarray, np.ndarray]:
        parts = self._call_split("next_tokens", states, bool(with_end))
        keys = np.unique(np.concatenate([_csr_keys(o, t) for o, t in parts]))
        return _csr_from_keys(keys, len(states))

    def children(self, states: np.ndarray, with_unique: bool = True) -> tuple:
        parts = self._call_split("children", states, bool(with_unique))
        batch = len(states)
        part_keys = [_csr_keys(p[0], p[1]) for p in parts]
        keys = np.unique(np.concatenate(part_keys))
        offsets, tokens = _csr_from_keys(keys, batch)
        m = len(keys)
        child_states = np.zeros((m, self.n_shards, 2), dtype=np.int64)
        counts = np.zeros(m, dtype=np.int64)
        per_counts, per_unique = [], []
        for (_, _, c, st, u), k, sl in zip(parts, part_keys, self._slices):
            at = np.searchsorted(keys, k)
            child_states[at, sl] = st
            counts[at] += c
            full_c = np.zeros(m, dtype=np.int64)
            full_c[at] = c
            per_counts.append(full_c)
            if with_unique:
                full_u = np.full(m, -1, dtype=np.int64)
                full_u[at] = u
                per_unique.append(full_u)
        unique = merge_unique(per_counts, per_unique) if with_unique else None
        return offsets, tokens, counts, child_states, unique


def open_remote_kb(path: str | Path, *, groups: int = 2, tokenizer: Any = None, verify: bool = True,
                   actor_options: dict[str, Any] | None = None,
                   timeout: float | None = DEFAULT_TIMEOUT_S) -> KnowledgeBase:
    """Open the KB at ``path`` with its shards served by ``groups`` Ray actors (Ray must be initialised,
    or it starts a local cluster). ``actor_options`` go to ``.options()`` of every actor (default
    ``num_cpus=1``; e.g. ``{"resources": {"kb": 1}}`` to place them on chosen nodes). Everything but the
    shards (document ids, texts, lengths, tokenizer) is read here; ``kb.close()`` ends the actors.
    ``timeout``: seconds one call waits for the actors (a ``TimeoutError`` then names the call; None waits
    for ever, as a stalled actor would make it); opening waits at least ``DEFAULT_TIMEOUT_S`` for the
    actors to load and check their shards."""

    def factory(folder: Path, manifest: dict[str, Any], verify_files: bool) -> RemoteShardSet:
        return RemoteShardSet(folder, manifest, verify_files, groups=groups, actor_options=actor_options,
                              timeout=timeout)

    return KnowledgeBase.open(path, tokenizer=tokenizer, verify=verify, index_factory=factory)
