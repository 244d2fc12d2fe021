"""Visual tags: plain-text hints about a photo from offline models (ImageNet labels, OCR, YOLO classes).

Consumers take the string made by :func:`format_tags`, e.g. ``"tiger cat, Egyptian cat, EMT"``::

    from gemkr_llamaindex.tags import default_tagger, format_tags
    hint = format_tags(default_tagger().tag("photo.jpg"))

Importing this package is cheap: torch, onnxruntime and ultralytics load when a backend first runs,
and a missing one raises :class:`MissingExtraError` naming ``pip install "gemkr-llamaindex[tags]"``.
"""

from gemkr_llamaindex.images import ImageLoadError, ImageNotFoundError, load_image
from gemkr_llamaindex.tags.base import MissingExtraError, VisualTagger
from gemkr_llamaindex.tags.cache import TagCache
from gemkr_llamaindex.tags.composite import CompositeTagger, merge_tags
from gemkr_llamaindex.tags.factory import BACKENDS, DEFAULT_BACKENDS, HintTagger, build_tagger, default_tagger, hint_tagger
from gemkr_llamaindex.tags.format import format_tags
from gemkr_llamaindex.tags.imagenet import ImageNetTagger
from gemkr_llamaindex.tags.labels import clean_label, imagenet_labels
from gemkr_llamaindex.tags.ocr import OCRTagger
from gemkr_llamaindex.tags.tag import Tag, TagKind, tag_key
from gemkr_llamaindex.tags.yolo import YOLOTagger

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "CompositeTagger",
    "HintTagger",
    "ImageLoadError",
    "ImageNetTagger",
    "ImageNotFoundError",
    "MissingExtraError",
    "OCRTagger",
    "Tag",
    "TagCache",
    "TagKind",
    "VisualTagger",
    "YOLOTagger",
    "build_tagger",
    "clean_label",
    "default_tagger",
    "format_tags",
    "hint_tagger",
    "imagenet_labels",
    "load_image",
    "merge_tags",
    "tag_key",
]
