"""YOLO object features: top-5 boxes, crops at the CLIP size, zero detections, the on-disk cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from gemkr_llamaindex.images import load_image
from gemkr_llamaindex.model.detector import (
    ObjectDetector,
    ObjectFeatureCache,
    ObjectFeatureExtractor,
)
from gemkr_llamaindex.model.tiny import TINY_CLIP_CFG, TINY_CLIP_NAME
from gemkr_llamaindex.model.vision import ObjectAwareVisionTower, load_clip


@pytest.fixture(scope="module")
def tower_and_preprocess():
    visual, preprocess, size = load_clip(TINY_CLIP_NAME, None, TINY_CLIP_CFG)
    return ObjectAwareVisionTower(visual, prefix_length=6), preprocess, size


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))


def _extractor(tower_and_preprocess, conf, cache=None):
    tower, preprocess, size = tower_and_preprocess
    # A random-init YOLO scores everything near zero: conf=0 yields many boxes, conf=1 none.
    detector = ObjectDetector("yolov8n.yaml", conf=conf)
    return ObjectFeatureExtractor(detector, tower.encode_crops, preprocess, size, tower.clip_dim, cache)


def test_keeps_five_most_confident_and_crops_to_clip_size(tower_and_preprocess, image):
    ex = _extractor(tower_and_preprocess, conf=0.0)
    boxes = ex.detector.detect(image)
    assert len(boxes) == 5
    assert [b.confidence for b in boxes] == sorted((b.confidence for b in boxes), reverse=True)
    crops = ex.crops(image)
    assert all(c.size == (tower_and_preprocess[2],) * 2 for c in crops)
    feats = ex(image)
    assert feats.shape == (5, tower_and_preprocess[0].clip_dim) and torch.isfinite(feats).all()
    padded, mask = ex.batch([image, image], max_objects=5)
    assert padded.shape == (2, 5, feats.shape[1]) and mask.all()


def test_zero_detections(tower_and_preprocess, image):
    ex = _extractor(tower_and_preprocess, conf=1.0)
    assert ex(image).shape == (0, tower_and_preprocess[0].clip_dim)
    padded, mask = ex.batch([image])
    assert not mask.any() and torch.equal(padded, torch.zeros_like(padded))
    tower, preprocess, _ = tower_and_preprocess
    out = tower(preprocess(image).unsqueeze(0), padded, mask)
    assert out.h_r.shape == (1, 5, tower.width) and torch.isfinite(out.h_cls).all()


def test_cache_returns_identical_features(tower_and_preprocess, image, tmp_path):
    cache = ObjectFeatureCache(tmp_path, "yolov8n.yaml|tiny")
    ex = _extractor(tower_and_preprocess, conf=0.0, cache=cache)
    first = ex(image)
    files = list(cache.dir.rglob("*.safetensors"))
    assert len(files) == 1 and files[0].stem == load_image(image).digest  # the one image digest
    ex.detector = None  # a cache hit must not need the detector at all
    second = ex(image.copy())
    assert torch.equal(first, second)
    assert not list(cache.dir.rglob(".tmp-*"))
    assert ObjectFeatureCache(tmp_path, "other detector").dir != cache.dir


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no download"):
        ObjectDetector(tmp_path / "missing.pt")


def test_detection_leaves_torch_thread_count_alone(image):
    """ultralytics sets torch's global thread count to min(8, cpus - 1) when it picks the CPU; the
    detector must undo that, or every later forward/backward in the process runs on fewer threads."""
    before = torch.get_num_threads()
    unusual = min(8, max(1, (os.cpu_count() or 2) - 1)) + 1  # never what ultralytics would set
    torch.set_num_threads(unusual)
    try:
        detector = ObjectDetector("yolov8n.yaml", conf=0.25)
        detector.detect(image)
        assert torch.get_num_threads() == unusual
    finally:
        torch.set_num_threads(before)
