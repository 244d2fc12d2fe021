"""On-disk pieces of a KB directory besides the FM-index shards: string stores, manifest, checksums.

A string store is ``NAME.bin`` (UTF-8 strings back to back) plus ``NAME.off.npy`` (uint64 offsets, n+1).
Everything is read by memory mapping; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gemkr_llamaindex.kb.errors import ChecksumError, IndexFormatError

FORMAT_NAME = "gemkr-kb"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class StringStoreWriter:
    """Appends strings to ``NAME.bin`` and records offsets; ``close`` writes ``NAME.off.npy``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.bin_path = directory / f"{name}.bin"
        self.off_path = directory / f"{name}.off.npy"
        self._fh: BinaryIO = open(self.bin_path, "wb")
        self._offsets: list[int] = [0]

    def add(self, text: str) -> None:
        data = text.encode("utf-8")
        self._fh.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def close(self) -> None:
        self._fh.close()
        np.save(self.off_path, np.asarray(self._offsets, dtype=np.uint64), allow_pickle=False)


class StringStore:
    """Read-only, memory-mapped access to a string store."""

    def __init__(self, directory: Path, name: str) -> None:
        self._offsets = np.load(directory / f"{name}.off.npy", mmap_mode="r", allow_pickle=False)
        bin_path = directory / f"{name}.bin"
        size = bin_path.stat().st_size
        if size != int(self._offsets[-1]):
            raise IndexFormatError(f"{bin_path}: {size} bytes, the offsets expect {int(self._offsets[-1])}")
        # A plain mmap slices to bytes without numpy overhead (lookups are on the query path).
        self._data: mmap.mmap | bytes = b""
        if size:
            with open(bin_path, "rb") as fh:
                self._data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.raw(i).decode("utf-8")

    def raw(self, i: int) -> bytes:
        a, b = self._offsets[i : i + 2].tolist()
        return self._data[a:b]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_records(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"bytes": (directory / n).stat().st_size, "sha256": sha256_file(directory / n)} for n in names}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise IndexFormatError(f"knowledge base directory {directory} does not exist")
    if not path.is_file():
        raise IndexFormatError(
            f"{directory} is not a knowledge base: {MANIFEST} is missing (an interrupted build leaves no "
            "manifest); build it with `gemkr kb build` or KnowledgeBase.build"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path} is corrupt ({exc}); rebuild the KB") from None
    if manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path}: not a gemkr knowledge base manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: format version {version} is newer than this library supports ({FORMAT_VERSION}); "
            "upgrade gemkr-llamaindex or rebuild the KB with this version"
        )
    if version < FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: format version {version} is older than this library's ({FORMAT_VERSION}); rebuild the KB"
        )
    return manifest


def check_files(directory: Path, files: dict[str, dict[str, Any]], verify_checksums: bool) -> None:
    """Every recorded file exists with its recorded size (and, if asked, its recorded SHA-256)."""
    for name, rec in files.items():
        path = directory / name
        if not path.is_file():
            raise IndexFormatError(f"{path} is missing; the KB is incomplete, rebuild it")
        size = path.stat().st_size
        if size != rec["bytes"]:
            raise IndexFormatError(
                f"{path} has {size} bytes, the manifest records {rec['bytes']} (truncated or replaced); rebuild the KB"
            )
        if verify_checksums and sha256_file(path) != rec["sha256"]:
            raise ChecksumError(f"{path}: SHA-256 differs from the manifest (corrupt file); rebuild the KB")
