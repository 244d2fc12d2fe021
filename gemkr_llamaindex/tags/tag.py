"""A tag: one plain-text hint about a photo, with its score and kind (the unit every backend returns)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

TagKind = Literal["object", "text", "label"]
TAG_KINDS: tuple[str, ...] = ("object", "text", "label")


@dataclass(frozen=True)
class Tag:
    """One hint about an image.

    Attributes:
        text: plain words, e.g. ``"tiger cat"`` or ``"EMT"``.
        score: the backend's confidence in [0, 1] (class probability, OCR score, detection confidence).
        kind: ``"label"`` (image classifier), ``"text"`` (OCR) or ``"object"`` (detector).
    """

    text: str
    score: float
    kind: TagKind

    def __post_init__(self) -> None:
        if self.kind not in TAG_KINDS:
            raise ValueError(f"tag kind must be one of {TAG_KINDS}, got {self.kind!r}")
        if not self.text or not self.text.strip():
            raise ValueError("tag text must be non-empty")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tag:
        return cls(text=str(data["text"]), score=float(data["score"]), kind=data["kind"])


_SPACES = re.compile(r"\s+")


def tag_key(text: str) -> str:
    """The identity used to deduplicate tags: case-folded, white space collapsed."""
    return _SPACES.sub(" ", text).strip().casefold()
