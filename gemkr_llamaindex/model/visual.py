"""The visual side's inputs: pictures -> CLIP pixels + YOLO object features ``X_R`` (paper §Object-aware Prefix).

:class:`VisualInputs` decodes each picture once (``gemkr_llamaindex.images``), preprocesses it for the
frozen CLIP tower and asks the object extractor (detector -> crops -> frozen CLIP, cached per image
digest) for ``X_R``. A query without a picture is a row with ``has_image`` False: the model replaces its
visual tokens by the learned "no image" embedding it also saw in training.

The detector is not thread-safe (one ultralytics predictor per model), so object extraction runs under
a lock; everything else here is read-only and safe to call from several threads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class VisualBatch:
    """Preprocessed images and their object features ``X_R`` (zero rows where ``object_mask`` is False).

    ``has_image`` is False for queries without a picture (their pixels are zeros and unused).
    """

    pixel_values: torch.Tensor  # (B, 3, S, S)
    object_features: torch.Tensor  # (B, r, clip_dim)
    object_mask: torch.Tensor  # (B, r) bool
    has_image: torch.Tensor | None = None  # (B,) bool; None = every row has a picture

    def __post_init__(self) -> None:
        if self.has_image is None:
            self.has_image = torch.ones(self.pixel_values.shape[0], dtype=torch.bool)

    def to(self, device: torch.device | str) -> VisualBatch:
        return VisualBatch(self.pixel_values.to(device), self.object_features.to(device), self.object_mask.to(device),
                           self.has_image.to(device))

    def __len__(self) -> int:
        return self.pixel_values.shape[0]


class VisualInputs:
    """Builds :class:`VisualBatch` es for a tower: preprocessing, and the cached object extractor."""

    def __init__(self, config: Any, tower: Any, preprocess: Any, image_size: int, clip_fingerprint: str,
                 trust_detector_pickle: bool = False) -> None:
        self.config, self.tower, self.preprocess, self.image_size = config, tower, preprocess, image_size
        self.clip_fingerprint = clip_fingerprint
        self.trust_detector_pickle = trust_detector_pickle
        self._extractors: dict[str | None, Any] = {}
        self._lock = threading.Lock()

    def extractor(self, cache_dir: str | Path | None = None):
        """The detector + frozen-CLIP ``X_R`` extractor (None when the config names no detector); one per
        cache folder, sharing one detector."""
        if self.config.detector is None:
            return None
        key = None if cache_dir is None else str(cache_dir)
        with self._lock:
            if key not in self._extractors:
                from gemkr_llamaindex.model.detector import ObjectFeatureCache, ObjectFeatureExtractor, make_detector

                any_extractor = next(iter(self._extractors.values()), None)
                device = str(next(self.tower.parameters()).device)  # the detector runs where the tower does
                detector = any_extractor.detector if any_extractor is not None else make_detector(
                    self.config.detector, self.config.detector_conf, self.config.max_objects, device=device,
                    trust_pickle=self.trust_detector_pickle)
                cache = None
                if cache_dir is not None:
                    namespace = json.dumps(
                        {"detector": self.config.detector, "conf": self.config.detector_conf,
                         "clip": self.config.clip_model, "pretrained": self.config.clip_pretrained,
                         "clip_fp": self.clip_fingerprint}, sort_keys=True)
                    cache = ObjectFeatureCache(cache_dir, namespace)
                self._extractors[key] = ObjectFeatureExtractor(
                    detector, self.tower.encode_crops, self.preprocess, self.image_size, self.tower.clip_dim, cache)
            return self._extractors[key]

    def batch(self, images: Sequence[Any], cache_dir: str | Path | None = None) -> VisualBatch:
        """A VisualBatch for images (any ``load_image`` input, or None for a query without a picture)."""
        from gemkr_llamaindex.images import load_image

        loaded = [None if im is None else load_image(im) for im in images]
        size, r = self.image_size, self.config.max_objects
        pixels = torch.stack([torch.zeros(3, size, size) if li is None else self.preprocess(li.image) for li in loaded])
        feats = torch.zeros(len(loaded), r, self.tower.clip_dim)
        mask = torch.zeros(len(loaded), r, dtype=torch.bool)
        extractor = self.extractor(cache_dir)
        present = [i for i, li in enumerate(loaded) if li is not None]
        if extractor is not None and present:
            with self._lock:  # one detector, not thread-safe
                got, got_mask = extractor.batch([loaded[i] for i in present], r)
            feats[present], mask[present] = got, got_mask
        has_image = torch.tensor([li is not None for li in loaded], dtype=torch.bool)
        return VisualBatch(pixels, feats, mask, has_image)
