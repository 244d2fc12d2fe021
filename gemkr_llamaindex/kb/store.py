"""On-disk pieces of a KB directory besides the FM-index shards: string stores, manifest, checksums.

A string store is ``NAME.bin`` (UTF-8 strings back to back) plus ``NAME.off.npy`` (uint64 offsets, n+1).
Everything is read by memory mapping; nothing is pickled.

Every file of a KB is recorded in the manifest with its size and its XXH64 checksum (computed by the C++
core at memory speed), so :func:`check_files` can verify a whole KB at every open.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

from gemkr_llamaindex.kb import _fmindex
from gemkr_llamaindex.kb.errors import ChecksumError, IndexFormatError

FORMAT_NAME = "gemkr-kb"
# 3: xxh64 checksums of every file (tokenizer included), tokenizer fingerprint, build_id, doc_lengths.npy
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
CHECKSUM = "xxh64"


class StringStoreWriter:
    """Appends strings to ``NAME.bin`` and records offsets; ``close`` writes ``NAME.off.npy``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.bin_path = directory / f"{name}.bin"
        self.off_path = directory / f"{name}.off.npy"
        self._fh: BinaryIO = open(self.bin_path, "wb")
        self._offsets: list[int] = [0]

    def add(self, text: str) -> None:
        """Append one string (raises UnicodeEncodeError for text that is not valid Unicode)."""
        data = text.encode("utf-8")
        self._fh.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def close(self) -> None:
        self._fh.close()
        np.save(self.off_path, np.asarray(self._offsets, dtype=np.uint64), allow_pickle=False)


def load_array(path: Path, dtype: Any, length: int) -> np.ndarray:
    """A memory-mapped .npy array of the given dtype and length, or a clear :class:`IndexFormatError`."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # a damaged .npy header fails in numpy's parser in many ways (SyntaxError, ...)
        raise IndexFormatError(f"{path} is not a readable array ({type(exc).__name__}: {exc}); rebuild the KB") from None
    if arr.dtype != np.dtype(dtype) or arr.shape != (length,):
        raise IndexFormatError(f"{path} holds {arr.dtype}{list(arr.shape)}, expected {np.dtype(dtype)}[{length}]; "
                               "rebuild the KB")
    return arr


class StringStore:
    """Read-only, memory-mapped access to a string store of ``length`` strings."""

    def __init__(self, directory: Path, name: str, length: int) -> None:
        self._offsets = load_array(directory / f"{name}.off.npy", np.uint64, length + 1)
        bin_path = directory / f"{name}.bin"
        size = bin_path.stat().st_size
        if int(self._offsets[0]) != 0 or int(self._offsets[-1]) != size or (self._offsets[1:] < self._offsets[:-1]).any():
            raise IndexFormatError(f"{bin_path}: the offsets do not cover its {size} bytes in order; rebuild the KB")
        self._path = bin_path
        # A plain mmap slices to bytes without numpy overhead (lookups are on the query path).
        self._data: mmap.mmap | bytes = b""
        if size:
            with open(bin_path, "rb") as fh:
                self._data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        try:
            return self.raw(i).decode("utf-8")
        except UnicodeDecodeError:
            raise IndexFormatError(f"{self._path}: string {i} is not valid UTF-8 (corrupt file); rebuild the KB") from None

    def raw(self, i: int) -> bytes:
        a, b = self._offsets[i : i + 2].tolist()
        return self._data[a:b]


# ---------------------------------------------------------------------------------------------- checksums
def checksum_file(path: Path) -> str:
    """XXH64 of a file as 16 hex digits (the C++ core reads it sequentially, without the GIL)."""
    return f"{_fmindex.xxh64_file(str(path)):016x}"


def checksum_bytes(data: bytes) -> str:
    return f"{_fmindex.xxh64(data):016x}"


def file_records(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"bytes": (directory / n).stat().st_size, CHECKSUM: checksum_file(directory / n)} for n in names}


def content_hash(files: dict[str, dict[str, Any]]) -> str:
    """One checksum over every file's name, size and checksum: equal content, equal hash."""
    return checksum_bytes(json.dumps(sorted((n, r["bytes"], r[CHECKSUM]) for n, r in files.items())).encode())


