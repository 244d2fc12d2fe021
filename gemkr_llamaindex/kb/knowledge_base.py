"""The knowledge base: documents, their token ids, and a sharded FM-index that answers the decoder.

GeMKR's three interfaces map to: GetNext -> :meth:`KnowledgeBase.next_tokens`, ValidDistinct ->
:meth:`KnowledgeBase.unique_doc`, LookupDoc -> :meth:`KnowledgeBase.doc_ids`.

Constrained decoding talks to the KB through a small stateful protocol, one native call per step for
the whole batch (the GIL is released, inputs are checked once):

* :meth:`root_states` ``(batch, anchor="any"|"doc_start")``: the empty prefix, anywhere or anchored at
  document starts (GENRE-style generation of a document's opening);
* :meth:`step` ``(states, tokens) -> StepResult``: extend each state by its token and return the new
  states with their occurrence counts and unique documents; the token :data:`END` ends the clue at a
  document's end (a *terminal* state, which no token extends);
* :meth:`continuations` (the allowed tokens, :data:`END` first where a document ends there) and
  :meth:`children` (continuations with counts, child states and unique documents).

The facade opens and queries; building lives in :mod:`gemkr_llamaindex.kb.build`, the on-disk layout
(atomic swap, reader locks) in :mod:`gemkr_llamaindex.kb.directory`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gemkr_llamaindex.kb import _fmindex
from gemkr_llamaindex.kb.build import (  # noqa: F401  (re-exported for callers of the old module)
    BUILD_BYTES_PER_TOKEN,
    MAX_SHARD_SYMBOLS,
    build_kb,
    encoded_rows,
)
from gemkr_llamaindex.kb.build import default_max_ram_gb as _default_max_ram_gb  # noqa: F401
from gemkr_llamaindex.kb.corpus import iter_documents
from gemkr_llamaindex.kb.directory import bind, copy_folder
from gemkr_llamaindex.kb.errors import IndexFormatError, KBError, TokenizerMismatchError
from gemkr_llamaindex.kb.store import (
    MANIFEST,
    StringStore,
    check_files,
    load_array,
    parse_manifest,
)
from gemkr_llamaindex.kb.tokenization import (
    Normalization,
    encode_batch,
    fingerprint_differences,
    resolve_tokenizer,
    tokenizer_name,
)

END = int(_fmindex.END)  # the token that ends a clue at a document's end (-1; never a real token id)
ANCHORS = ("any", "doc_start")


@dataclass(frozen=True)
class Children:
    """Continuations of a batch of states, CSR style: state ``b`` owns ``offsets[b]:offsets[b+1]``.

    Within a state, :data:`END` comes first (where some occurrence ends a document), then the tokens in
    increasing order.
    """

    offsets: np.ndarray  # (B + 1,) int64
    tokens: np.ndarray  # (M,) int64: END first where present, then increasing token ids
    counts: np.ndarray  # (M,) int64, occurrences of prefix + token (END: documents ending with prefix)
    states: np.ndarray  # (M, S, 2) int64, the state of prefix + token (END: a terminal state)
    unique: np.ndarray | None = None  # (M,) int64, KB position of the child's one document, or -1

    def of(self, b: int) -> slice:
        return slice(int(self.offsets[b]), int(self.offsets[b + 1]))


@dataclass(frozen=True)
class StepResult:
    """What :meth:`KnowledgeBase.step` returns for a batch of B states."""

    states: np.ndarray  # (B, S, 2) int64: the extended states (terminal where the token was END)
    counts: np.ndarray  # (B,) int64: occurrences (terminal: documents that end with the prefix)
    unique: np.ndarray  # (B,) int64: KB position of the one document holding every occurrence, or -1


@dataclass(frozen=True)
class NgramLookup:
    """What :meth:`KnowledgeBase.lookup_ngrams` returns for a batch of B n-grams."""

    counts: np.ndarray  # (B,) int64: occurrences in the KB
    offsets: np.ndarray  # (B + 1,) int64: n-gram b's documents are docs[offsets[b]:offsets[b + 1]]
    docs: np.ndarray  # int64 KB positions, increasing within an n-gram; empty where count is 0 or over the cap

    def docs_of(self, b: int) -> np.ndarray:
        return self.docs[int(self.offsets[b]) : int(self.offsets[b + 1])]


class KnowledgeBase:
    """A static, memory-mapped KB over LLM-tokenized documents. Build with :meth:`build`, open with :meth:`open`.

    ``path`` is the path it was opened by; ``real_path`` the folder it is bound to (resolved at open, so
    a later overwrite of ``path`` does not change what this object reads).
    """

    END = END

    def __init__(self, path: Path, manifest: dict[str, Any], tokenizer: Any = None, *,
                 real_path: Path | None = None, reader_lock: BinaryIO | None = None,
                 check_tokenizer: bool = True, index: Any = None) -> None:
        self.path = Path(path)
        self.real_path = Path(real_path) if real_path is not None else self.path
        self.manifest = manifest
        self._reader_lock = reader_lock  # shared flock on real_path/manifest.json while this object lives
        folder = self.real_path
        n = int(manifest["num_docs"])
        # ``index``: anything with the native ShardSet's methods over this manifest's shards (a remote one:
        # gemkr_llamaindex.distributed); by default the shards are memory-mapped here.
        self._index = index if index is not None else _fmindex.ShardSet([str(folder / s["file"]) for s in manifest["shards"]])
        if self._index.n_docs != n:
            raise IndexFormatError(f"{folder}: shards hold {self._index.n_docs} docs, manifest says {n}")
        if sum(s["n_tokens"] for s in self.shard_info()) != manifest["num_tokens"]:
            raise IndexFormatError(f"{folder}: shards hold another number of tokens than the manifest; rebuild the KB")
        self._ids = StringStore(folder, "doc_ids", n)
        self._texts = StringStore(folder, "texts", n)
        self._id_order = load_array(folder / "doc_ids.order.npy", np.int64, n)
        if n and (int(self._id_order.min()) < 0 or int(self._id_order.max()) >= n):
            raise IndexFormatError(f"{folder}/doc_ids.order.npy holds positions outside [0, {n}); rebuild the KB")
        self._doc_lengths = load_array(folder / "doc_lengths.npy", np.uint32, n)
        if int(self._doc_lengths.sum(dtype=np.uint64)) != manifest["num_tokens"]:
            raise IndexFormatError(f"{folder}/doc_lengths.npy does not add up to the KB's tokens; rebuild the KB")
        self.normalization = Normalization(**manifest["normalization"])
        self._vocab_size = int(manifest["tokenizer"]["vocab_size"])
        self._tokenizer = None
        if tokenizer is not None:
            if check_tokenizer:
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
        shard_writer: Any = None,
        **file_options: Any,
    ) -> KnowledgeBase:
        """Tokenize ``docs`` and index them into the directory ``out_dir``.

        ``docs``: (doc_id, text) pairs, LlamaIndex nodes/Documents, or a corpus file (see
        :mod:`gemkr_llamaindex.kb.corpus`; ``file_options`` go to its reader). Shards are built one after
        another, each of at most ``shard_tokens`` tokens (by default what ``max_ram_gb`` allows), so peak
        memory stays under the budget. Only one build into ``out_dir`` runs at a time; the new KB
        replaces an old one atomically (see :mod:`gemkr_llamaindex.kb.directory`). Empty documents raise
        :class:`CorpusError` unless ``skip_empty``. ``shard_writer`` decides where shards are indexed
        (default: here, one after another; :class:`gemkr_llamaindex.distributed.RayShardWriter`: Ray tasks
        in parallel); the files are the same either way.
        """
        tok = resolve_tokenizer(tokenizer)
        norm = Normalization(lowercase=lowercase, unicode=unicode_normalization)
        rows = encoded_rows(iter_documents(docs, **file_options), tok, norm, batch_size, show_progress)
        folder = build_kb(rows, out_dir, tok, len(tok), norm, max_ram_gb, shard_tokens,
                          dict(sample_rate=sample_rate, cache_min_children=cache_min_children,
                               cache_max_depth=cache_max_depth), skip_empty, overwrite, shard_writer)
        return cls._open_folder(Path(out_dir), folder, tokenizer=tok, verify=False, check_tokenizer=False)

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
        shard_writer: Any = None,
    ) -> KnowledgeBase:
        """Index pre-tokenized documents ``(doc_id, token_ids)``; no text is stored.

        For corpora tokenized elsewhere and for benchmarks. Without ``tokenizer`` the KB answers token-id
        queries only (``encode``/``text`` need one).
        """
        tok = resolve_tokenizer(tokenizer) if tokenizer is not None else None
        rows = ((row, doc_id, "", ids) for row, (doc_id, ids) in enumerate(docs))
        folder = build_kb(rows, out_dir, tok, int(vocab_size), Normalization(), max_ram_gb, shard_tokens,
                          dict(sample_rate=sample_rate, cache_min_children=cache_min_children,
                               cache_max_depth=cache_max_depth), False, overwrite, shard_writer)
        return cls._open_folder(Path(out_dir), folder, tokenizer=tok, verify=False, check_tokenizer=False)

    @classmethod
    def open(cls, path: str | Path, *, tokenizer: Any = None, verify: bool | None = True,
             index_factory: Callable[[Path, dict[str, Any], bool], Any] | None = None) -> KnowledgeBase:
        """Open a KB directory by memory mapping (cheap; processes share pages).

        ``verify`` (default True, at every size): check every file's XXH64 checksum against the manifest
        (memory speed; figures in docs/results.md). With ``verify=False`` sizes, the manifest and every
        structural value of the shards are still checked, so a corrupt file raises
        :class:`IndexFormatError` rather than crashing. ``tokenizer``: if given, it must produce the
        KB's ids (vocabulary and pipeline; :class:`TokenizerMismatchError` otherwise).

        ``index_factory(folder, manifest, verify)``: who serves the shards (e.g. Ray actors:
        :func:`gemkr_llamaindex.distributed.open_remote_kb`). It verifies the shard files it opens; this
        process then checks only the other files' checksums and maps no shard.
        """
        path = Path(path)
        folder, lock, text = bind(path)
        try:
            manifest = parse_manifest(text, folder / MANIFEST)
            return cls._from_manifest(path, folder, lock, manifest, tokenizer, verify is not False, True,
                                      index_factory)
        except BaseException:
            lock.close()
            raise

    @classmethod
    def _open_folder(cls, path: Path, folder: Path, **kw: Any) -> KnowledgeBase:
        real, lock, text = bind(folder)
        try:
            manifest = parse_manifest(text, real / MANIFEST)
            return cls._from_manifest(path, real, lock, manifest, kw.get("tokenizer"), kw["verify"],
                                      kw["check_tokenizer"])
        except BaseException:
            lock.close()
            raise

    @classmethod
    def _from_manifest(cls, path: Path, folder: Path, lock: BinaryIO, manifest: dict[str, Any], tokenizer: Any,
                       verify: bool, check_tok: bool, index_factory: Any = None) -> KnowledgeBase:
        if index_factory is None:
            check_files(folder, manifest["files"], verify)
            return cls(path, manifest, tokenizer, real_path=folder, reader_lock=lock, check_tokenizer=check_tok)
        shard_files = {s["file"] for s in manifest["shards"]}
        files = manifest["files"]
        check_files(folder, {n: r for n, r in files.items() if n not in shard_files}, verify)
        check_files(folder, {n: r for n, r in files.items() if n in shard_files}, False)  # the factory checksums them
        index = index_factory(folder, manifest, verify)
        try:
            return cls(path, manifest, tokenizer, real_path=folder, reader_lock=lock, check_tokenizer=check_tok,
                       index=index)
        except BaseException:
            getattr(index, "close", lambda: None)()
            raise

    def close(self) -> None:
        """Release the reader lock (the memory maps go with the object) and a remote index's servers."""
        getattr(self._index, "close", lambda: None)()
        if self._reader_lock is not None:
            self._reader_lock.close()
            self._reader_lock = None

    def copy_to(self, dest_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Copy exactly the files this KB is bound to into ``dest_dir``, a self-contained KB directory.

        The copy is written into a temporary sibling and renamed into place at once, then verified
        against the manifest's checksums; ``dest_dir`` keeps this KB's :attr:`build_id`.
        """
        names = sorted(self.manifest["files"]) + [MANIFEST]
        dest = copy_folder(self.real_path, names, Path(dest_dir), overwrite)
        check_files(dest, self.manifest["files"], True)
        return dest

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
    def build_id(self) -> str:
        """Identity of this build: a random uuid4 (hex) drawn when it was built; copies keep it."""
        return str(self.manifest["build_id"])

    @property
    def content_hash(self) -> str:
        """XXH64 over every file's name, size and checksum: equal for KBs with identical files."""
        return str(self.manifest.get("content_hash", ""))

    @property
    def tokenizer(self):
        """The tokenizer the KB was built with, loaded on first use from the folder this KB is bound to."""
        if self._tokenizer is None:
            folder = self.real_path / "tokenizer"
            if self.manifest["tokenizer"].get("class") is None:
                raise KBError(f"the KB at {self.path} was built from token ids without a tokenizer; "
                              "open it with KnowledgeBase.open(path, tokenizer=...)")
            if not folder.is_dir():
                raise IndexFormatError(f"the tokenizer folder {folder} is missing: the KB is incomplete; rebuild it "
                                       "(or copy the whole KB directory again)")
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
            except Exception as exc:  # a damaged tokenizer file fails in many ways (JSON, Rust, OSError ...)
                raise IndexFormatError(f"cannot load the KB's tokenizer from {folder} ({type(exc).__name__}: "
                                       f"{str(exc)[:200]}); rebuild the KB") from exc
        return self._tokenizer

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise :class:`TokenizerMismatchError` unless ``tokenizer`` maps every string to the KB's ids.

        Compares the vocabulary size and the hash of each part of the tokenizer's pipeline that decides
        the ids (normaliser, pre-tokenizer, model, added tokens; see ``tokenization.fingerprint``).
        """
        tok = resolve_tokenizer(tokenizer)
        expected = self.manifest["tokenizer"]
        problems = []
        if len(tok) != expected["vocab_size"]:
            problems.append(f"its vocabulary has {len(tok)} tokens, the KB's {expected['vocab_size']}")
        if expected.get("fingerprint"):
            parts = fingerprint_differences(expected["fingerprint"], tok)
            if parts:
                problems.append(f"its {', '.join(parts)} {'differs' if len(parts) == 1 else 'differ'}")
        if problems:
            raise TokenizerMismatchError(
                f"tokenizer {tokenizer_name(tok)!r} ({type(tok).__name__}) does not match the one the KB at "
                f"{self.path} was built with ({expected['name_or_path']!r}, {expected.get('class')}): "
                f"{'; '.join(problems)}. Use the same tokenizer as the model, or rebuild the KB with the model's tokenizer"
            )

    def shard_info(self) -> list[dict[str, Any]]:
        return [dict(self._index.shard_info(i)) for i in range(self.num_shards)]

    def doc_lengths(self) -> np.ndarray:
        """Token count of every document, in KB order (uint32, memory-mapped, read-only)."""
        return self._doc_lengths

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

    def state(self, ids: Sequence[int], anchor: str = "any") -> np.ndarray:
        """Search state (1, S, 2) of a prefix, searched from its first token (``anchor`` as in :meth:`root_states`)."""
        return self._index.search(self._ids_array(ids), self._anchored(anchor))

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

    def ngram_counts(self, ngrams: Sequence[Sequence[int]]) -> np.ndarray:
        """Occurrences of many n-grams, (B,) int64, in one native call; equals :meth:`count` per n-gram."""
        return self.counts(self._ngram_states(ngrams))

    def _ngram_states(self, ngrams: Sequence[Sequence[int]]) -> np.ndarray:
        lengths = np.fromiter((len(n) for n in ngrams), dtype=np.int64, count=len(ngrams))
        if (lengths == 0).any():
            raise ValueError(f"n-gram {int(np.flatnonzero(lengths == 0)[0])} is empty")
        offsets = np.zeros(len(ngrams) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = [int(t) for n in ngrams for t in n]
        ids = self._ids_array(flat) if flat else np.zeros(0, dtype=np.int64)
        return self._index.search_many(ids, offsets, False)

    def lookup_ngrams(self, ngrams: Sequence[Sequence[int]], max_count: int | None = None,
                      word_starts: np.ndarray | None = None) -> NgramLookup:
        """Counts and containing documents of many n-grams in a few native calls (evidence scoring).

        Documents are listed for n-grams that occur at least once and at most ``max_count`` times
        (every occurring n-gram when None); locating costs one short LF walk per occurrence, which is why
        frequent n-grams are skipped. Equals :meth:`count` and :meth:`doc_indices` per n-gram.

        ``word_starts`` ((vocab,) bool: which tokens begin a word) counts only the occurrences that end a
        word: followed by a token that begins one, or by the document's end (so "Cat" is not found in
        "Catfish"). The n-gram's continuations are listed in one call and the qualifying ones located.
        """
        states = self._ngram_states(ngrams)
        if word_starts is None:
            counts = self.counts(states)
            cap = int(counts.max(initial=0)) if max_count is None else int(max_count)
            doc_offsets, docs = self._index.docs_many(states, cap)
            return NgramLookup(counts, doc_offsets, docs)
        starts = np.asarray(word_starts, dtype=bool)
        ch = self.children(states, unique=False)
        ends = (ch.tokens == END) | starts[np.clip(ch.tokens, 0, len(starts) - 1)] & (ch.tokens >= 0)
        owner = np.repeat(np.arange(len(ngrams)), np.diff(ch.offsets))
        counts = np.bincount(owner[ends], weights=ch.counts[ends], minlength=len(ngrams)).astype(np.int64)
        cap = int(counts.max(initial=0)) if max_count is None else int(max_count)
        listed = ends & (counts[owner] > 0) & (counts[owner] <= cap)
        child_offsets, child_docs = self._index.docs_many(ch.states[listed], np.iinfo(np.int64).max)
        per_child = np.diff(child_offsets)
        doc_owner = np.repeat(owner[listed], per_child)
        keys = np.unique(doc_owner * self.num_docs + child_docs)  # sorted by n-gram, then document, distinct
        docs = keys % self.num_docs if self.num_docs else keys
        offsets = np.searchsorted(keys // max(self.num_docs, 1), np.arange(len(ngrams) + 1)).astype(np.int64)
        return NgramLookup(counts, offsets, docs.astype(np.int64))

    # ------------------------------------------------------------------ stateful API (decoding)
    @staticmethod
    def _anchored(anchor: str) -> bool:
        if anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {anchor!r}; valid anchors: 'any' (the prefix may start anywhere in "
                             "a document) and 'doc_start' (it starts at a document's first token)")
        return anchor == "doc_start"

    def root_states(self, batch: int = 1, anchor: str = "any") -> np.ndarray:
        """States of the empty prefix, shape (batch, S, 2) int64.

        ``anchor="any"``: extensions match anywhere. ``anchor="doc_start"``: extending by t1..tk matches
        only documents that *start* with t1..tk (counts = such documents); + :data:`END` then means the
        whole document is t1..tk.
        """
        return self._index.root(int(batch), self._anchored(anchor))

    def step(self, states: np.ndarray, tokens: Sequence[int] | np.ndarray) -> StepResult:
        """Extend every state by its token and count and place the results, in one native call.

        ``tokens[b]`` is a token id or :data:`END` (the clue ends at a document's end: the new state is
        terminal; its count is the number of documents ending with the prefix and its unique document
        the one such document, if only one). Equals ``extend`` + ``counts`` + ``unique_docs``.
        """
        return StepResult(*self._index.step(states, np.asarray(tokens, dtype=np.int64)))

    def continuations(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Allowed next tokens of every state, CSR ``(offsets, tokens)``: :data:`END` first where some
        occurrence of the prefix ends a document, then the token ids in increasing order."""
        return self._index.next_tokens(states, True)

    def extend(self, states: np.ndarray, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """States of ``prefix_b + tokens[b]`` from the states of ``prefix_b`` (one LF step per shard).

        Token ids only: a negative token (also :data:`END`) gives the empty state; use :meth:`step` for END.
        """
        return self._index.extend(states, np.asarray(tokens, dtype=np.int64))

    def next_tokens_of(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next tokens of every state, CSR ``(offsets, tokens)``: the decoding mask without child states or END."""
        return self._index.next_tokens(states)

    def children(self, states: np.ndarray, *, unique: bool = True) -> Children:
        """All continuations of every state at once (CSR arrays; :data:`END` children included) with their
        counts, states and (unless ``unique=False``) unique documents, computed in the same native call."""
        return Children(*self._index.children(states, bool(unique)))

    def counts(self, states: np.ndarray) -> np.ndarray:
        """Occurrences per state (for the root: rows of the index, i.e. tokens + separators; for a
        terminal state: documents that end with the prefix)."""
        return self._index.counts(states)

    def unique_docs(self, states: np.ndarray) -> np.ndarray:
        """Per state, the KB position of its one document, or -1."""
        return self._index.unique_docs(states)

    @staticmethod
    def is_terminal(states: np.ndarray) -> np.ndarray:
        """(B,) bool: which states ended with :data:`END` (no token extends them)."""
        return (np.asarray(states)[:, :, 0] < 0).any(axis=1)

    def __repr__(self) -> str:
        return (
            f"KnowledgeBase({str(self.path)!r}, docs={self.num_docs}, tokens={self.num_tokens}, "
            f"shards={self.num_shards}, tokenizer={self.manifest['tokenizer']['name_or_path']!r})"
        )

