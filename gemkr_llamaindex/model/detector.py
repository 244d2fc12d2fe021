"""Object features ``X_R``: YOLO boxes -> crops -> frozen CLIP embeddings, cached on disk.

Paper, §Object-aware Prefix Tuning and Implementation Details: objects are cropped, resized to a fixed
resolution and encoded with the frozen CLIP; the top 5 most confident boxes are kept. An image with no
detection simply has zero objects (its prefix is then the learnable part alone).

ultralytics is imported lazily, offline and configured under the package cache, and every call into it
keeps torch's thread count (see ``gemkr_llamaindex.ultralytics_env``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gemkr_llamaindex.images import load_image
from gemkr_llamaindex.ultralytics_env import offline_ultralytics_env, preserve_torch_threads

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


class ObjectDetector:
    """An ultralytics YOLO model from a local ``.pt`` file or an architecture ``.yaml`` (random init).

    ``detect`` keeps the ``max_objects`` most confident boxes above ``conf``.
    """

    def __init__(self, weights: str | Path, conf: float = 0.25, max_objects: int = MAX_OBJECTS, device: str = "cpu"):
        weights = str(weights)
        if weights.endswith(".pt") and not Path(weights).is_file():
            raise FileNotFoundError(
                f"YOLO weights {weights} not found; give a local .pt path (no download happens) "
                "or an architecture yaml such as 'yolov8n.yaml' for a random-init detector"
            )
        offline_ultralytics_env()
        from ultralytics import YOLO

        self.weights = weights
        self.conf = conf
        self.max_objects = max_objects
        self.device = device
        with preserve_torch_threads():
            self.model = YOLO(weights)

    def detect(self, image: Any) -> list[Box]:
        """Boxes of one RGB PIL image, most confident first, at most ``max_objects``."""
        with preserve_torch_threads():
            result = self.model.predict(
                image, conf=self.conf, max_det=max(self.max_objects, 1) * 4, verbose=False, device=self.device
            )[0]
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return []
        xyxy = boxes.xyxy.cpu().numpy()
        conf = boxes.conf.cpu().numpy()
        cls = boxes.cls.cpu().numpy()
        order = np.argsort(-conf, kind="stable")[: self.max_objects]
        out = []
        for i in order:
            x1, y1, x2, y2 = (float(v) for v in xyxy[i])
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                out.append(Box(x1, y1, x2, y2, float(conf[i]), int(cls[i])))
        return out


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

    ``encode`` is the frozen tower's plain image encoder (e.g. ``ObjectAwareVisionTower.encode_crops``),
    ``preprocess`` its open_clip eval transform. Returns a (r, clip_dim) float32 tensor, r in 0..5.
    """

    def __init__(
        self,
        detector: ObjectDetector,
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

    def crops(self, image: Any) -> list[Any]:
        """The detected objects as RGB PIL images resized to the CLIP input size."""
        from PIL import Image

        rgb = load_image(image).image
        out = []
        for box in self.detector.detect(rgb):
            crop = rgb.crop((int(box.x1), int(box.y1), round(box.x2), round(box.y2)))
            out.append(crop.resize((self.image_size, self.image_size), Image.BICUBIC))
        return out

    def __call__(self, image: Any) -> torch.Tensor:
        """``X_R`` of one image (any ``load_image`` input; a ``LoadedImage`` keeps its digest as cache key)."""
        image = load_image(image)
        key = image.digest
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        crops = self.crops(image)
        if crops:
            pixels = torch.stack([self.preprocess(c) for c in crops])
            with torch.no_grad():
                feats = self.encode(pixels).float().cpu()
        else:
            feats = torch.zeros(0, self.clip_dim)
        if self.cache is not None:
            self.cache.put(key, feats)
        return feats

    def batch(self, images: Sequence[Any], max_objects: int = MAX_OBJECTS) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(X_R, mask)`` of shapes (B, max_objects, clip_dim) and (B, max_objects)."""
        feats = torch.zeros(len(images), max_objects, self.clip_dim)
        mask = torch.zeros(len(images), max_objects, dtype=torch.bool)
        for i, image in enumerate(images):
            x = self(image)[:max_objects]
            feats[i, : len(x)] = x
            mask[i, : len(x)] = True
        return feats, mask
