"""Building a KB directory: tokenize, plan shards under a memory budget, index, write, publish atomically.

:func:`build_kb` is what :meth:`KnowledgeBase.build` and :meth:`KnowledgeBase.build_from_token_ids` run;
it returns the finished, published folder and never imports the facade (``knowledge_base`` imports us).
See :mod:`gemkr_llamaindex.kb.directory` for the claim, the swap and the cleanup of killed builds.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gemkr_llamaindex.kb import _fmindex
from gemkr_llamaindex.kb.directory import TargetClaim, publish, remove_stale, temp_dir, version_name
from gemkr_llamaindex.kb.errors import CorpusError, KBError
from gemkr_llamaindex.kb.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    StringStore,
    StringStoreWriter,
    content_hash,
    file_records,
    write_manifest,
)
from gemkr_llamaindex.kb.tokenization import Normalization, encode_batch, fingerprint, tokenizer_name, vocab_hash

# Peak build memory is about 10.5 bytes per token (text + suffix array, then BWT + wavelet levels);
# 12 leaves room for Python-side buffers.
BUILD_BYTES_PER_TOKEN = 12
MAX_SHARD_SYMBOLS = (1 << 31) - 3
DATA_FILES = ["doc_ids.bin", "doc_ids.off.npy", "doc_ids.order.npy", "texts.bin", "texts.off.npy", "doc_lengths.npy"]

Row = tuple[int, str, str, Sequence[int]]  # (row number, doc id, text, token ids)


def default_max_ram_gb() -> float:
    try:
        return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def shard_token_limit(max_ram_gb: float | None, shard_tokens: int | None) -> int:
    """Tokens per shard: ``shard_tokens`` if given, else what the memory budget allows (and the format)."""
    budget_gb = max_ram_gb if max_ram_gb is not None else default_max_ram_gb()
    limit = int(shard_tokens) if shard_tokens else int(budget_gb * 2**30 / BUILD_BYTES_PER_TOKEN)
    return max(1, min(limit, MAX_SHARD_SYMBOLS // 2))


def build_kb(rows: Iterable[Row], out_dir: str | Path, tok: Any, vsize: int, norm: Normalization,
             max_ram_gb: float | None, shard_tokens: int | None, params: dict[str, int], skip_empty: bool,
             overwrite: bool, shard_writer: ShardWriter | None = None) -> Path:
    """Build the KB for ``rows`` and publish it at ``out_dir``; returns the folder that holds it."""
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir) and not overwrite:
        raise KBError(f"{out_dir} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    limit = shard_token_limit(max_ram_gb, shard_tokens)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with TargetClaim(out_dir):
        if os.path.lexists(out_dir) and not overwrite:  # built by someone else before we got the claim
            raise KBError(f"{out_dir} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        remove_stale(out_dir)
        tmp = temp_dir(out_dir, "building")
        version = None
        try:
            t0 = time.perf_counter()
            stats = build_into(tmp, rows, vsize, limit, params, skip_empty, shard_writer or LocalShardWriter())
            names = [s["file"] for s in stats["shards"]] + DATA_FILES
            if tok is not None:
                tok.save_pretrained(tmp / "tokenizer")
                names += sorted(str(p.relative_to(tmp)) for p in (tmp / "tokenizer").rglob("*") if p.is_file())
            files = file_records(tmp, names)
            build_id = uuid.uuid4().hex
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "library_version": library_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_id": build_id,
                "content_hash": content_hash(files),
                "tokenizer": {
                    "name_or_path": tokenizer_name(tok) if tok is not None else None,
                    "class": type(tok).__name__ if tok is not None else None,
                    "vocab_size": vsize,
                    "vocab_hash": vocab_hash(tok) if tok is not None else None,
                    "fingerprint": fingerprint(tok) if tok is not None else None,
                },
                "normalization": norm.to_dict(),
                "num_docs": stats["num_docs"],
                "num_tokens": stats["num_tokens"],
                "skipped_empty": stats["skipped_empty"],
                "shards": stats["shards"],
                "build": {**params, "shard_tokens": limit, "seconds": round(time.perf_counter() - t0, 3)},
                "files": files,
            }
            write_manifest(tmp, manifest)
            version = out_dir.with_name(version_name(out_dir, build_id))
            os.rename(tmp, version)
            publish(version, out_dir, overwrite)
        except BaseException:
            shutil.rmtree(version if version is not None and version.exists() else tmp, ignore_errors=True)
            raise
        remove_stale(out_dir)  # the version it replaced, unless a reader still has it open
    return version


class TokenBuffer:
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


class ShardWriter(Protocol):
    """Indexes the shards a build collects. ``submit`` takes the shard's tokens (and clears the buffer as
    soon as it holds its own copy, so the memory goes back before the suffix array is built); ``finish``
    returns once every submitted shard file is complete at its path, or raises the first failure;
    ``abort`` (the build failed elsewhere) stops or waits out what is still running."""

    def submit(self, buffer: TokenBuffer, offsets: np.ndarray, path: Path, params: dict[str, int]) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class LocalShardWriter:
    """Index each shard in this process as it is submitted: one shard in memory at a time."""

    def submit(self, buffer: TokenBuffer, offsets: np.ndarray, path: Path, params: dict[str, int]) -> None:
        builder = _fmindex.ShardBuilder(buffer.tokens(), offsets)
        buffer.clear()  # the builder keeps its own text; free ours before the suffix array is built
        builder.write(str(path), **params)

    def finish(self) -> None:
        return None

    def abort(self) -> None:
        return None


def _bad_unicode(value: str) -> UnicodeEncodeError | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc
    return None


def _unicode_error(row: int, doc_id: str, what: str, exc: UnicodeEncodeError) -> CorpusError:
    return CorpusError(f"document {doc_id!r} (row {row}): the {what} is not valid Unicode ({exc.reason} at "
                       f"character {exc.start}: {exc.object[exc.start:exc.end]!r}); fix or drop the document")


def encoded_rows(docs: Iterable[tuple[str, str]], tokenizer: Any, norm: Normalization, batch_size: int,
                 show_progress: bool) -> Iterator[Row]:
    """``(row, doc_id, text, token_ids)`` for each document, tokenized in batches, with a progress bar."""
    from tqdm.auto import tqdm

    def encoded(batch: list[tuple[int, str, str]]) -> list[Row]:
        try:
            ids = encode_batch(tokenizer, [norm(t) for _, _, t in batch])
        except (TypeError, ValueError, UnicodeError):
            for r, d, t in batch:  # name the row the tokenizer choked on (a lone surrogate, ...)
                if (exc := _bad_unicode(t)) is not None:
                    raise _unicode_error(r, d, "text", exc) from None
            raise
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


def build_into(directory: Path, rows: Iterable[Row], vsize: int, shard_limit: int, params: dict[str, int],
               skip_empty: bool, writer: ShardWriter) -> dict[str, Any]:
    """Write the document stores, the document lengths and the shards for encoded rows into ``directory``."""
    ids_out = StringStoreWriter(directory, "doc_ids")
    texts_out = StringStoreWriter(directory, "texts")
    shards: list[dict[str, Any]] = []
    lengths: list[int] = []
    buffer = TokenBuffer()
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
        name = f"shard_{len(shards):05d}.fmi"
        writer.submit(buffer, offsets, directory / name, params)
        shards.append({"file": name, "num_docs": len(offsets) - 1, "num_tokens": int(offsets[-1]),
                       "doc_base": shard_docs_start})
        shard_docs_start += len(offsets) - 1
        pending_tokens = 0

    try:
        for row, doc_id, text, ids in rows:
            if not isinstance(doc_id, str) or not doc_id:
                raise CorpusError(f"document at row {row} has an empty id" if doc_id == "" else
                                  f"document at row {row}: the id must be a non-empty str, got {type(doc_id).__name__}")
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
            for what, value, store in (("id", doc_id, ids_out), ("text", text, texts_out)):
                try:
                    store.add(value)  # encodes before writing: nothing is written for a bad string
                except UnicodeEncodeError as exc:
                    raise _unicode_error(row, doc_id, what, exc) from None
            buffer.append(arr)
            lengths.append(len(arr))
            pending_tokens += len(arr) + 1
            total_tokens += len(arr)
        if len(ids_out) == 0:
            raise CorpusError("the corpus is empty: no documents to index" if row < 0 else
                              "every document was empty; nothing to index")
        flush()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        ids_out.close()
        texts_out.close()
    np.save(directory / "doc_lengths.npy", np.asarray(lengths, dtype=np.uint32), allow_pickle=False)
    # Sorted permutation of the ids for lookups by id without an in-memory dict.
    store = StringStore(directory, "doc_ids", len(ids_out))
    order = sorted(range(len(store)), key=store.raw)
    for a, b in zip(order, order[1:]):
        if store.raw(a) == store.raw(b):
            raise CorpusError(f"document id {store[a]!r} occurs twice (rows {min(a, b)} and {max(a, b)}); ids must be unique")
    np.save(directory / "doc_ids.order.npy", np.asarray(order, dtype=np.int64), allow_pickle=False)
    return {"num_docs": len(store), "num_tokens": total_tokens, "skipped_empty": skipped, "shards": shards}


def library_version() -> str:
    """The installed distribution's version (read from its metadata: the KB imports nothing of ours)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gemkr-llamaindex")
    except PackageNotFoundError:
        return "unknown"
