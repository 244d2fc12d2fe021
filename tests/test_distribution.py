"""Top-level name clashes: another distribution that installs `reader` (PyPI has one) is a clear error.

The other distribution is real metadata on disk (a ``*.dist-info`` folder on ``sys.path``), found by
``importlib.metadata`` as pip's own would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemkr_llamaindex.distribution import check_top_level, owners

ROOT = Path(__file__).resolve().parents[1]


def fake_distribution(site: Path, name: str, top_level: str | None = None, record: str | None = None) -> Path:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if top_level is not None:
        (info / "top_level.txt").write_text(top_level + "\n")
    if record is not None:
        (info / "RECORD").write_text(record)
    return site


def test_no_clash_here():
    check_top_level("reader")
    check_top_level("eval_vqa")
    assert "torch" in owners("torch")


@pytest.mark.parametrize("how", ["top_level", "record"])
def test_another_reader_distribution_is_named(tmp_path, monkeypatch, how):
    if how == "top_level":
        site = fake_distribution(tmp_path, "reader", top_level="reader")
    else:
        site = fake_distribution(tmp_path, "reader", record="reader/__init__.py,sha256=x,10\nreader/core.py,,\n")
    monkeypatch.syspath_prepend(str(site))
    assert owners("reader") == ["reader"]
    with pytest.raises(ImportError, match=r"`reader` is installed both by gemkr-llamaindex and by reader: .*pip uninstall reader"):
        check_top_level("reader")
    check_top_level("eval_vqa")  # a clash is about one name


def test_importing_reader_fails_clearly_beside_the_other_distribution(tmp_path):
    site = fake_distribution(tmp_path, "feed-reader", top_level="reader")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", "import reader"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=120)
    assert run.returncode != 0
    assert "installed both by gemkr-llamaindex and by feed-reader" in run.stderr
