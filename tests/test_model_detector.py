"""Object features: top-5 boxes, crops at the CLIP size, zero detections, the on-disk cache; the two
detectors (ultralytics YOLO, a tiny random transformers RT-DETR) behind one interface and ``make_detector``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from gemkr_llamaindex.images import load_image
from gemkr_llamaindex.model.detector import (
    Box,
    Detector,
    HFDetector,
    ObjectDetector,
    ObjectFeatureCache,
    ObjectFeatureExtractor,
    YOLODetector,
    detector_kind,
    make_detector,
)
from gemkr_llamaindex.model.detectors.tiny import build_tiny_rtdetr
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


def _same_boxes(a: list[Box], b: list[Box], atol: float = 1e-3) -> bool:
    """Equal up to float rounding of the batched forward (labels and order exactly)."""
    if [x.label for x in a] != [x.label for x in b]:
        return False
    arr = lambda boxes: np.array([[x.x1, x.y1, x.x2, x.y2, x.confidence] for x in boxes]).reshape(-1, 5)  # noqa: E731
    return np.allclose(arr(a), arr(b), atol=atol)


def _check_boxes(boxes: list[Box], image: Image.Image, max_objects: int, conf: float) -> None:
    assert len(boxes) <= max_objects
    assert [b.confidence for b in boxes] == sorted((b.confidence for b in boxes), reverse=True)
    for b in boxes:
        assert 0 <= b.x1 < b.x2 <= image.width and 0 <= b.y1 < b.y2 <= image.height
        assert b.x2 - b.x1 >= 1 and b.y2 - b.y1 >= 1 and b.confidence >= conf


@pytest.fixture(scope="module")
def images():
    """Three sizes, two images sharing one size (YOLO batches those together)."""
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((96, 128), (50, 40), (96, 128), (200, 310))]


# ---------------------------------------------------------------- YOLO (ultralytics) behind the interface


@pytest.fixture(scope="module")
def yolo():
    """A random-init yolov8n that boxes everything (conf=0), five objects at most."""
    return make_detector("yolov8n.yaml", conf=0.0, max_objects=5, device="cpu")


def test_yolo_is_a_detector_and_batches_like_one_by_one(yolo, images):
    detector = yolo
    assert type(detector) is YOLODetector and ObjectDetector is YOLODetector and isinstance(detector, Detector)
    batched = detector.detect_batch(images)
    assert len(batched) == len(images) and detector.detect_batch([]) == []
    for image, boxes in zip(images, batched):
        _check_boxes(boxes, image, 5, 0.0)
        assert len(boxes) == 5  # a random head at conf=0 boxes everything
        assert _same_boxes(boxes, detector.detect(image))


def test_yolo_detect_batch_sends_equal_sizes_to_predict_together(yolo, images, monkeypatch):
    calls = []
    predict = yolo.model.predict
    monkeypatch.setattr(yolo.model, "predict", lambda ims, **kw: calls.append(len(ims)) or predict(ims, **kw))
    yolo.detect_batch(images)
    assert sorted(calls) == [1, 1, 2]  # (96, 128) twice in one call, the two other sizes alone


# ---------------------------------------------------------------- transformers RT-DETR (core dependencies only)


@pytest.fixture(scope="module")
def rtdetr_dir(tmp_path_factory):
    return build_tiny_rtdetr(tmp_path_factory.mktemp("rtdetr") / "tiny-rtdetr")


def test_hf_detector_boxes_are_ranked_clipped_and_batched_like_one_by_one(rtdetr_dir, images):
    detector = make_detector(str(rtdetr_dir), conf=0.0, max_objects=5, device="cpu")
    assert type(detector) is HFDetector and isinstance(detector, Detector)
    assert detector.class_names == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    batched = detector.detect_batch(images)
    assert len(batched) == len(images)
    for image, boxes in zip(images, batched):
        _check_boxes(boxes, image, 5, 0.0)
        assert len(boxes) == 5
        assert _same_boxes(boxes, detector.detect(image))
    detector.batch_size = 3  # chunked batches give the same boxes
    assert all(_same_boxes(a, b) for a, b in zip(detector.detect_batch(images), batched))
    assert batched[0] != batched[2]  # same size, different pixels: boxes follow the picture


def test_detectors_decode_paths_and_grey_images_like_rgb(rtdetr_dir, yolo, images, tmp_path):
    path = tmp_path / "query.png"
    images[1].save(path)
    grey = images[3].convert("L")
    for detector in (make_detector(rtdetr_dir, 0.0, 5, "cpu"), yolo):
        from_path, from_grey = detector.detect_batch([path, grey])
        assert _same_boxes(from_path, detector.detect(images[1]))
        assert _same_boxes(from_grey, detector.detect(grey.convert("RGB")))


def test_hf_detector_max_objects_and_confidence(rtdetr_dir, images):
    every = make_detector(f"hf:{rtdetr_dir}", conf=0.0, max_objects=100).detect(images[0])
    assert len(every) == 20  # num_queries boxes at most
    assert [b.confidence for b in make_detector(f"hf:{rtdetr_dir}", conf=0.0, max_objects=2).detect(images[0])] == \
        [b.confidence for b in every[:2]]
    middle = every[10].confidence
    kept = make_detector(f"hf:{rtdetr_dir}", conf=middle, max_objects=100).detect(images[0])
    assert 0 < len(kept) < 20 and all(b.confidence >= middle for b in kept)
    assert make_detector(f"hf:{rtdetr_dir}", conf=0.999, max_objects=5).detect(images[0]) == []


def test_object_features_with_the_hf_detector_detect_cache_misses_in_one_batch(tower_and_preprocess, rtdetr_dir, images, tmp_path):
    tower, preprocess, size = tower_and_preprocess
    detector = HFDetector(rtdetr_dir, conf=0.0, max_objects=5)
    calls = []
    detect_batch = detector.detect_batch
    detector.detect_batch = lambda ims: calls.append(len(ims)) or detect_batch(ims)
    ex = ObjectFeatureExtractor(detector, tower.encode_crops, preprocess, size, tower.clip_dim, ObjectFeatureCache(tmp_path, "rtdetr"))
    first = ex(images[0])
    assert first.shape == (5, tower.clip_dim) and calls == [1]
    padded, mask = ex.batch(images, max_objects=5)
    assert calls == [1, 3] and mask.all()  # images[0] came from the cache, the other three in one call
    assert torch.allclose(padded[0], first)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [("yolov8n.yaml", "yolo"), ("runs/best.pt", "yolo"), ("cfg/custom.YML", "yolo"), ("yolo11n", "yolo"),
     ("hf:/models/rtdetr", "hf")],
)
def test_detector_spec_rules(spec, kind):
    assert detector_kind(spec) == kind


def test_detector_folder_rules(rtdetr_dir, tmp_path):
    assert detector_kind(rtdetr_dir) == "hf" and detector_kind(f"hf:{rtdetr_dir}") == "hf"
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(ValueError, match="no transformers object-detection model"):
        make_detector(tmp_path / "llm", 0.25, 5, "cpu")
    with pytest.raises(ValueError, match="not an object-detection model"):
        make_detector(f"hf:{tmp_path / 'llm'}", 0.25, 5, "cpu")


def test_missing_or_incomplete_detector_folder_is_a_clear_error(rtdetr_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        make_detector(tmp_path / "nowhere", 0.25, 5, "cpu")
    with pytest.raises(FileNotFoundError, match="detector folder .*nowhere not found"):
        make_detector(f"hf:{tmp_path / 'nowhere'}", 0.25, 5, "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFDetector(tmp_path / "empty")
    import shutil

    shutil.copytree(rtdetr_dir, tmp_path / "no-processor")
    (tmp_path / "no-processor" / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        make_detector(tmp_path / "no-processor", 0.25, 5, "cpu")
    with pytest.raises(FileNotFoundError, match="no download"):
        make_detector("yolo11n", 0.25, 5, "cpu")  # a bare YOLO name is never fetched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_detectors_run_on_the_configured_device(rtdetr_dir, images):
    hf_cpu, hf_gpu = (make_detector(rtdetr_dir, 0.0, 5, d) for d in ("cpu", "cuda"))
    assert next(hf_gpu.model.parameters()).device.type == "cuda"
    assert all(_same_boxes(a, b, atol=0.05) for a, b in zip(hf_cpu.detect_batch(images), hf_gpu.detect_batch(images)))
    yolo = make_detector("yolov8n.yaml", 0.0, 5, "cuda")
    assert all(len(b) == 5 for b in yolo.detect_batch(images))
    assert next(yolo.model.model.parameters()).device.type == "cuda"
