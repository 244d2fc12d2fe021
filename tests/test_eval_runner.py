"""The runner and CLI end to end: mini benchmark with real BM25 + MiniLM, resume, e2e, plug-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, TextNode

from eval_vqa.cli import main
from eval_vqa.loaders import load_dataset
from eval_vqa.registry import RETRIEVERS, register_answerer, register_retriever
from eval_vqa.runner import RunConfig, read_appended_jsonl, run_e2e, run_retrieval, select_corpus

FIX = Path(__file__).parent / "fixtures" / "eval_vqa"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class CorpusOrderRetriever(BaseRetriever):
    """Returns the corpus in its stored order: a fully predictable retriever for metric plumbing."""

    def __init__(self, docs, top_k):
        super().__init__()
        self.docs, self.top_k = docs, top_k
        self.seen_bundles = []

    def _retrieve(self, query_bundle):
        self.seen_bundles.append(query_bundle)
        return [NodeWithScore(node=TextNode(id_=i, text=t), score=1.0) for i, t in self.docs[: self.top_k]]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def mini():
    return load_dataset("mini")


def test_select_corpus_keeps_gold(mini):
    docs = select_corpus(mini, mini.queries, max_docs=80, seed=0)
    ids = {d for d, _ in docs}
    assert len(docs) == 80 and {g for q in mini.queries for g in q.gold_doc_ids} <= ids
    assert docs == select_corpus(mini, mini.queries, max_docs=80, seed=0)


def test_mini_retrieval_bm25_dense_end_to_end(mini, tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(dataset="mini", retrievers=["bm25", "dense"], ks=[1, 5, 10], max_docs=80)
    res = run_retrieval(mini, cfg, out, progress=False, image_cache=tmp_path / "img")
    n = len(mini.queries)
    assert res["n_queries"] == n and res["corpus_size"] == 80
    for label in ("bm25", "dense"):
        s = res["retrievers"][label]
        assert s["n_queries"] == n
        lat = sorted(1000 * r["latency_s"] for r in read_appended_jsonl(out / "per_query.jsonl") if r["retriever"] == label)
        assert s["latency_ms_p50"] == lat[len(lat) // 2] and s["latency_ms_p99"] == lat[-1]  # n < 100: p99 = max
        # real signal: 80 passages, gold always inside; chance R@10 would be about 10/80
        assert s["R@10 (gold)"] > 0.5 and s["PRR@10 (substring)"] >= s["PRR@1 (substring)"]
        assert s["PRR@10 (substring)"] >= s["PRR@10 (word)"]  # substring relevance is the looser one
        assert s["PRP@10 (substring)"] <= s["PRR@10 (substring)"]
    md = (out / "results.md").read_text()
    assert "| bm25 |" in md and "| dense |" in md and "substring (answer.lower() in passage.lower()" in md
    for png in ("recall_at_k.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    records = lines(out / "per_query.jsonl")
    assert len(records) == 2 * n and all(len(r["retrieved_ids"]) == 10 for r in records)
    assert json.loads((out / "results.json").read_text())["retrievers"]["bm25"] == res["retrievers"]["bm25"]


def test_resume_skips_done_queries_and_rejects_changed_settings(mini, tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(dataset="mini", retrievers=["bm25"], ks=[1, 5], max_docs=60, limit=12)
    first = run_retrieval(mini, cfg, out, progress=False)
    per_query = out / "per_query.jsonl"
    full = per_query.read_text().splitlines(keepends=True)
    assert len(full) == 12
    per_query.write_text("".join(full[:5]) + full[5][:20])  # interrupted mid-write
    with pytest.warns(UserWarning, match="per_query.jsonl: dropped 1 torn line"):
        again = run_retrieval(mini, cfg, out, progress=False)
    recs = lines(per_query)
    assert len(recs) == 12 and len({r["qid"] for r in recs}) == 12
    def no_latency(summary):
        return {k: v for k, v in summary.items() if "latency" not in k}

    assert no_latency(again["retrievers"]["bm25"]) == no_latency(first["retrievers"]["bm25"])
    run_retrieval(mini, cfg, out, progress=False)
    assert len(lines(per_query)) == 12  # nothing left to do
    with pytest.raises(ValueError, match="different settings \\(ks\\)"):
        run_retrieval(mini, RunConfig(dataset="mini", retrievers=["bm25"], ks=[1, 3], max_docs=60, limit=12),
                      out, progress=False)


def test_plugged_retriever_and_answerer_hand_checked(tmp_path):
    ds = load_dataset("jsonl", FIX / "jsonl")
    made = []

    def factory(docs, options):
        made.append(CorpusOrderRetriever(docs, options["top_k"]))
        return made[-1]

    register_retriever("corpus-order", factory, uses_tags=True, overwrite=True)
    register_answerer("second-passage-first-word",
                      lambda o: (lambda req: req.passages[1].split()[0]), overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_retriever("corpus-order", factory)
    cfg = RunConfig(dataset="jsonl", retrievers=["corpus-order"], ks=[1, 2], answerer="second-passage-first-word",
                    reader_k=2)
    res = run_e2e(ds, cfg, tmp_path / "e2e", progress=False, image_cache=tmp_path / "img")
    recs = {r["qid"]: r for r in lines(tmp_path / "e2e" / "per_query.jsonl")}
    # corpus p1 "The fire hydrant is usually red..." p2 "Tennis is played..."; j1 gold p1, answer "red"
    assert recs["j1"]["metrics"]["R@1 (gold)"] == 1.0 and recs["j1"]["metrics"]["PRR@1 (substring)"] == 1.0
    assert recs["j1"]["metrics"]["PRP@2 (substring)"] == 0.5
    assert "R@1 (gold)" not in recs["j2"]["metrics"]  # j2 has no gold ids
    assert recs["j2"]["metrics"]["PRR@2 (substring)"] == 0.0  # "cat" in neither passage
    # the answerer saw passages p1, p2 and answered "Tennis"; answers are single references -> EM only
    assert all(r["prediction"] == "Tennis" for r in recs.values())
    assert all(r["metrics"]["EM (VQA-normalised)"] == 0.0 for r in recs.values())
    label = "corpus-order -> second-passage-first-word"
    assert res["retrievers"][label]["n_queries"] == 3
    bundles = made[-1].seen_bundles
    assert bundles[0].image_path.endswith("img.png") and bundles[2].image_path is None
    assert "VQA acc" in (tmp_path / "e2e" / "results.md").read_text()
    del RETRIEVERS["corpus-order"]


def test_e2e_top_title_on_mini(mini, tmp_path):
    cfg = RunConfig(dataset="mini", retrievers=["bm25"], ks=[1, 5], max_docs=60, limit=8, answerer="top-title",
                    reader_k=3)
    res = run_e2e(mini, cfg, tmp_path / "e2e", progress=False)
    recs = lines(tmp_path / "e2e" / "per_query.jsonl")
    assert all(r["prediction"] == r["retrieved_ids"][0] for r in recs)
    s = res["retrievers"]["bm25 -> top-title"]
    assert 0.0 <= s["EM (VQA-normalised)"] <= 1.0 and "VQA acc (leave-one-out)" in s


def test_cli_retrieval_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["retrieval", "--dataset", "jsonl", "--data-dir", str(FIX / "jsonl"), "--retrievers", "bm25",
               "--k", "1", "2", "--relevance", "word", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "| bm25 |" in text and "word (\\banswer\\b" in text
    assert json.loads((out / "config.json").read_text())["ks"] == [1, 2]
    assert main(["retrieval", "--dataset", "jsonl", "--data-dir", str(FIX / "jsonl"), "--retrievers", "nope",
                 "--out", str(out)]) == 2
    assert "unknown retriever" in capsys.readouterr().err
    assert main(["retrieval", "--dataset", "okvqa-gs112k", "--data-dir", str(tmp_path / "absent"),
                 "--retrievers", "bm25", "--out", str(tmp_path / "x")]) == 1
    assert "GS112K corpus CSV not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["retrieval", "--dataset", "no-such-set", "--out", str(out)])


def test_register_adds_gemkr_eval_subcommand(tmp_path):
    import argparse

    from eval_vqa.cli import register

    parser = argparse.ArgumentParser(prog="gemkr")
    register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["eval", "retrieval", "--dataset", "jsonl", "--data-dir", str(FIX / "jsonl"),
                              "--retrievers", "bm25", "--k", "1", "--out", str(tmp_path / "g"), "--no-progress"])
    assert args.func(args) == 0 and (tmp_path / "g" / "results.md").is_file()


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: a 135M reader is faster that way on a small shared CPU (see test_reader)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cli_e2e_reader_reads_nodes_beside_the_gold_oracle(tmp_path, capsys, one_torch_thread):
    # The README command on 2 mini items with the real packaged reader (SmolLM2), plus the oracle row.
    out = tmp_path / "x"
    rc = main(["e2e", "--dataset", "mini", "--retrievers", "bm25,gold", "--answerer", "reader", "--reader-k", "3",
               "--limit", "2", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| bm25 -> reader |" in printed and "| gold (oracle) -> reader |" in printed
    assert "normalisation `official`" in printed and "upper bound" in printed
    recs = lines(out / "per_query.jsonl")
    assert len(recs) == 4 and {r["qid"] for r in recs} == {"mini-001", "mini-002"}
    for r in recs:
        assert r["prediction"].strip() and len(r["prediction"].split()) <= 3
        assert r["answer_latency_s"] > 0 and r["retrieval_latency_s"] >= 0
        assert {"VQA acc (leave-one-out)", "EM (VQA-normalised)"} <= set(r["metrics"])
    gold = [r for r in recs if r["retriever"] == "gold (oracle) -> reader"]
    assert all(r["retrieved_ids"] == ["Cat"] and r["metrics"]["R@1 (gold)"] == 1.0 for r in gold)
    assert [r["retrieved_ids"] for r in recs if r["retriever"] == "bm25 -> reader"][0].__len__() == 3
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["vqa_normalize"] == "official"
    assert results["retrievers"]["bm25 -> reader"]["answer_ms_mean"] > 0


def test_e2e_gives_the_answerer_nodes_and_adds_an_oracle_row(mini, tmp_path):
    seen = []

    def factory(options):
        def answer(req):
            seen.append(req)
            return req.passage_ids[0] if req.nodes else ""
        return answer

    register_answerer("record-nodes", factory, overwrite=True)
    cfg = RunConfig(dataset="mini", retrievers=["bm25", "gold"], ks=[1, 5], max_docs=60, limit=6,
                    answerer="record-nodes", reader_k=3)
    res = run_e2e(mini, cfg, tmp_path / "e2e", progress=False, image_cache=tmp_path / "img")
    assert set(res["retrievers"]) == {"bm25 -> record-nodes", "gold (oracle) -> record-nodes"}
    assert all(isinstance(n, NodeWithScore) for req in seen for n in req.nodes)
    assert all(len(req.nodes) == 3 for req in seen[:6])  # bm25 rows: reader_k nodes
    for req, q in zip(seen[6:], mini.queries[:6]):  # oracle rows: the gold documents, in annotation order
        assert req.passage_ids == q.gold_doc_ids[:3] and req.image_path.endswith(".png")
    oracle = res["retrievers"]["gold (oracle) -> record-nodes"]
    assert oracle["R@5 (gold)"] == 1.0 and oracle["EM (VQA-normalised)"] == 0.0  # titles are not answers
    md = (tmp_path / "e2e" / "results.md").read_text()
    assert "| gold (oracle) -> record-nodes |" in md and "upper bound" in md
    with pytest.raises(TypeError, match="NodeWithScore"):
        from eval_vqa.registry import AnswerRequest

        AnswerRequest("q", None, ["a passage"])  # type: ignore[list-item]


def test_gold_oracle_needs_gold_ids(tmp_path):
    from eval_vqa.loaders import VQADataset, VQAQuery

    # OK-VQA style: answers only, no gold documents
    ds = VQADataset("nogold", [VQAQuery("q1", "What colour is a banana?", None, ["yellow"])],
                    lambda: iter([("d1", "Bananas are yellow."), ("d2", "Cherries are red.")]))
    cfg = RunConfig(dataset="nogold", retrievers=["gold"], ks=[1], answerer="top-title", reader_k=1)
    with pytest.raises(ValueError, match="gold document ids"):
        run_e2e(ds, cfg, tmp_path / "o", progress=False, image_cache=tmp_path / "img")


def test_torn_tags_tail_is_dropped_and_tagged_again(tmp_path, monkeypatch):
    import gemkr_llamaindex.tags as tags_module

    tagged = []

    def hint_tagger(backends):  # the tagger contract: image -> hint string or None
        assert backends == ["fake"]
        return lambda image: tagged.append(image) or f"tag{len(tagged)}"

    monkeypatch.setattr(tags_module, "hint_tagger", hint_tagger)
    ds = load_dataset("jsonl", FIX / "jsonl")  # j1, j2 have images, j3 has none
    cfg = RunConfig(dataset="jsonl", retrievers=["bm25"], ks=[1], tags="fake")
    run_retrieval(ds, cfg, tmp_path / "t", progress=False)
    cache = tmp_path / "t" / "tags.jsonl"
    assert [r["qid"] for r in lines(cache)] == ["j1", "j2"] and len(tagged) == 2
    cache.write_text(cache.read_text()[:-9])  # interrupted mid-line: j2's record is torn
    (tmp_path / "t" / "per_query.jsonl").unlink()  # so that the retrievals run again too
    with pytest.warns(UserWarning, match="tags.jsonl: dropped 1 torn line"):
        again = run_retrieval(ds, cfg, tmp_path / "t", progress=False)
    assert len(tagged) == 3  # only j2 was tagged again
    assert [(r["qid"], r["tags"]) for r in lines(cache)] == [("j1", "tag1"), ("j2", "tag3")]
    assert again["retrievers"]["bm25+tags"]["n_queries"] == 3


def test_latency_plot_uses_a_log_axis_with_value_labels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval_vqa.report import latency_figure

    fig = latency_figure({"bm25": {"latency_ms_mean": 2.0}, "gemkr": {"latency_ms_mean": 3100.0},
                          "dense": {"latency_ms_mean": 0.4}})
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["2.0 ms", "3.1 s", "0.40 ms"]
    assert ax.get_xlim()[0] < 0.4 and ax.get_xlim()[1] > 3100
    plt.close(fig)
    # end to end: a retrieval bar and a total bar per row
    fig = latency_figure({"bm25 -> reader": {"latency_ms_mean": 3500.0, "retrieval_ms_mean": 2.0}}, e2e=True)
    assert fig.axes[0].get_xscale() == "log" and [t.get_text() for t in fig.axes[0].texts] == ["2.0 ms", "3.5 s"]
    plt.close(fig)
