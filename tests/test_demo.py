"""``make demo``'s runs are checked the way ``eval-vqa`` checks them, before the demo spends minutes on them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from eval_vqa.registry import check_options

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("gemkr_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("checkpoint", ["/some/checkpoint", None])
def test_demo_table_runs_pass_the_option_check(checkpoint):
    """Every option of each table run is read by one of its retrievers (a baseline-only run once got the
    GeMKR checkpoint option and ``make demo`` failed after its retrieval examples)."""
    runs = load_demo().table_runs(checkpoint)
    assert [name for name, _ in runs] == ["question", "question+tags"]
    for _, config in runs:
        check_options(config.options, config.retrievers)  # raises ValueError on an option nobody reads
    tagged = runs[1][1]
    assert "gemkr" in tagged.retrievers and tagged.tags == "classifier,ocr"
    assert tagged.options == ({"checkpoint": checkpoint} if checkpoint else {"zero_shot": "1"})


def test_the_option_check_rejects_the_old_demo_run():
    with pytest.raises(ValueError, match="checkpoint"):
        check_options({"checkpoint": "/some/checkpoint"}, ["bm25", "dense"])
