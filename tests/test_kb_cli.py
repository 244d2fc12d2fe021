"""``gemkr kb build|info|query`` end to end, through the same entry point as the console script."""

from __future__ import annotations

import subprocess
import sys

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
