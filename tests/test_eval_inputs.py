"""Evaluation inputs that are wrong are refused, naming the file, the line or the query id: misspelt
``--option`` names, repeated query ids, non-UTF-8 query files, empty questions, a torn run config."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from eval_vqa.cli import main
from eval_vqa.loaders import DatasetFormatError, load_dataset
from eval_vqa.registry import RETRIEVERS, register_retriever
from eval_vqa.runner import RunConfig, run_retrieval

FIX = Path(__file__).parent / "fixtures" / "eval_vqa"


@pytest.mark.parametrize(("retrievers", "option"), [("bm25", "beam=4"), ("bm25", "prior_wieght=0.5"),
                                                    ("bm25,gold", "checkpont=runs/x")])
def test_a_misspelt_option_is_refused_naming_the_valid_ones(retrievers, option, tmp_path, capsys):
    """``eval-vqa --option beam=4`` once exited 0: the value landed in config.json and was never applied."""
    out = tmp_path / "run"
    code = main(["retrieval", "--dataset", "jsonl", "--data-dir", str(FIX / "jsonl"), "--retrievers", retrievers,
                 "--k", "1", "--out", str(out), "--option", option, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"unknown option(s) ['{option.split('=')[0]}']" in err and "valid: " in err and "top_k" in err
    assert not (out / "per_query.jsonl").exists()


def test_every_options_set_is_derived_from_what_reads_it():
    """gemkr's options are its own plus every DecodingConfig field, looked up at call time: a decoding setting
    added later is an option with no list to update."""
    from eval_vqa.gemkr import OWN_OPTIONS
    from eval_vqa.registry import RUN_OPTIONS, check_options
    from gemkr_llamaindex.decoding import DecodingConfig

    fields = {f.name: "1" for f in dataclasses.fields(DecodingConfig)}
    check_options({**fields, "beams": "20", "groups": "4", **dict.fromkeys(OWN_OPTIONS, "1")}, ["gemkr"])
    check_options({**fields, "reader_window": "2", "reader_hints": "0"}, ["gemkr+bm25", "gemkr"], "reader")
    check_options(dict.fromkeys(RUN_OPTIONS, "1"), ["bm25"], "top-title")  # what the runner and CLI set
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['reader_windw'\].*reader_window"):
        check_options({"reader_windw": "2"}, ["bm25"], "reader")
    with pytest.raises(ValueError, match=r"\['num_beams'\]"):
        check_options({"num_beams": "20"}, ["bm25", "dense"])  # a decoding setting, but no gemkr in the run
    register_retriever("undeclared", lambda docs, o: None, overwrite=True)
    try:
        check_options({"anything": "1"}, ["bm25", "undeclared"])  # a plug-in that declared nothing: not checked
    finally:
        del RETRIEVERS["undeclared"]


def _queries(tmp_path: Path, lines: list[str | bytes]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"id": "p1", "text": "The fire hydrant is red."}\n')
    (folder / "queries.jsonl").write_bytes(b"".join(x if isinstance(x, bytes) else x.encode() + b"\n" for x in lines))
    return folder


def _q(qid: str, question: str = "What colour is a hydrant?", image=None) -> str:
    return json.dumps({"id": qid, "question": question, "answers": ["red"], "gold_doc_ids": ["p1"], "image": image})


def test_a_repeated_query_id_is_refused_naming_both_lines(tmp_path):
    """After a resume the second of two equal ids was never scored, and the table mixed n=2 and n=3 rows."""
    folder = _queries(tmp_path, [_q("q1"), _q("q2"), "", _q("q1", "Another question?")])
    with pytest.raises(DatasetFormatError, match=r"queries\.jsonl:4: duplicate query id 'q1' \(first at .*queries\.jsonl:1\)"):
        load_dataset("jsonl", folder)


def test_a_non_utf8_query_file_is_refused_naming_the_line(tmp_path):
    folder = _queries(tmp_path, [_q("q1"), b'{"id": "q2", "question": "caf\xe9?", "answers": ["x"]}\n'])
    with pytest.raises(DatasetFormatError, match=r"queries\.jsonl:2: not UTF-8 text"):
        load_dataset("jsonl", folder)
    records = tmp_path / "okvqa.json"
    records.write_bytes(b'[{"question": "caf\xe9?"}]')
    from eval_vqa.loaders.okvqa import read_json_records

    with pytest.raises(DatasetFormatError, match=r"okvqa\.json: not UTF-8 text"):
        read_json_records(records)


def test_an_empty_question_without_a_picture_is_refused_naming_the_line(tmp_path):
    folder = _queries(tmp_path, [_q("q1"), _q("q2", "   ")])
    with pytest.raises(DatasetFormatError, match=r"queries\.jsonl:2: query 'q2' has an empty question and no image"):
        load_dataset("jsonl", folder)
    assert load_dataset("jsonl", _queries(tmp_path / "pic", [_q("q1", "", image="img.png")])).queries[0].question == ""


def test_a_retriever_error_names_the_query_id(tmp_path):
    """A failing query was reported by its index in a batch ("query 0: ..."), not by its id."""
    from llama_index.core.base.base_retriever import BaseRetriever

    class Fails(BaseRetriever):
        def _retrieve(self, query_bundle):
            raise ValueError("query 0: the retriever cannot read this")

    register_retriever("fails", lambda docs, o: Fails(), overwrite=True)
    try:
        ds = load_dataset("jsonl", FIX / "jsonl")
        with pytest.raises(ValueError, match=r"^query 'j1': query 0: the retriever cannot read this"):
            run_retrieval(ds, RunConfig(dataset="jsonl", retrievers=["fails"], ks=[1]), tmp_path / "run", progress=False)
    finally:
        del RETRIEVERS["fails"]


def test_the_run_config_is_written_atomically_once_and_a_torn_one_is_named(tmp_path):
    ds = load_dataset("jsonl", FIX / "jsonl")
    cfg = RunConfig(dataset="jsonl", retrievers=["bm25"], ks=[1])
    out = tmp_path / "run"
    run_retrieval(ds, cfg, out, progress=False)
    config = out / "config.json"
    before = config.stat()
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))  # an older stamp: any rewrite shows
    stamp = config.stat().st_mtime_ns
    run_retrieval(ds, cfg, out, progress=False)
    assert config.stat().st_mtime_ns == stamp  # nothing changed, nothing rewritten
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    config.write_text(config.read_text()[:40])  # torn by a crash of an older version
    with pytest.raises(ValueError, match=r"run/config\.json is unreadable .* cannot be resumed"):
        run_retrieval(ds, cfg, out, progress=False)
