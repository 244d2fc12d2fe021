"""The tagger interface: image in, a short list of scored text tags out.

A tag is a plain-text hint about a photo (an ImageNet label, a word read by OCR, a detected object
class). Consumers never see backends: they take the string made by :func:`format_tags`. The base
class owns image decoding, the content-hash disk cache and batching, so a backend only implements
``_tag_images`` on already-decoded RGB images.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemkr_llamaindex.images import ImageInput, load_image
from gemkr_llamaindex.tags.cache import TagCache
from gemkr_llamaindex.tags.tag import Tag

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

TAGS_EXTRA_HINT = 'pip install "gemkr-llamaindex[tags]"'


class MissingExtraError(ImportError):
    """An optional dependency of a tag backend is not installed."""


def require(module: str, backend: str) -> Any:
    """Import ``module`` or fail with a message that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"the {backend} tag backend needs the Python module {module!r}, which is not installed "
            f"({exc}); install the tags extra: {TAGS_EXTRA_HINT}"
        ) from exc


class VisualTagger(ABC):
    """Base class of all tag backends.

    Args:
        cache: ``True`` caches tags under ``assets.cache_dir()/tags/<cache_key>/``; a path uses that
            folder as the cache root instead; ``False``/``None`` disables caching.

    Subclasses set :attr:`name` and implement :meth:`_tag_images` (a batch of RGB PIL images to one tag
    list each) and :attr:`cache_key` (a folder name that changes whenever the model or a parameter that
    changes the output changes; ``None`` means results must not be cached).

    ``cache_hits`` and ``cache_misses`` count images answered from the cache and images the model ran
    on, so callers (and tests) can see what a call cost.
    """

    name: str = "tagger"
    #: How many decoded images go to the model at once in :meth:`tag_batch`.
    batch_size: int = 8

    def __init__(self, *, cache: bool | str | Path | None = True) -> None:
        self._cache_setting = cache
        self._cache: TagCache | None = None
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    @abstractmethod
    def cache_key(self) -> str | None:
        """Folder name of this backend's cache entries (model + output-changing parameters)."""

    @abstractmethod
    def _tag_images(self, images: Sequence[Image.Image]) -> list[list[Tag]]:
        """Tags for each already-decoded RGB image (the model runs here)."""

    @property
    def cache(self) -> TagCache | None:
        """The disk cache in use, or ``None`` when caching is off or the backend is uncacheable."""
        if self._cache is None and self._cache_setting not in (False, None):
            key = self.cache_key
            if key is not None:
                root = None if self._cache_setting is True else Path(self._cache_setting)
                self._cache = TagCache(key, root=root)
        return self._cache

    def tag(self, image: ImageInput) -> list[Tag]:
        """Tags of one image (a path, encoded bytes, a PIL image or an HxW[xC] uint8/bool array)."""
        return self.tag_batch([image])[0]

    def tag_batch(self, images: Iterable[ImageInput]) -> list[list[Tag]]:
        """Tags of each image, in input order; cached images skip the model.

        Every input is decoded (and hashed) first, so a bad file fails before any model work.
        """
        loaded = [load_image(img) for img in images]
        cache = self.cache
        results: list[list[Tag] | None] = [None] * len(loaded)
        todo: list[int] = []
        for i, item in enumerate(loaded):
            hit = cache.get(item.digest) if cache is not None else None
            if hit is not None:
                results[i] = hit
                self.cache_hits += 1
            else:
                todo.append(i)
        for start in range(0, len(todo), max(1, self.batch_size)):
            chunk = todo[start : start + max(1, self.batch_size)]
            outputs = self._tag_images([loaded[i].image for i in chunk])
            if len(outputs) != len(chunk):
                raise RuntimeError(
                    f"{type(self).__name__} returned {len(outputs)} results for {len(chunk)} images"
                )
            for i, tags in zip(chunk, outputs):
                results[i] = tags
                self.cache_misses += 1
                if cache is not None:
                    cache.put(loaded[i].digest, tags)
        return [r if r is not None else [] for r in results]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cache_key={self.cache_key!r})"
