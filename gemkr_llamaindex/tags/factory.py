"""Build taggers by backend name (what the CLI and the benchmarks ask for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemkr_llamaindex.images import HintTagger, ImageInput
from gemkr_llamaindex.tags.base import VisualTagger

#: Backend names accepted by :func:`build_tagger` and ``gemkr tags --backends``.
BACKENDS: tuple[str, ...] = ("classifier", "ocr", "yolo")
DEFAULT_BACKENDS: tuple[str, ...] = ("classifier", "ocr")


def build_tagger(
    backends: Sequence[str] = DEFAULT_BACKENDS,
    *,
    yolo_weights: str | Path | None = None,
    cache: bool | str | Path | None = True,
) -> VisualTagger:
    """One tagger for the named backends (a :class:`CompositeTagger` when several are named).

    Raises:
        ValueError: an unknown backend name, or ``yolo`` without ``yolo_weights``.
        MissingExtraError: a backend's optional dependency is not installed.
    """
    from gemkr_llamaindex.tags.composite import CompositeTagger

    names = [b.strip().lower() for b in backends if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"unknown tag backend(s) {unknown or backends!r}; choose from {', '.join(BACKENDS)}")
    taggers: list[VisualTagger] = []
    for name in dict.fromkeys(names):
        if name == "classifier":
            from gemkr_llamaindex.tags.imagenet import ImageNetTagger

            taggers.append(ImageNetTagger(cache=cache))
        elif name == "ocr":
            from gemkr_llamaindex.tags.ocr import OCRTagger

            taggers.append(OCRTagger(cache=cache))
        else:
            if yolo_weights is None:
                raise ValueError("the yolo backend needs the path of local YOLO weights (a .pt file)")
            from gemkr_llamaindex.tags.yolo import YOLOTagger

            taggers.append(YOLOTagger(yolo_weights, cache=cache))
    return taggers[0] if len(taggers) == 1 else CompositeTagger(taggers)


def default_tagger(*, cache: bool | str | Path | None = True) -> VisualTagger:
    """The offline default: ImageNet labels (EfficientNet-Lite0) followed by OCR text (RapidOCR)."""
    from gemkr_llamaindex.tags.composite import CompositeTagger
    from gemkr_llamaindex.tags.imagenet import ImageNetTagger
    from gemkr_llamaindex.tags.ocr import OCRTagger

    return CompositeTagger([ImageNetTagger(cache=cache), OCRTagger(cache=cache)])



def hint_tagger(backends: Sequence[str] = DEFAULT_BACKENDS, *, max_tags: int = 8,
                cache: bool | str | Path | None = True, **options: Any) -> HintTagger:
    """The tagger contract every consumer shares: any image input -> a hint string, or None.

    The retriever, the query engine and the evaluation all take such a callable (``tagger=``). It
    accepts what :func:`gemkr_llamaindex.images.load_image` accepts, a decoded ``LoadedImage``
    included, so a query image decoded once is tagged without a second decode.
    """
    from gemkr_llamaindex.tags.format import format_tags

    tagger = build_tagger(backends, cache=cache, **options)

    def hints(image: ImageInput) -> str | None:
        return format_tags(tagger.tag(image), max_tags=max_tags) or None

    hints.tagger = tagger  # type: ignore[attr-defined]  # the backend, for cache statistics
    return hints
