"""``gemkr kb build|info|query`` end to end, through the same entry point as the console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gemkr_llamaindex.cli import main


def test_build_info_query(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        '{"id": "paris", "text": "Paris is the capital of France."}\n'
        '{"id": "berlin", "text": "Berlin is the capital of Germany."}\n'
    )
    out = tmp_path / "kb"
    assert main(["kb", "build", "--input", str(corpus), "--tokenizer", "smollm2", "--out", str(out)]) == 0
    assert "2 documents" in capsys.readouterr().out

    assert main(["kb", "info", str(out), "--verify"]) == 0
    info = capsys.readouterr().out
    assert "documents     2" in info and "checksums     OK" in info

    assert main(["kb", "query", str(out), " the capital of"]) == 0
    text = capsys.readouterr().out
    assert "count         2" in text
    assert "paris: Paris is the capital" in text and "berlin: Berlin" in text
    assert "continuations 2:" in text and "' France'" in text and "' Germany'" in text

    assert main(["kb", "query", str(out), " capital of France"]) == 0
    assert "unique doc    paris" in capsys.readouterr().out


def test_errors_go_to_stderr_with_exit_code(tmp_path, capsys):
    assert main(["kb", "info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "gemkr_llamaindex.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "gemkr-llamaindex" in done.stdout


def _read_only_folder(tmp_path):
    """A folder this process cannot write to: chmod 555, or, for root (whom modes do not stop), /sys."""
    import os

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return folder
    try:
        (Path("/sys") / "gemkr-write-probe").mkdir()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only folder is available to this (root) process")


@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
def test_a_build_that_cannot_write_is_an_error_naming_the_path_not_a_traceback(where, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "Paris is the capital of France."}\n')
    if where == "read-only":
        parent = _read_only_folder(tmp_path)
    else:
        parent = tmp_path / "a-file"
        parent.write_text("not a folder")
    out = parent / "gemkr-test-kb"
    assert main(["kb", "build", "--input", str(corpus), "--tokenizer", "smollm2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gemkr: error: ") and str(parent) in err and "Traceback" not in err
    assert not out.exists()
