"""Run several taggers on the same images and merge their tags into one list per image."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from gemkr_llamaindex.images import ImageInput, load_image
from gemkr_llamaindex.tags.base import VisualTagger
from gemkr_llamaindex.tags.tag import Tag, tag_key

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def merge_tags(*tag_lists: Iterable[Tag]) -> list[Tag]:
    """Concatenate tag lists, keeping one tag per case-insensitive text: the best-scored one.

    The surviving tag takes the place where its text first appeared, so the order of the inputs (e.g.
    classifier before OCR) is the priority order of the result.
    """
    order: list[str] = []
    best: dict[str, Tag] = {}
    for tags in tag_lists:
        for tag in tags:
            key = tag_key(tag.text)
            if key not in best:
                order.append(key)
                best[key] = tag
            elif tag.score > best[key].score:
                best[key] = tag
    return [best[key] for key in order]


class CompositeTagger(VisualTagger):
    """Several backends as one tagger; each child keeps its own cache, so the composite has none.

    Images are decoded once and handed to every child as decoded images.
    """

    name = "composite"

    def __init__(self, taggers: Sequence[VisualTagger]) -> None:
        super().__init__(cache=None)
        if not taggers:
            raise ValueError("CompositeTagger needs at least one tagger")
        self.taggers = list(taggers)

    @property
    def cache_key(self) -> None:
        return None

    def tag_batch(self, images: Iterable[ImageInput]) -> list[list[Tag]]:
        # Decode and hash once; children reuse both, so their cache keys match direct use of the child.
        loaded = [load_image(img) for img in images]
        per_child = [child.tag_batch(loaded) for child in self.taggers]
        return [merge_tags(*(child_tags[i] for child_tags in per_child)) for i in range(len(loaded))]

    def _tag_images(self, images: Sequence[Image.Image]) -> list[list[Tag]]:
        return self.tag_batch(images)

    def __repr__(self) -> str:
        return f"CompositeTagger({self.taggers!r})"