# ---------------------------------------------------------------------------------------------- manifest
def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def parse_manifest(text: bytes, path: Path) -> dict[str, Any]:
    """The manifest read from ``path``, checked for every field the KB uses (:class:`IndexFormatError`)."""
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path} is corrupt ({exc}); rebuild the KB") from None
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{path} is corrupt: it holds a JSON {type(manifest).__name__}, not an object; rebuild the KB")
    if manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path}: not a gemkr knowledge base manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise IndexFormatError(f"{path}: format_version {version!r} is not an integer (corrupt manifest); rebuild the KB")
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: format version {version} is newer than this library supports ({FORMAT_VERSION}); "
            "upgrade gemkr-llamaindex or rebuild the KB with this version"
        )
    if version < FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: format version {version} is older than this library's ({FORMAT_VERSION}); rebuild the KB"
        )
    _check_fields(manifest, path)
    return manifest


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_fields(m: dict[str, Any], path: Path) -> None:
    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"{path}: {what} (corrupt or incomplete manifest); rebuild the KB")

    files = m.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("no 'files' records")
    for name, rec in files.items():
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
            raise bad(f"file name {name!r} points outside the KB directory")
        if not isinstance(rec, dict) or not _is_int(rec.get("bytes")) or not isinstance(rec.get(CHECKSUM), str):
            raise bad(f"the record of {name!r} has no size and {CHECKSUM} checksum")
    for key in ("num_docs", "num_tokens"):
        if not _is_int(m.get(key)):
            raise bad(f"{key!r} is not a count")
    if not isinstance(m.get("build_id"), str) or not m["build_id"]:
        raise bad("no 'build_id'")
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards:
        raise bad("no 'shards'")
    for s in shards:
        if not isinstance(s, dict) or s.get("file") not in files or not all(_is_int(s.get(k)) for k in ("num_docs", "num_tokens")):
            raise bad(f"shard record {s!r} is incomplete or names an unrecorded file")
    for name in ("doc_ids.bin", "doc_ids.off.npy", "doc_ids.order.npy", "texts.bin", "texts.off.npy", "doc_lengths.npy"):
        if name not in files:
            raise bad(f"{name} is not recorded")
    tok = m.get("tokenizer")
    if not isinstance(tok, dict) or not _is_int(tok.get("vocab_size")):
        raise bad("no tokenizer record with a vocab_size")
    fp = tok.get("fingerprint")
    if fp is not None and not (isinstance(fp, dict) and all(isinstance(v, str) for v in fp.values())):
        raise bad("the tokenizer fingerprint is not a table of hashes")
    norm = m.get("normalization")
    if not isinstance(norm, dict) or set(norm) != {"lowercase", "unicode"} or not isinstance(norm["lowercase"], bool):
        raise bad("no valid 'normalization'")


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check ``directory/manifest.json`` (see :func:`parse_manifest`)."""
    if not directory.is_dir():
        raise IndexFormatError(f"knowledge base directory {directory} does not exist")
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexFormatError(missing_manifest_message(directory))
    return parse_manifest(path.read_bytes(), path)


def missing_manifest_message(directory: Path) -> str:
    return (f"{directory} is not a knowledge base: {MANIFEST} is missing (an interrupted build leaves no "
            "manifest); build it with `gemkr kb build` or KnowledgeBase.build")


def check_files(directory: Path, files: dict[str, dict[str, Any]], verify_checksums: bool) -> None:
    """Every recorded file exists with its recorded size (and, if asked, its recorded checksum)."""
    if any(n.startswith("tokenizer/") for n in files) and not (directory / "tokenizer").is_dir():
        raise IndexFormatError(f"the tokenizer folder {directory / 'tokenizer'} is missing: the KB is incomplete; "
                               "rebuild it (or copy the whole KB directory again)")
    for name, rec in files.items():
        path = directory / name
        if not path.is_file():
            raise IndexFormatError(f"{path} is missing; the KB is incomplete, rebuild it")
        size = path.stat().st_size
        if size != rec["bytes"]:
            raise IndexFormatError(
                f"{path} has {size} bytes, the manifest records {rec['bytes']} (truncated or replaced); rebuild the KB"
            )
    if verify_checksums:
        for name, rec in files.items():
            if checksum_file(directory / name) != rec[CHECKSUM]:
                raise ChecksumError(f"{directory / name}: {CHECKSUM} checksum differs from the manifest (corrupt file); "
                                    "rebuild the KB")
