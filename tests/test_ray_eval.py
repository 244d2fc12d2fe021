"""Distributed evaluation on a real local Ray cluster: same ids and metrics as a local run, resume, CLI.

Each distributed run starts a fresh pool of Ray actors (a few seconds each on a small CPU), so the runs
here are few and small: BM25 on the first queries of the mini benchmark.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from eval_vqa.cli import main
from eval_vqa.distributed import RAY_EXTRA, RayOptions, RayUnavailableError, import_ray
from eval_vqa.loaders import load_dataset
from eval_vqa.runner import RunConfig, run_retrieval

# Ray Data's own DataContext warns about its deprecated fields whenever it is copied.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")


@pytest.fixture(scope="module")
def mini():
    return load_dataset("mini")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def scored(path: Path) -> dict[tuple[str, str], tuple[list, dict]]:
    """(retriever, qid) -> (retrieved ids, metrics): what must not depend on where a query was scored."""
    return {(r["retriever"], r["qid"]): (r["retrieved_ids"], r["metrics"]) for r in lines(path / "per_query.jsonl")}


def no_latency(results: dict) -> dict:
    return {label: {k: v for k, v in s.items() if "latency" not in k} for label, s in results["retrievers"].items()}


def test_distributed_run_matches_the_local_run(ray_cluster, mini, tmp_path):
    cfg = RunConfig(dataset="mini", retrievers=["bm25"], ks=[1, 5], max_docs=60, limit=6)
    local = run_retrieval(mini, cfg, tmp_path / "local", progress=False)
    dist = run_retrieval(mini, cfg, tmp_path / "ray", progress=False, ray=RayOptions(workers=2, batch_size=2))
    want, got = scored(tmp_path / "local"), scored(tmp_path / "ray")
    assert len(want) == 6 and got == want
    assert no_latency(dist) == no_latency(local)  # summed in query order: equal to the last bit
    recs = lines(tmp_path / "ray" / "per_query.jsonl")
    assert all(r["latency_s"] > 0 and r["build_s"] > 0 and r["tags"] is None for r in recs)  # measured on a worker
    assert json.loads((tmp_path / "ray" / "config.json").read_text()) == json.loads((tmp_path / "local" / "config.json").read_text())


def test_cli_ray_resumes_an_interrupted_run_and_leaves_the_cluster_up(ray_cluster, tmp_path, capsys):
    common = ["retrieval", "--dataset", "mini", "--retrievers", "bm25", "--k", "1", "5", "--max-docs", "60",
              "--limit", "6", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    # an interrupted run: the records of mini-002 and mini-005 never made it to disk
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    per_query = tmp_path / "ray" / "per_query.jsonl"
    full = per_query.read_text().splitlines(keepends=True)
    kept = [line for line in full if json.loads(line)["qid"] not in ("mini-002", "mini-005")]
    per_query.write_text("".join(kept))
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "ray"), "--ray", "--ray-workers", "1", "--ray-batch-size", "1"]) == 0
    assert "| bm25 |" in capsys.readouterr().out
    after = per_query.read_text().splitlines(keepends=True)
    assert after[: len(kept)] == kept  # finished pairs untouched ...
    assert sorted(json.loads(line)["qid"] for line in after[len(kept):]) == ["mini-002", "mini-005"]  # ... not sent again
    assert scored(tmp_path / "ray") == scored(tmp_path / "local")
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "ray")]
    assert no_latency(results[1]) == no_latency(results[0])
    assert ray_cluster.is_initialized()  # a cluster the CLI did not start is not shut down


def test_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed (runs without the extra too)
    with pytest.raises(RayUnavailableError, match=r'pip install "gemkr-llamaindex\[ray\]"'):
        import_ray()
    fix = Path(__file__).parent / "fixtures" / "eval_vqa" / "jsonl"
    rc = main(["retrieval", "--dataset", "jsonl", "--data-dir", str(fix), "--retrievers", "bm25", "--k", "1",
               "--out", str(tmp_path / "x"), "--no-progress", "--ray"])
    assert rc == 1 and RAY_EXTRA in capsys.readouterr().err


def test_bad_ray_options_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=">= 1"):
        RayOptions(workers=0)
    assert main(["retrieval", "--dataset", "mini", "--out", str(tmp_path / "x"), "--ray", "--ray-batch-size", "0"]) == 2
    assert "--ray-batch-size" in capsys.readouterr().err
