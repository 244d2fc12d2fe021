"""Content-addressed disk cache of tag lists: one small JSON file per (backend, image hash).

Files are written to a temporary name in the same folder and renamed, so a reader never sees a
half-written entry, and concurrent writers of the same image simply race to an identical file.
A corrupt or foreign entry counts as a miss (and is overwritten), never as an error.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from gemkr_llamaindex.tags.tag import Tag

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._+=-]{1,200}$")
_FORMAT = 1


def default_cache_root() -> Path:
    """``assets.cache_dir()/tags``: the root under which each backend gets its own folder."""
    from gemkr_llamaindex import assets

    return assets.cache_dir() / "tags"


class TagCache:
    """Tags keyed by image sha256, under ``<root>/<backend_key>/<sha256>.json``."""

    def __init__(self, backend_key: str, root: str | Path | None = None) -> None:
        if not _SAFE_KEY.match(backend_key):
            raise ValueError(
                f"backend cache key {backend_key!r} must be a plain file name ([A-Za-z0-9._+=-])"
            )
        self.backend_key = backend_key
        self.folder = Path(root if root is not None else default_cache_root()) / backend_key

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.json"

    def get(self, digest: str) -> list[Tag] | None:
        try:
            payload = json.loads(self.path(digest).read_text(encoding="utf-8"))
            if payload.get("format") != _FORMAT or payload.get("backend") != self.backend_key:
                return None
            return [Tag.from_dict(t) for t in payload["tags"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, digest: str, tags: list[Tag]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {"format": _FORMAT, "backend": self.backend_key, "tags": [t.to_dict() for t in tags]}
        fd, tmp = tempfile.mkstemp(prefix=f".{digest[:16]}-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh, ensure_ascii=False)
            os.replace(tmp, self.path(digest))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> int:
        """Delete this backend's entries; returns how many were removed."""
        removed = 0
        if self.folder.is_dir():
            for entry in self.folder.glob("*.json"):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed
