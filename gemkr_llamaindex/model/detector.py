"""Object features ``X_R``: detector boxes -> crops -> frozen CLIP embeddings, cached on disk.

Paper, §Object-aware Prefix Tuning and Implementation Details: objects are cropped, resized to a fixed
resolution and encoded with the frozen CLIP; the top 5 most confident boxes are kept. An image with no
detection simply has zero objects (its prefix is then the learnable part alone).

The detector is anything that satisfies :class:`~gemkr_llamaindex.model.detectors.Detector`;
:func:`make_detector` picks the implementation from a spec string:

* ``"hf:PATH"``, or a folder whose ``config.json`` is a transformers object-detection model (RT-DETR,
  DETR, ...) -> :class:`HFDetector` (core dependencies only, Apache-2.0);
* a ``.yaml`` / ``.yml`` architecture, a ``.safetensors`` export or a ``.pt`` file, or a name starting
  with ``yolo`` -> :class:`YOLODetector` (ultralytics, extra ``[yolo]``, AGPL-3.0); a ``.pt`` is a pickle
  and loads only with ``trust_pickle=True``. ``ObjectDetector`` is the YOLO class's historical name.

Nothing here imports ultralytics or the transformers model classes until a detector is built.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from gemkr_llamaindex.images import load_image
from gemkr_llamaindex.model.detectors import (
    MAX_OBJECTS,
    Box,
    Detector,
    HFDetector,
    YOLODetector,
    is_object_detection_folder,
)
from gemkr_llamaindex.model.detectors.yolo import YOLO_SUFFIXES

__all__ = [
    "HF_PREFIX",
    "MAX_OBJECTS",
    "Box",
    "Detector",
    "HFDetector",
    "ObjectDetector",
    "ObjectFeatureCache",
    "ObjectFeatureExtractor",
    "YOLODetector",
    "check_detector_spec",
    "detector_kind",
    "make_detector",
]

#: The YOLO detector under its original name: ``ObjectDetector(weights, conf, max_objects, device)``.
ObjectDetector = YOLODetector

HF_PREFIX = "hf:"


def detector_kind(spec: str | Path) -> str:
    """``"hf"`` or ``"yolo"``: which implementation :func:`make_detector` builds for ``spec``.

    Rules, in order: a ``hf:`` prefix -> hf; a ``.pt``/``.yaml``/``.yml``/``.safetensors`` suffix (any case) -> yolo; an existing
    folder -> hf if its ``config.json`` is an object-detection model (else ValueError); a file or folder
    name starting with ``yolo`` -> yolo (the YOLO class then says what is missing). Anything else raises.

    Raises:
        ValueError: a folder that is not a transformers object-detection model.
        FileNotFoundError: a spec that matches no rule (e.g. a path that does not exist).
    """
    text = str(spec)
    if text.startswith(HF_PREFIX):
        return "hf"
    path = Path(text).expanduser()
    if path.suffix.lower() in YOLO_SUFFIXES:
        return "yolo"
    if path.is_dir():
        if is_object_detection_folder(path):
            return "hf"
        raise ValueError(
            f"detector folder {path} holds no transformers object-detection model (its config.json is missing "
            "or names another model type)"
        )
    if path.name.lower().startswith("yolo"):
        return "yolo"
    raise FileNotFoundError(
        f"detector {text!r}: no such file or folder. Give a YOLO .pt/.yaml (extra [yolo]) or a local "
        f"transformers object-detection folder ({HF_PREFIX}PATH or the folder itself)"
    )


def check_detector_spec(spec: str | Path, trust_pickle: bool = False) -> None:
    """Raise before any loading if ``spec`` is a pickle-based YOLO file and ``trust_pickle`` is not given
    (a spec that names nothing is left for :func:`make_detector` to report)."""
    from gemkr_llamaindex.ultralytics_env import require_trusted

    try:
        kind = detector_kind(spec)
    except (FileNotFoundError, ValueError):
        return
    if kind == "yolo":
        require_trusted(spec, trust_pickle)


def make_detector(spec: str | Path, conf: float = 0.25, max_objects: int = MAX_OBJECTS, device: str = "cpu",
                  *, trust_pickle: bool = False) -> Detector:
    """The detector named by ``spec`` (rules in :func:`detector_kind`), keeping boxes scored ``conf`` or
    more, at most ``max_objects`` per image, run on ``device``. ``trust_pickle``: the caller trusts a
    pickle-based YOLO file (``.pt``), which can run code when loaded; without it such files are refused."""
    if detector_kind(spec) == "hf":
        text = str(spec)
        return HFDetector(text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else text, conf, max_objects, device)
    return YOLODetector(spec, conf, max_objects, device, trust_pickle=trust_pickle)


class ObjectFeatureCache:
    """One safetensors file per image content hash under ``root/namespace``.

    The namespace names the detector and the CLIP tower, so changing either never serves stale features.
    Writes go to a temporary file in the same folder and are renamed into place (atomic on POSIX).
    """

    def __init__(self, root: str | Path, namespace: str) -> None:
        self.dir = Path(root) / hashlib.sha256(namespace.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "namespace.txt").write_text(namespace)

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        path = self._path(key)
        if not path.is_file():
            return None
        return load_file(str(path))["x_r"]

    def put(self, key: str, features: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file({"x_r": features.detach().cpu().contiguous()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class ObjectFeatureExtractor:
    """``X_R`` for an image: detect, crop, resize to the CLIP input size, encode with the frozen CLIP.

    ``detector`` is any :class:`Detector`; ``encode`` is the frozen tower's plain image encoder (e.g.
    ``ObjectAwareVisionTower.encode_crops``), ``preprocess`` its open_clip eval transform. Returns a
    (r, clip_dim) float32 tensor, r in 0..max_objects. :meth:`batch` runs the detector once for all the
    images the cache does not answer (``detect_batch``), then encodes each image's crops together.
    """

    def __init__(
        self,
        detector: Detector,
        encode: Callable[[torch.Tensor], torch.Tensor],
        preprocess: Callable[[Any], torch.Tensor],
        image_size: int,
        clip_dim: int,
        cache: ObjectFeatureCache | None = None,
    ) -> None:
        self.detector = detector
        self.encode = encode
        self.preprocess = preprocess
        self.image_size = image_size
        self.clip_dim = clip_dim
        self.cache = cache

    def _crop(self, rgb: Any, boxes: Sequence[Box]) -> list[Any]:
        from PIL import Image

        out = []
        for box in boxes:
            crop = rgb.crop((int(box.x1), int(box.y1), round(box.x2), round(box.y2)))
            out.append(crop.resize((self.image_size, self.image_size), Image.BICUBIC))
        return out

    def crops(self, image: Any) -> list[Any]:
        """The detected objects as RGB PIL images resized to the CLIP input size."""
        rgb = load_image(image).image
        return self._crop(rgb, self.detector.detect(rgb))

    def _encode(self, crops: list[Any]) -> torch.Tensor:
        if not crops:
            return torch.zeros(0, self.clip_dim)
        pixels = torch.stack([self.preprocess(c) for c in crops])
        with torch.no_grad():
            return self.encode(pixels).float().cpu()

    def features(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """``X_R`` of each image (any ``load_image`` input); cache misses share one ``detect_batch``."""
        loaded = [load_image(im) for im in images]
        out: list[torch.Tensor | None] = [None] * len(loaded)
        if self.cache is not None:
            out = [self.cache.get(li.digest) for li in loaded]
        todo = [i for i, x in enumerate(out) if x is None]
        if todo:
            boxes = self.detector.detect_batch([loaded[i].image for i in todo])
            for i, image_boxes in zip(todo, boxes):
                feats = self._encode(self._crop(loaded[i].image, image_boxes))
                if self.cache is not None:
                    self.cache.put(loaded[i].digest, feats)
                out[i] = feats
        return out  # type: ignore[return-value]

    def __call__(self, image: Any) -> torch.Tensor:
        """``X_R`` of one image (any ``load_image`` input; a ``LoadedImage`` keeps its digest as cache key)."""
        return self.features([image])[0]

    def batch(self, images: Sequence[Any], max_objects: int = MAX_OBJECTS) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(X_R, mask)`` of shapes (B, max_objects, clip_dim) and (B, max_objects)."""
        feats = torch.zeros(len(images), max_objects, self.clip_dim)
        mask = torch.zeros(len(images), max_objects, dtype=torch.bool)
        for i, x in enumerate(self.features(images)):
            x = x[:max_objects]
            feats[i, : len(x)] = x
            mask[i, : len(x)] = True
        return feats, mask
