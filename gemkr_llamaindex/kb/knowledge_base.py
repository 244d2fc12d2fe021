"""The knowledge base: documents, their token ids, and a sharded FM-index that answers the decoder.

GeMKR's three interfaces map to: GetNext -> :meth:`KnowledgeBase.next_tokens`, ValidDistinct ->
:meth:`KnowledgeBase.unique_doc`, LookupDoc -> :meth:`KnowledgeBase.doc_ids`. Constrained decoding uses
the stateful API instead (:meth:`root_states`, :meth:`extend`, :meth:`children`, :meth:`unique_docs`) so
that a beam's prefix is never searched again from its first token.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gemkr_llamaindex import __version__
from gemkr_llamaindex.kb import _fmindex
from gemkr_llamaindex.kb.corpus import iter_documents
from gemkr_llamaindex.kb.errors import CorpusError, IndexFormatError, KBError, TokenizerMismatchError
from gemkr_llamaindex.kb.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    StringStore,
    StringStoreWriter,
    check_files,
    file_records,
    read_manifest,
    write_manifest,
)
from gemkr_llamaindex.kb.tokenization import Normalization, encode_batch, resolve_tokenizer, vocab_hash

# Peak build memory is about 10.5 bytes per token (text + suffix array, then BWT + wavelet levels);
# 12 leaves room for Python-side buffers.
BUILD_BYTES_PER_TOKEN = 12
MAX_SHARD_SYMBOLS = (1 << 31) - 3
VERIFY_AUTO_LIMIT = 1 << 30  # open() verifies checksums automatically below this total size


@dataclass(frozen=True)
class Children:
    """Continuations of a batch of states, CSR style: state ``b`` owns ``offsets[b]:offsets[b+1]``."""

    offsets: np.ndarray  # (B + 1,) int64
    tokens: np.ndarray  # (M,) int64, increasing within each state
    counts: np.ndarray  # (M,) int64, occurrences of prefix + token
    states: np.ndarray  # (M, S, 2) int64, the state of prefix + token

    def of(self, b: int) -> slice:
        return slice(int(self.offsets[b]), int(self.offsets[b + 1]))


def _default_max_ram_gb() -> float:
    try:
        return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


class KnowledgeBase:
    """A static, memory-mapped KB over LLM-tokenized documents. Build with :meth:`build`, open with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any], tokenizer: Any = None) -> None:
        self.path = path
        self.manifest = manifest
        shards = manifest["shards"]
        self._index = _fmindex.ShardSet([str(path / s["file"]) for s in shards])
        if self._index.n_docs != manifest["num_docs"]:
            raise IndexFormatError(f"{path}: shards hold {self._index.n_docs} docs, manifest says {manifest['num_docs']}")
        self._ids = StringStore(path, "doc_ids")
        self._texts = StringStore(path, "texts")
        self._id_order = np.load(path / "doc_ids.order.npy", mmap_mode="r", allow_pickle=False)
        if not (len(self._ids) == len(self._texts) == len(self._id_order) == self.num_docs):
            raise IndexFormatError(f"{path}: document stores disagree on the number of documents")
        self.normalization = Normalization(**manifest["normalization"])
        self._vocab_size = int(manifest["tokenizer"]["vocab_size"])
        self._tokenizer = None
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
            self._tokenizer = resolve_tokenizer(tokenizer)

    # ------------------------------------------------------------------ build / open
    @classmethod
    def build(
        cls,
        docs: Any,
        tokenizer: Any,
        out_dir: str | Path,
        *,
        lowercase: bool = False,
        unicode_normalization: str | None = None,
        max_ram_gb: float | None = None,
        shard_tokens: int | None = None,
        batch_size: int = 512,
        sample_rate: int = 8,
        cache_min_children: int = 512,
        cache_max_depth: int = 3,
        skip_empty: bool = False,
        overwrite: bool = False,
        show_progress: bool = True,
        **file_options: Any,
    ) -> KnowledgeBase:
        """Tokenize ``docs`` and index them into the directory ``out_dir``.

        ``docs``: (doc_id, text) pairs, LlamaIndex nodes/Documents, or a corpus file (see
        :mod:`gemkr_llamaindex.kb.corpus`; ``file_options`` go to its reader). Shards are built one after
        another, each of at most ``shard_tokens`` tokens (by default what ``max_ram_gb`` allows), so peak
        memory stays under the budget. The build writes into a temporary sibling directory and renames it
        into place only when complete. Empty documents raise :class:`CorpusError` unless ``skip_empty``.
        """
        tok = resolve_tokenizer(tokenizer)
        norm = Normalization(lowercase=lowercase, unicode=unicode_normalization)
        rows = _encoded_rows(iter_documents(docs, **file_options), tok, norm, batch_size, show_progress)
        return cls._build(rows, out_dir, tok, len(tok), norm, max_ram_gb, shard_tokens,
                          dict(sample_rate=sample_rate, cache_min_children=cache_min_children,
                               cache_max_depth=cache_max_depth), skip_empty, overwrite)

    @classmethod
    def build_from_token_ids(
        cls,
        docs: Iterable[tuple[str, Sequence[int]]],
        out_dir: str | Path,
        *,
        vocab_size: int,
        tokenizer: Any = None,
        max_ram_gb: float | None = None,
        shard_tokens: int | None = None,
        sample_rate: int = 8,
        cache_min_children: int = 512,
        cache_max_depth: int = 3,
        overwrite: bool = False,
    ) -> KnowledgeBase:
        """Index pre-tokenized documents ``(doc_id, token_ids)``; no text is stored.

        For corpora tokenized elsewhere and for benchmarks. Without ``tokenizer`` the KB answers token-id
        queries only (``encode``/``text`` need one).
        """
        tok = resolve_tokenizer(tokenizer) if tokenizer is not None else None
        rows = ((row, str(doc_id), "", ids) for row, (doc_id, ids) in enumerate(docs))
        return cls._build(rows, out_dir, tok, int(vocab_size), Normalization(), max_ram_gb, shard_tokens,
                          dict(sample_rate=sample_rate, cache_min_children=cache_min_children,
                               cache_max_depth=cache_max_depth), False, overwrite)

    @classmethod
    def _build(cls, rows: Iterable[tuple[int, str, str, Sequence[int]]], out_dir: str | Path, tok: Any,
               vsize: int, norm: Normalization, max_ram_gb: float | None, shard_tokens: int | None,
               params: dict[str, int], skip_empty: bool, overwrite: bool) -> KnowledgeBase:
        out_dir = Path(out_dir)
        if out_dir.exists() and not overwrite:
            raise KBError(f"{out_dir} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        budget_gb = max_ram_gb if max_ram_gb is not None else _default_max_ram_gb()
        limit = int(shard_tokens) if shard_tokens else int(budget_gb * 2**30 / BUILD_BYTES_PER_TOKEN)
        limit = max(1, min(limit, MAX_SHARD_SYMBOLS // 2))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the finished KB should be shareable
        try:
            t0 = time.perf_counter()
            stats = _build_into(tmp, rows, vsize, limit, params, skip_empty)
            if tok is not None:
                tok.save_pretrained(tmp / "tokenizer")
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "library_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "tokenizer": {
                    "name_or_path": str(getattr(tok, "name_or_path", "")) if tok is not None else None,
                    "class": type(tok).__name__ if tok is not None else None,
                    "vocab_size": vsize,
                    "vocab_hash": vocab_hash(tok) if tok is not None else None,
                },
                "normalization": norm.to_dict(),
                "num_docs": stats["num_docs"],
                "num_tokens": stats["num_tokens"],
                "skipped_empty": stats["skipped_empty"],
                "shards": stats["shards"],
                "build": {**params, "shard_tokens": limit, "seconds": round(time.perf_counter() - t0, 3)},
            }
            data_files = [s["file"] for s in stats["shards"]] + [
                "doc_ids.bin", "doc_ids.off.npy", "doc_ids.order.npy", "texts.bin", "texts.off.npy",
            ]
            manifest["files"] = file_records(tmp, data_files)
            write_manifest(tmp, manifest)
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
                os.replace(out_dir, old)
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(out_dir, manifest, tokenizer=tok)

    @classmethod
    def open(cls, path: str | Path, *, tokenizer: Any = None, verify: bool | None = None) -> KnowledgeBase:
        """Open a KB directory by memory mapping (cheap; processes share pages).

        ``verify``: check every file's SHA-256 (None = only when the KB is under 1 GiB; sizes and headers
        are always checked). ``tokenizer``: if given, it must match the KB's vocabulary exactly.
        """
        path = Path(path)
        manifest = read_manifest(path)
        files = manifest.get("files", {})
        if verify is None:
            verify = sum(r["bytes"] for r in files.values()) <= VERIFY_AUTO_LIMIT
        check_files(path, files, verify)
        try:
            return cls(path, manifest, tokenizer=tokenizer)
        except ValueError as exc:  # _fmindex.FormatError derives from ValueError
            if isinstance(exc, KBError):
                raise
            raise IndexFormatError(str(exc)) from None

    # ------------------------------------------------------------------ properties
    @property
    def num_docs(self) -> int:
        return int(self.manifest["num_docs"])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def num_shards(self) -> int:
        return int(self._index.n_shards)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def tokenizer(self):
        """The tokenizer the KB was built with (saved inside the KB directory)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            if not (self.path / "tokenizer").is_dir():
                raise KBError(f"the KB at {self.path} was built from token ids without a tokenizer; "
                              "open it with KnowledgeBase.open(path, tokenizer=...)")

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))
        return self._tokenizer

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise :class:`TokenizerMismatchError` unless ``tokenizer`` maps every string to the KB's ids."""
        tok = resolve_tokenizer(tokenizer)
        expected = self.manifest["tokenizer"]
        if len(tok) != expected["vocab_size"] or (expected["vocab_hash"] and vocab_hash(tok) != expected["vocab_hash"]):
            raise TokenizerMismatchError(
                f"tokenizer {getattr(tok, 'name_or_path', '?')!r} (vocab {len(tok)}) does not match the one the KB "
                f"at {self.path} was built with ({expected['name_or_path']!r}, vocab {expected['vocab_size']}); "
                "use the same tokenizer as the model, or rebuild the KB with the model's tokenizer"
            )

    def shard_info(self) -> list[dict[str, Any]]:
        return [dict(self._index.shard_info(i)) for i in range(self.num_shards)]

    # ------------------------------------------------------------------ text and documents
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` exactly as documents were tokenized (same normalisation, no specials)."""
        return encode_batch(self.tokenizer, [self.normalization(text)])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts at once (the tokenizer batches on all cores)."""
        return encode_batch(self.tokenizer, [self.normalization(t) for t in texts])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(map(int, ids)))

    def doc_id(self, index: int) -> str:
        """The user's id of the document at KB position ``index``."""
        return self._ids[self._check_index(index)]

    def index_of(self, doc_id: str) -> int:
        """KB position of a document id (binary search over the sorted ids; no dict in memory)."""
        key = str(doc_id).encode("utf-8")
        lo, hi = 0, len(self._id_order)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._ids.raw(int(self._id_order[mid])) < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self._id_order):
            idx = int(self._id_order[lo])
            if self._ids.raw(idx) == key:
                return idx
        raise KeyError(f"no document with id {doc_id!r} in the KB at {self.path}")

    def text(self, doc: str | int) -> str:
        """Stored text of a document, by id (str) or KB position (int)."""
        return self._texts[self._resolve(doc)]

    def doc_tokens(self, doc: str | int) -> np.ndarray:
        """The document's token ids as indexed (re-tokenized from the stored text, deterministically)."""
        return np.asarray(self.encode(self.text(doc)), dtype=np.int64)

    def _resolve(self, doc: str | int) -> int:
        if isinstance(doc, (int, np.integer)):
            return self._check_index(int(doc))
        return self.index_of(doc)

    def _check_index(self, index: int) -> int:
        if not 0 <= index < self.num_docs:
            raise IndexError(f"document index {index} out of range (KB has {self.num_docs} documents)")
        return index

    # ------------------------------------------------------------------ prefix queries
    def _ids_array(self, ids: Sequence[int]) -> np.ndarray:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size:
            # builtins are cheaper than numpy reductions on the short prefixes queries use
            lo, hi = (min(ids), max(ids)) if isinstance(ids, list) else (int(arr.min()), int(arr.max()))
            if lo < 0 or hi >= self._vocab_size:
                bad = int(arr[(arr < 0) | (arr >= self._vocab_size)][0])
                raise ValueError(f"token id {bad} is outside the KB's vocabulary [0, {self._vocab_size})")
        return arr

    def state(self, ids: Sequence[int]) -> np.ndarray:
        """Search state (1, S, 2) of a prefix, searched from its first token."""
        return self._index.search(self._ids_array(ids))

    def next_tokens(self, ids: Sequence[int]) -> np.ndarray:
        """GetNext: sorted distinct token ids that follow ``ids`` anywhere ([] -> every token in the KB)."""
        return self._index.next_tokens(self.state(ids))[1]

    def next_tokens_batch(self, prefixes: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """GetNext for many prefixes with one call into the index for the continuations."""
        if not prefixes:
            return []
        states = np.concatenate([self.state(p) for p in prefixes])
        offsets, tokens = self._index.next_tokens(states)
        return [tokens[offsets[b] : offsets[b + 1]] for b in range(len(prefixes))]

    def count(self, ids: Sequence[int]) -> int:
        """Number of occurrences of ``ids`` (for the empty prefix: the number of token positions)."""
        if len(ids) == 0:
            return self.num_tokens
        return int(self._index.count_of(self._ids_array(ids)))

    def doc_indices(self, ids: Sequence[int]) -> np.ndarray:
        """KB positions of the distinct documents containing ``ids``, increasing."""
        if len(ids) == 0:
            return np.arange(self.num_docs, dtype=np.int64)
        return self._index.docs_of(self._ids_array(ids))

    def doc_ids(self, ids: Sequence[int], limit: int | None = None) -> list[str]:
        """LookupDoc: ids of the distinct documents containing ``ids``, in KB order (first ``limit``)."""
        idx = self.doc_indices(ids)
        if limit is not None:
            idx = idx[:limit]
        return [self._ids[i] for i in idx.tolist()]

    def unique_doc_index(self, ids: Sequence[int]) -> int:
        """KB position of the one document holding every occurrence of ``ids``, or -1."""
        if len(ids) == 0:
            return 0 if self.num_docs == 1 else -1
        return int(self._index.unique_doc_of(self._ids_array(ids)))

    def unique_doc(self, ids: Sequence[int]) -> str | None:
        """ValidDistinct: the document id if every occurrence lies in one document, else None."""
        i = self.unique_doc_index(ids)
        return None if i < 0 else self._ids[i]

    # ------------------------------------------------------------------ stateful API (decoding)
    def root_states(self, batch: int = 1) -> np.ndarray:
        """States of the empty prefix, shape (batch, S, 2)."""
        return self._index.root(int(batch))

    def extend(self, states: np.ndarray, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """States of ``prefix_b + tokens[b]`` from the states of ``prefix_b`` (one LF step per shard)."""
        return self._index.extend(states, np.asarray(tokens, dtype=np.int64))

    def next_tokens_of(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next tokens of every state, CSR ``(offsets, tokens)``: the decoding mask without child states."""
        return self._index.next_tokens(states)

    def children(self, states: np.ndarray) -> Children:
        """All continuations of every state at once (CSR arrays); precomputed for frequent prefixes."""
        return Children(*self._index.children(states))

    def counts(self, states: np.ndarray) -> np.ndarray:
        """Occurrences per state (for the root: rows of the index, i.e. tokens + separators)."""
        return self._index.counts(states)

    def unique_docs(self, states: np.ndarray) -> np.ndarray:
        """Per state, the KB position of its one document, or -1."""
        return self._index.unique_docs(states)

    def __repr__(self) -> str:
        return (
            f"KnowledgeBase({str(self.path)!r}, docs={self.num_docs}, tokens={self.num_tokens}, "
            f"shards={self.num_shards}, tokenizer={self.manifest['tokenizer']['name_or_path']!r})"
        )


class _TokenBuffer:
    """The token ids of the shard being collected, in one growing array.

    One large allocation (not one small array per document) so that freeing it returns the memory to
    the OS before the suffix array is built; small freed arrays would stay in the heap and add ~4
    bytes/token to the build's peak.
    """

    def __init__(self) -> None:
        self._data = np.empty(0, dtype=np.uint32)
        self._n = 0
        self.lengths: list[int] = []

    def append(self, ids: np.ndarray) -> None:
        need = self._n + len(ids)
        if need > len(self._data):
            grown = np.empty(max(need, int(len(self._data) * 1.5), 1 << 16), dtype=np.uint32)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : need] = ids
        self._n = need
        self.lengths.append(len(ids))

    def tokens(self) -> np.ndarray:
        return self._data[: self._n]

    def clear(self) -> None:
        self._data = np.empty(0, dtype=np.uint32)
        self._n = 0
        self.lengths = []


def _encoded_rows(docs: Iterable[tuple[str, str]], tokenizer: Any, norm: Normalization, batch_size: int,
                  show_progress: bool) -> Iterator[tuple[int, str, str, list[int]]]:
    """``(row, doc_id, text, token_ids)`` for each document, tokenized in batches, with a progress bar."""
    from tqdm.auto import tqdm

    def encoded(batch: list[tuple[int, str, str]]) -> list[tuple[int, str, str, list[int]]]:
        ids = encode_batch(tokenizer, [norm(t) for _, _, t in batch])
        return [(r, d, t, i) for (r, d, t), i in zip(batch, ids)]

    total = len(docs) if hasattr(docs, "__len__") else None
    batch: list[tuple[int, str, str]] = []
    with tqdm(total=total, unit="doc", desc="tokenizing", disable=not show_progress) as bar:
        for row, (doc_id, text) in enumerate(docs):
            batch.append((row, doc_id, text))
            if len(batch) >= batch_size:
                yield from encoded(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            yield from encoded(batch)
            bar.update(len(batch))


def _build_into(
    directory: Path,
    rows: Iterable[tuple[int, str, str, Sequence[int]]],
    vsize: int,
    shard_limit: int,
    params: dict[str, int],
    skip_empty: bool,
) -> dict[str, Any]:
    """Write the document stores and the shards for encoded rows into ``directory``."""
    ids_out = StringStoreWriter(directory, "doc_ids")
    texts_out = StringStoreWriter(directory, "texts")
    shards: list[dict[str, Any]] = []
    buffer = _TokenBuffer()
    pending_tokens = 0
    shard_docs_start = 0
    skipped = 0
    total_tokens = 0
    row = -1

    def flush() -> None:
        nonlocal pending_tokens, shard_docs_start
        if not buffer.lengths:
            return
        offsets = np.zeros(len(buffer.lengths) + 1, dtype=np.uint64)
        np.cumsum(np.asarray(buffer.lengths, dtype=np.uint64), out=offsets[1:])
        builder = _fmindex.ShardBuilder(buffer.tokens(), offsets)
        buffer.clear()  # the builder keeps its own text; free ours before the suffix array is built
        name = f"shard_{len(shards):05d}.fmi"
        builder.write(str(directory / name), **params)
        shards.append({"file": name, "num_docs": len(offsets) - 1, "num_tokens": int(offsets[-1]),
                       "doc_base": shard_docs_start})
        shard_docs_start += len(offsets) - 1
        pending_tokens = 0

    try:
        for row, doc_id, text, ids in rows:
            if not doc_id:
                raise CorpusError(f"document at row {row} has an empty id")
            if len(ids) == 0:
                if skip_empty:
                    skipped += 1
                    continue
                raise CorpusError(
                    f"document {doc_id!r} (row {row}) is empty after tokenization; remove it or pass "
                    "skip_empty=True (CLI: --skip-empty)"
                )
            arr = np.asarray(ids, dtype=np.int64)
            if arr.max() >= vsize or arr.min() < 0:
                bad = int(arr[(arr < 0) | (arr >= vsize)][0])
                raise CorpusError(
                    f"document {doc_id!r} (row {row}): token id {bad} is outside the tokenizer's "
                    f"vocabulary of {vsize}; the tokenizer (or the token ids) are inconsistent"
                )
            if len(arr) + 1 > MAX_SHARD_SYMBOLS // 2:
                raise CorpusError(f"document {doc_id!r} (row {row}) has {len(arr)} tokens, too long for one shard")
            if pending_tokens + len(arr) > shard_limit:
                flush()
            ids_out.add(doc_id)
            texts_out.add(text)
            buffer.append(arr)
            pending_tokens += len(arr) + 1
            total_tokens += len(arr)
        if len(ids_out) == 0:
            raise CorpusError("the corpus is empty: no documents to index" if row < 0 else
                              "every document was empty; nothing to index")
        flush()
    finally:
        ids_out.close()
        texts_out.close()
    # Sorted permutation of the ids for lookups by id without an in-memory dict.
    store = StringStore(directory, "doc_ids")
    order = sorted(range(len(store)), key=store.raw)
    for a, b in zip(order, order[1:]):
        if store.raw(a) == store.raw(b):
            raise CorpusError(f"document id {store[a]!r} occurs twice (rows {min(a, b)} and {max(a, b)}); ids must be unique")
    np.save(directory / "doc_ids.order.npy", np.asarray(order, dtype=np.int64), allow_pickle=False)
    return {"num_docs": len(store), "num_tokens": total_tokens, "skipped_empty": skipped, "shards": shards}
