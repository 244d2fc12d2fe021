"""The shipped mini benchmark: every image loads offline, gold titles exist, answers occur in gold text."""

from __future__ import annotations

import json

import pytest

from eval_vqa.mini import load_mini_benchmark
from gemkr_llamaindex import assets
from gemkr_llamaindex.images import PackagedImageError, load_packaged_image, packaged_image_path


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return load_mini_benchmark()


def test_size_and_unique_ids(items):
    assert 30 <= len(items) <= 60
    assert len({it["id"] for it in items}) == len(items)


def test_gold_titles_exist_and_answers_occur(items):
    summaries = dict(assets.wiki_summaries())
    for it in items:
        for title in it["gold_doc_ids"]:
            assert title in summaries, f"{it['id']}: gold title {title!r} not in the packaged summaries"
        gold_text = [summaries[t].lower() for t in it["gold_doc_ids"]]
        for answer in it["answers"]:
            assert 1 <= len(answer.split()) <= 3, f"{it['id']}: answer {answer!r} is not short"
            assert any(answer.lower() in text for text in gold_text), f"{it['id']}: {answer!r} not in gold"


def test_every_image_loads_as_rgb(items):
    seen = {}
    for it in items:
        key = (it["image"]["package"], it["image"]["name"])
        if key not in seen:
            img = load_packaged_image(*key)
            assert img.mode == "RGB" and min(img.size) >= 64
            seen[key] = img.size
    assert {p for p, _ in seen} == {"skimage", "sklearn", "ultralytics", "matplotlib"}


def test_image_path_for_skimage_is_cached_png(tmp_path):
    path = packaged_image_path("skimage", "horse", cache_dir=tmp_path)
    assert path.suffix == ".png" and path.parent.parent == tmp_path
    assert packaged_image_path("skimage", "horse", cache_dir=tmp_path) == path
    assert packaged_image_path("ultralytics", "bus.jpg").is_file()


@pytest.mark.parametrize(
    "package,name,needle",
    [("nope", "x", "unknown image package"), ("skimage", "eagle", "unknown skimage image"),
     ("sklearn", "tiger.jpg", "unknown sklearn image")],
)
def test_unknown_images_raise_clear_errors(package, name, needle):
    with pytest.raises(PackagedImageError, match=needle):
        load_packaged_image(package, name)


def test_loader_reports_bad_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field"):
        load_mini_benchmark(bad)
    with pytest.raises(FileNotFoundError):
        load_mini_benchmark(tmp_path / "absent.jsonl")
