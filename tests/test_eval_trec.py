"""A run speaks the field's language: its TREC files score the same in ir_measures as in our report, the
table carries Hit@K beside R@K and MRR@K by its cut, and significant differences are marked.

Real BM25 on the mini benchmark, the gold oracle, and BM25 with its scores rounded (a real ranking with
tied scores, as reciprocal rank fusion makes) in one run; ir_measures (the ``[eval]`` extra) reads the
files the run wrote.
"""

from __future__ import annotations

import json

import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore

from eval_vqa.loaders import load_dataset
from eval_vqa.registry import RETRIEVERS, build_retriever, register_retriever
from eval_vqa.runner import RunConfig, read_appended_jsonl, run_retrieval
from eval_vqa.significance import randomisation_p
from eval_vqa.trec import run_name, strictly_decreasing, trec_id

ir_measures = pytest.importorskip("ir_measures", reason="the [eval] extra brings ir_measures")

KS = [1, 3, 5]


class RoundedBM25(BaseRetriever):
    """BM25 with its scores rounded to whole numbers: the same ranking, with ties."""

    def __init__(self, docs, options):
        super().__init__()
        self.bm25 = build_retriever("bm25", docs, options)

    def _retrieve(self, query_bundle):
        return [NodeWithScore(node=h.node, score=float(round(h.score))) for h in self.bm25.retrieve(query_bundle)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    register_retriever("bm25-rounded", lambda docs, o: RoundedBM25(docs, o), uses_image=False, overwrite=True)
    out = tmp_path_factory.mktemp("trec") / "run"
    cfg = RunConfig(dataset="mini", retrievers=["bm25", "bm25-rounded", "gold"], ks=KS, max_docs=120)
    results = run_retrieval(load_dataset("mini"), cfg, out, progress=False)
    del RETRIEVERS["bm25-rounded"]
    return out, results


def test_trec_files_score_the_same_in_ir_measures(run):
    out, results = run
    labels = list(results["retrievers"])
    assert labels == ["bm25", "bm25-rounded", "gold (oracle)"]
    records = read_appended_jsonl(out / "per_query.jsonl")
    rounded = [r for r in records if r["retriever"] == "bm25-rounded"]
    assert any(len({s for _, s in r["ranking"]}) < len(r["ranking"]) for r in rounded)  # ties in the raw scores
    gold_qrels = list(ir_measures.read_trec_qrels(str(out / "trec" / "qrels.gold.txt")))
    measures = {f"R@{k} (gold)": ir_measures.parse_measure(f"R@{k}") for k in KS}
    measures |= {f"Hit@{k} (gold)": ir_measures.parse_measure(f"Success@{k}") for k in KS}
    measures |= {f"P@{k} (gold)": ir_measures.parse_measure(f"P@{k}") for k in KS}
    measures[f"MRR@{max(KS)} (gold)"] = ir_measures.parse_measure(f"RR@{max(KS)}")
    for label in labels:
        ours = results["retrievers"][label]
        run_file = list(ir_measures.read_trec_run(str(out / "trec" / f"{run_name(label)}.run")))
        theirs = ir_measures.calc_aggregate(list(measures.values()), gold_qrels, run_file)
        for name, measure in measures.items():
            assert theirs[measure] == pytest.approx(ours[name], abs=1e-9), (label, name)
        for mode in ("substring", "word"):
            pseudo = list(ir_measures.read_trec_qrels(str(out / "trec" / f"qrels.{mode}.txt")))
            theirs = ir_measures.calc_aggregate([ir_measures.parse_measure(f"P@{k}") for k in KS]
                                                + [ir_measures.parse_measure(f"Success@{k}") for k in KS], pseudo, run_file)
            for k in KS:
                assert theirs[ir_measures.parse_measure(f"P@{k}")] == pytest.approx(ours[f"PRP@{k} ({mode})"], abs=1e-9)
                assert theirs[ir_measures.parse_measure(f"Success@{k}")] == pytest.approx(ours[f"PRR@{k} ({mode})"],
                                                                                          abs=1e-9)
    # R@K and Hit@K differ on the mini items with two gold documents; the paper's R@K is our Hit@K
    bm25 = results["retrievers"]["bm25"]
    assert any(bm25[f"Hit@{k} (gold)"] > bm25[f"R@{k} (gold)"] for k in KS)


def test_the_table_has_hit_at_k_mrr_by_its_cut_and_significance_marks(run):
    out, results = run
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| key | retriever |"))
    assert "| R@1 (gold) | R@3 (gold) | R@5 (gold) | Hit@1 (gold) | Hit@3 (gold) | Hit@5 (gold) | MRR@5 (gold) |" in header
    assert "trec success_K" in table and "trec recall_K" in table
    saved = json.loads((out / "results.json").read_text())
    assert "Hit@5 (gold)" in saved["retrievers"]["bm25"] and "MRR@5 (gold)" in saved["retrievers"]["bm25"]
    sig = saved["significance"]["Hit@1 (gold)"]
    assert sig["gold (oracle)"]["better_than"] == ["bm25", "bm25-rounded"]  # the oracle finds every gold document
    assert sig["bm25"]["p"]["bm25-rounded"] == 1.0 and sig["bm25"]["better_than"] == []  # same ranking, same hits
    gold_row = next(line for line in table.splitlines() if line.startswith("| c | gold (oracle) |"))
    assert "100.0ᵃᵇ" in gold_row
    assert "randomisation test" in table


def test_scores_as_written_keep_the_retrievers_order():
    import numpy as np

    written = strictly_decreasing([3.0, 2.0, 2.0, 5.0, 1.0])
    assert written[:2] == [3.0, 2.0] and written[4] == 1.0 and written == pytest.approx([3.0, 2.0, 2.0, 2.0, 1.0])
    assert all(np.float32(a) > np.float32(b) for a, b in zip(written, written[1:]))  # distinct as C floats too
    assert strictly_decreasing([0.5, 0.5 - 1e-12]) == [0.5, float(np.nextafter(np.float32(0.5), np.float32(0)))]
    assert strictly_decreasing([None, 0.4]) == [2.0, 1.0]
    assert trec_id("Eiffel Tower") == "Eiffel%20Tower" and trec_id("100%") == "100%25" and trec_id("Cat") == "Cat"
    assert run_name("gold (oracle)") == "gold_oracle" and run_name("bm25+tags -> reader") == "bm25+tags_reader"


def test_paired_randomisation_p_by_hand():
    # ten queries, each one better by 1: only the two all-same-sign flips reach |mean| 1 of 2^10 -> p = 2/1024
    assert randomisation_p([1.0] * 10, [0.0] * 10) == pytest.approx(2 / 1024)
    assert randomisation_p([1, 0, 1], [1, 0, 1]) == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        randomisation_p([1, 0], [1])
