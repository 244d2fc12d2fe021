"""The multimodal query every part shares (generator, retriever, reader, evaluation): a question, an
optional picture, its optional visual tags.

:class:`VQAQueryBundle` is a LlamaIndex ``QueryBundle`` (so every retriever and query engine accepts it)
that also carries the visual tags and can hold the decoded picture. The picture is decoded at most once
per query (:meth:`VQAQueryBundle.loaded_image`), whoever asks first: the query engine, the tagger, the
retriever or the reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llama_index.core.schema import QueryBundle

from gemkr_llamaindex.images import LoadedImage, load_image


@dataclass
class VQAQueryBundle(QueryBundle):
    """``query_str`` = the question; ``image_path`` or ``image`` = the picture; ``tags`` = visual hints.

    * ``image``: any input :func:`gemkr_llamaindex.images.load_image` accepts (a PIL image, bytes, a
      decoded ``LoadedImage``, a packaged-image reference); ``image_path`` is the path form LlamaIndex
      defines. Give at most one of them.
    * ``tags``: an already formatted hint string (``"tiger cat, Egyptian cat, EMT"``); when it is None
      and the retriever has a tagger, the tagger fills it from the picture.
    """

    tags: str | None = None
    image: Any = field(default=None, repr=False, compare=False)
    _loaded: LoadedImage | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image is not None and self.image_path is not None:
            raise ValueError("give the picture once: image_path= or image=, not both")

    @property
    def has_image(self) -> bool:
        return self.image is not None or bool(self.image_path)

    def loaded_image(self) -> LoadedImage | None:
        """The picture decoded to RGB with its digest (decoded on the first call only), or None."""
        if self._loaded is None and self.has_image:
            self._loaded = load_image(self.image if self.image is not None else self.image_path)
        return self._loaded

    @classmethod
    def of(cls, query: QueryBundle | str) -> VQAQueryBundle:
        """``query`` as a VQAQueryBundle (itself when it already is one; a plain bundle keeps its fields)."""
        if isinstance(query, VQAQueryBundle):
            return query
        if isinstance(query, str):
            return cls(query_str=query)
        if not isinstance(query, QueryBundle):
            raise TypeError(f"expected a QueryBundle or a str, got {type(query).__name__}")
        return cls(query_str=query.query_str, image_path=query.image_path or None,
                   custom_embedding_strs=query.custom_embedding_strs, embedding=query.embedding,
                   tags=getattr(query, "tags", None))
