"""Turn tags into the one plain string that consumers (instruction template, baselines, reader) take."""

from __future__ import annotations

import re
from collections.abc import Iterable

from gemkr_llamaindex.tags.tag import Tag, tag_key

_SEPARATORS = re.compile(r"[,;\n\t]+")
_SPACES = re.compile(r"\s+")


def format_tags(
    tags: Iterable[Tag],
    *,
    max_tags: int = 8,
    min_score: float = 0.0,
    kinds: Iterable[str] | None = None,
) -> str:
    """Comma-separated tag texts in the given order, e.g. ``"tiger cat, Egyptian cat, EMT"``.

    Duplicates (case-insensitive) keep their first occurrence; commas inside a tag become spaces so the
    separator stays unambiguous. Returns ``""`` when nothing is left, which consumers treat as "no tags".

    Args:
        max_tags: keep at most this many tags.
        min_score: skip tags scored below this.
        kinds: only these kinds (``"label"``, ``"text"``, ``"object"``); default all.
    """
    if max_tags < 0:
        raise ValueError(f"max_tags must be >= 0, got {max_tags}")
    allowed = set(kinds) if kinds is not None else None
    out: list[str] = []
    seen: set[str] = set()
    for tag in tags:
        if len(out) >= max_tags:
            break
        if tag.score < min_score or (allowed is not None and tag.kind not in allowed):
            continue
        text = _SPACES.sub(" ", _SEPARATORS.sub(" ", tag.text)).strip()
        key = tag_key(text)
        if not text or key in seen:
            continue
        seen.add(key)
        out.append(text)
    return ", ".join(out)
