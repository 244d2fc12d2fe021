"""The detector interface and the box bookkeeping both implementations share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: The paper keeps the five most confident boxes per image.
MAX_OBJECTS = 5


@dataclass(frozen=True)
class Box:
    """A detection in pixel coordinates of the original image."""

    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float
    label: int


@runtime_checkable
class Detector(Protocol):
    """What the object-feature extractor needs from a detector.

    ``conf`` is the minimum confidence, ``max_objects`` the most boxes kept per image, ``device`` the torch
    device the model runs on. Images are RGB PIL images (both implementations also decode any
    ``gemkr_llamaindex.images.load_image`` input); boxes are in their original pixel coordinates, inside
    the image, at least one pixel wide and high, most confident first.
    """

    conf: float
    max_objects: int
    device: str

    def detect(self, image: Image.Image) -> list[Box]:
        """Boxes of one image, most confident first, at most ``max_objects``."""
        ...

    def detect_batch(self, images: Sequence[Image.Image]) -> list[list[Box]]:
        """``detect`` of each image, with the model run on batches of images rather than one by one."""
        ...


def as_rgb(image: Any) -> Image.Image:
    """An RGB PIL image: PIL images are converted if needed, anything else goes through ``load_image``
    (paths, bytes, RGB arrays; EXIF orientation applied)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    from gemkr_llamaindex.images import load_image

    return load_image(image).image


def top_boxes(
    xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, max_objects: int, width: int, height: int
) -> list[Box]:
    """The ``max_objects`` most confident boxes, clipped to the ``width`` x ``height`` image.

    Boxes that are thinner or lower than one pixel after clipping are dropped before counting, so an
    image yields ``max_objects`` boxes whenever the detector found that many usable ones. Ties keep the
    detector's order (stable sort).
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    out: list[Box] = []
    for i in np.argsort(-scores, kind="stable"):
        if len(out) >= max_objects:
            break
        x1, x2 = np.clip(xyxy[i, [0, 2]], 0.0, float(width))
        y1, y2 = np.clip(xyxy[i, [1, 3]], 0.0, float(height))
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            out.append(Box(float(x1), float(y1), float(x2), float(y2), float(scores[i]), int(labels[i])))
    return out
