"""Every dataset loader on tiny fixture files in its format, plus its error messages."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from eval_vqa.loaders import (
    DATASETS,
    DatasetFormatError,
    ImageLoadError,
    TSVImageStore,
    load_dataset,
)
from eval_vqa.loaders.okvqa import coco_image_name
from eval_vqa.mini import MINI_TEXT_PATH, load_mini_benchmark

FIX = Path(__file__).parent / "fixtures" / "eval_vqa"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIX / name, tmp_path / name))


def test_coco_image_name():
    assert coco_image_name(397133) == "COCO_val2014_000000397133.jpg"
    assert coco_image_name("42") == "COCO_val2014_000000000042.jpg"
    with pytest.raises(DatasetFormatError):
        coco_image_name("abc")


def test_okvqa_gs112k():
    ds = load_dataset("okvqa-gs112k", FIX / "okvqa")
    assert [q.qid for q in ds.queries] == ["4201", "4202"]
    q = ds.queries[0]
    assert q.answers.count("red") == 6 and q.gold_doc_ids == ["p1"]
    assert Path(q.image).name == "COCO_val2014_000000000042.jpg"
    assert q.load_image().getpixel((4, 4))[0] > 150  # red-ish tiny JPEG
    assert ds.queries[1].gold_doc_ids == []
    corpus = ds.corpus_dict()
    assert list(corpus) == ["p1", "p2", "p3", "p4"] and "hydrant" in corpus["p1"]
    assert list(ds.corpus()) == list(ds.corpus())  # re-iterable


def test_okvqa_wk21m_reads_quoted_dpr_tsv_with_titles():
    ds = load_dataset("okvqa-wk21m", FIX / "okvqa")
    corpus = ds.corpus_dict()
    assert list(corpus) == ["1", "2", "3"]
    assert corpus["1"] == 'Fire hydrant\nA fire hydrant, "fireplug", supplies water.'


def test_gemkr_json():
    ds = load_dataset("gemkr-json", FIX / "gemkr", corpus="corpus.csv", images="images")
    q0, q1 = ds.queries
    assert q0.question == "What color is this hydrant?" and q0.answers == ["red"] and q0.gold_doc_ids == ["p1"]
    assert q0.meta["target"] == "usually red and connected"
    assert q1.answers == [] and q1.gold_doc_ids == []
    assert q1.load_image().size == (8, 8)


def test_remuq_images_from_base64_tsv():
    ds = load_dataset("remuq", FIX / "remuq")
    r1, r2 = ds.queries
    assert r1.gold_doc_ids == ["p3"] and r1.answers == ["yellow"]
    assert r2.gold_doc_ids == ["p4"] and r2.answers == ["two"]
    r, g, b = r1.load_image().getpixel((4, 4))
    assert r > 200 and g > 200 and b < 80  # img_b is yellow
    store = TSVImageStore(FIX / "remuq" / "imgs.tsv")
    assert len(store) == 2 and store.row_of("img_b") == 1
    with pytest.raises(ImageLoadError, match="img_zzz"):
        store.load("img_zzz")


def test_remuq_image_path_writes_png_once(tmp_path):
    ds = load_dataset("remuq", FIX / "remuq")
    path = ds.queries[0].image_path(cache_dir=tmp_path)
    assert Path(path).is_file() and Path(path).parent == tmp_path
    assert ds.queries[0].image_path(cache_dir=tmp_path) == path


def test_remuq_bad_base64_is_reported(tmp_path):
    d = copy_fixture("remuq", tmp_path)
    (d / "imgs.tsv").write_bytes(b"img_a\t!!notbase64!!\n")
    (d / "imgs.lineidx").write_text("0\n")
    ds = load_dataset("remuq", d)
    with pytest.raises(ImageLoadError, match="bad base64"):
        ds.queries[1].load_image()


def test_m2kr_parquet():
    ds = load_dataset("m2kr", FIX / "m2kr", task="OKVQA")
    assert ds.name == "m2kr-OKVQA"
    q1, q2 = ds.queries
    assert q1.qid == "q1" and q1.answers == ["red", "red"] and q1.gold_doc_ids == ["p1"]
    assert q1.meta["instruction"].startswith("Using the image")
    assert q2.load_image().size == (8, 8)
    assert ds.corpus_dict()["p2"].startswith("Tennis")


def test_m2kr_wrong_columns_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = copy_fixture("m2kr", tmp_path)
    bad = d / "OKVQA_passages" / "test_passages-00000-of-00001.parquet"
    pq.write_table(pa.table({"pid": ["p1"], "text": ["x"]}), bad)
    with pytest.raises(DatasetFormatError, match=r"missing column\(s\) \['passage_id', 'passage_content'\]; found \['pid', 'text'\]"):
        load_dataset("m2kr", d)
    with pytest.raises(DatasetFormatError, match="no parquet files for split 'valid'"):
        load_dataset("m2kr", d, split="valid")


def test_jsonl_with_package_path_and_no_image():
    ds = load_dataset("jsonl", FIX / "jsonl")
    j1, j2, j3 = ds.queries
    assert j1.load_image().size == (8, 8)
    assert j2.load_image().size == (451, 300)  # skimage chelsea
    assert j3.image is None and j3.image_path() is None
    with pytest.raises(ImageLoadError, match="has no image"):
        j3.load_image()
    assert ds.corpus_dict()["p3"].startswith("Bananas")


def test_mini_dataset_uses_wiki_corpus():
    ds = load_dataset("mini")
    assert len(ds.queries) >= 30 and all(q.gold_doc_ids for q in ds.queries)
    corpus = ds.corpus_dict(limit=5)
    assert len(corpus) == 5


def test_mini_runs_another_query_file_over_the_packaged_corpus(tmp_path, monkeypatch):
    row = {"id": "own-1", "image": None, "question": "Who invented dynamite?", "answers": ["Nobel"],
           "gold_doc_ids": ["Dynamite"]}
    (tmp_path / "dev.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.chdir(tmp_path)  # a relative path without --data-dir is relative to the working directory
    for ds in (load_dataset("mini", queries="dev.jsonl"), load_dataset("mini", tmp_path, queries="dev.jsonl")):
        assert [q.qid for q in ds.queries] == ["own-1"]  # the given file, not the shipped benchmark
    with pytest.raises(DatasetFormatError, match="missing.jsonl"):
        load_dataset("mini-text", queries="missing.jsonl")


def test_mini_text_split_mirrors_mini():
    mini, text = load_dataset("mini"), load_dataset("mini-text")
    assert text.name == "mini-text" and len(text.queries) == len(mini.queries) == 41
    by_id = {q.qid: q for q in mini.queries}
    deictic = re.compile(r"\b(this|these|here|pictured|shown)\b", re.IGNORECASE)
    for q in text.queries:
        assert q.qid.endswith("-text") and q.image is None and q.image_path() is None
        original = by_id[q.qid.removesuffix("-text")]
        assert q.answers == original.answers and q.gold_doc_ids == original.gold_doc_ids
        assert q.question != original.question and q.question.endswith("?")
        assert not deictic.search(q.question), f"{q.qid} still points at the picture: {q.question!r}"
    assert by_id["mini-001"].question == "What family of mammals does this animal belong to?"
    assert text.queries[0].question == "What family of mammals does the cat belong to?"
    assert next(text.corpus()) == next(mini.corpus())  # the same Wikipedia corpus
    assert load_mini_benchmark(MINI_TEXT_PATH)[0]["image"] is None


def test_missing_files_and_dirs_are_named(tmp_path):
    d = copy_fixture("okvqa", tmp_path)
    (d / "okvqa_full_corpus.csv").unlink()
    with pytest.raises(DatasetFormatError, match=r"GS112K corpus CSV not found: .*okvqa_full_corpus.csv"):
        load_dataset("okvqa-gs112k", d)
    with pytest.raises(DatasetFormatError, match="COCO images folder not found"):
        load_dataset("okvqa-wk21m", d, images="nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("vqa-v9", d)
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("remuq")
    assert set(DATASETS) >= {"mini", "mini-text", "okvqa-gs112k", "okvqa-wk21m", "gemkr-json", "remuq", "m2kr", "jsonl"}


def test_wrong_csv_columns_and_fields(tmp_path):
    d = copy_fixture("okvqa", tmp_path)
    (d / "okvqa_full_corpus.csv").write_text("id,passage\n1,x\n")
    ds = load_dataset("okvqa-gs112k", d)
    with pytest.raises(DatasetFormatError, match=r"found columns \['id', 'passage'\]; expected an id column \(one of \['kid'\]\)"):
        list(ds.corpus())
    (d / "test.json").write_text(json.dumps([{"question": "q", "answers": ["a"]}]))
    with pytest.raises(DatasetFormatError, match=r"record 0 has none of the fields \['img_id'\]"):
        load_dataset("okvqa-gs112k", d)
    (d / "test.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        load_dataset("okvqa-gs112k", d)


def test_missing_and_corrupt_images(tmp_path):
    d = copy_fixture("okvqa", tmp_path)
    (d / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    (d / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(b"not a jpeg")
    q42, q7 = load_dataset("okvqa-gs112k", d).queries
    with pytest.raises(ImageLoadError, match=r"query '4202': image file not found: .*000000000007.jpg"):
        q7.load_image()
    with pytest.raises(ImageLoadError, match=r"query '4201': cannot decode image .*000000000042.jpg"):
        q42.load_image()
