"""Builds racing each other, builds killed at every stage, and KBs opened across an overwrite.

Child processes run this file as a script (``python test_kb_races.py --child MODE TARGET DOCS_TAG``): a
build from token ids (no transformers import, so they start fast) that can pause at a named stage for
the parent to kill it with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import as_text, word_tokenizer

from gemkr_llamaindex.kb import KBError, KnowledgeBase

HERE = Path(__file__).resolve()
STAGES = ("tokenizing", "versioned", "published")  # where a killed build stops


def docs_for(tag: str) -> list[tuple[str, list[int]]]:
    base = {"a": 1, "b": 20}[tag]
    return [(f"{tag}{i}", [base + i % 7, base + 1, base + (i * 3) % 11]) for i in range(30)]


def hidden(parent: Path) -> list[str]:
    """Hidden entries of ``parent`` other than the versioned folders its KB symlinks point to."""
    current = {os.readlink(p) for p in parent.iterdir() if p.is_symlink()}
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and p.name not in current)


def spawn(mode: str, target: Path, tag: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE), "--child", mode, str(target), tag, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------- child
def child(mode: str, target: str, tag: str, *extra: str) -> int:
    """Build ``docs_for(tag)`` into target. Modes: ``race`` (wait for the go file, build slowly),
    ``race-overwrite`` (the same with overwrite=True), ``pause-<stage>`` (overwrite; at the stage, write
    the ready file and sleep until killed)."""
    from gemkr_llamaindex.kb import build as build_module

    target_path = Path(target)
    ready = target_path.with_name(f"ready-{tag}")
    go = target_path.with_name("go")
    stage = mode[len("pause-"):] if mode.startswith("pause-") else None

    def pause() -> None:
        ready.write_text(str(os.getpid()))
        time.sleep(600)

    def rows():
        if mode.startswith("race"):
            while not go.exists():
                time.sleep(0.005)
        for i, doc in enumerate(docs_for(tag)):
            if i == 10:
                if stage == "tokenizing":
                    pause()
                if mode.startswith("race"):
                    time.sleep(0.5)  # long enough for the other builder to try its claim
            yield doc

    if stage == "versioned":
        real_publish = build_module.publish

        def publish(*args):
            pause()
            real_publish(*args)

        build_module.publish = publish
    if stage == "published":
        real_remove = build_module.remove_stale
        calls = []

        def remove_stale(*args):
            calls.append(1)
            if len(calls) == 2:  # after the swap: the old version is still there
                pause()
            return real_remove(*args)

        build_module.remove_stale = remove_stale
    try:
        KnowledgeBase.build_from_token_ids(rows(), target, vocab_size=50, overwrite=mode != "race")
    except KBError as exc:
        print(str(exc), file=sys.stderr)
        return 3
    return 0


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("overwrite", [False, True])
def test_concurrent_builds_into_one_path(tmp_path, overwrite):
    target = tmp_path / "kb"
    mode = "race-overwrite" if overwrite else "race"
    procs = {tag: spawn(mode, target, tag) for tag in ("a", "b")}
    time.sleep(0.3)
    (tmp_path / "go").write_text("")
    out = {tag: (p.wait(timeout=120), p.communicate()[1]) for tag, p in procs.items()}
    codes = sorted(code for code, _ in out.values())
    assert codes == [0, 3], out
    winner = next(tag for tag, (code, _) in out.items() if code == 0)
    loser_err = next(err for code, err in out.values() if code == 3)
    assert "is being built by another process (pid" in loser_err or "already exists" in loser_err
    kb = KnowledgeBase.open(target)
    assert kb.doc_id(0) == f"{winner}0" and kb.num_docs == 30
    assert hidden(tmp_path) == []


def test_killed_first_build_leaves_no_kb_and_is_cleaned_up(tmp_path):
    target = tmp_path / "kb"
    proc = spawn("pause-tokenizing", target, "a")
    wait_for(tmp_path / "ready-a", proc)
    proc.kill()
    proc.wait()
    assert not os.path.lexists(target)
    stale = [n for n in hidden(tmp_path) if ".building-" in n]
    assert len(stale) == 1 and (tmp_path / stale[0]).is_dir()
    KnowledgeBase.build_from_token_ids(docs_for("b"), tmp_path / "other", vocab_size=50)  # same parent
    assert hidden(tmp_path) == [".kb.lock"]  # the dead build's folder is gone; its lock file is inert
    KnowledgeBase.build_from_token_ids(docs_for("b"), target, vocab_size=50)
    assert hidden(tmp_path) == [] and KnowledgeBase.open(target).doc_id(0) == "b0"


@pytest.mark.parametrize("stage", STAGES)
def test_overwrite_killed_at_any_stage_leaves_a_whole_kb(tmp_path, stage):
    target = tmp_path / "kb"
    KnowledgeBase.build_from_token_ids(docs_for("a"), target, vocab_size=50)
    proc = spawn(f"pause-{stage}", target, "b")
    wait_for(tmp_path / "ready-b", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kb = KnowledgeBase.open(target)  # old or new, complete and verified, never missing
    assert kb.doc_id(0) == ("b0" if stage == "published" else "a0")
    base = 20 if stage == "published" else 1
    assert kb.num_docs == 30 and len(kb.doc_ids([base + 1])) == 30  # every document holds base + 1
    assert hidden(tmp_path), "the killed build left something to clean"
    del kb
    KnowledgeBase.build_from_token_ids(docs_for("a"), target, vocab_size=50, overwrite=True)
    assert hidden(tmp_path) == []
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".kb.kb-")]) == 1


def test_an_open_kb_survives_an_overwrite(tmp_path):
    target = tmp_path / "kb"
    first = KnowledgeBase.build([(f"a{i}", as_text([1, 2, i % 5])) for i in range(10)], word_tokenizer(50), target,
                                show_progress=False)
    opened = KnowledgeBase.open(target)  # its tokenizer is not loaded yet
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={f"u{i}": i for i in range(50)}, unk_token="u0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=core)
    KnowledgeBase.build([("z", "u7 u8")], other, target, overwrite=True, show_progress=False)
    new = KnowledgeBase.open(target)
    assert new.doc_ids([7]) == ["z"] and new.encode("t1 t2") == [0, 0]
    # The KB opened before the overwrite still reads its own files, tokenizer included.
    assert opened.encode("t1 t2") == [1, 2]
    assert opened.doc_ids([1, 2]) == [f"a{i}" for i in range(10)] and opened.text(0) == as_text([1, 2, 0])
    assert opened.copy_to(tmp_path / "copy").exists() and KnowledgeBase.open(tmp_path / "copy").build_id == first.build_id
    versions = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".kb.kb-"))
    assert len(versions) == 2  # the old folder is kept while it is open ...
    opened.close()
    first.close()
    del opened, first
    KnowledgeBase.build([("y", "u9")], other, target, overwrite=True, show_progress=False)
    # ... and removed by the next build once nobody has it open; `new` still holds (and keeps) its own.
    assert hidden(tmp_path) == [new.real_path.name]
    assert not (tmp_path / versions[0]).exists() or not (tmp_path / versions[1]).exists()


def test_stale_temporaries_of_dead_pids_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".x.building-{dead.pid}-0a1b2c").mkdir()
    (tmp_path / f".x.building-{dead.pid}-0a1b2c" / "shard_00000.fmi").write_bytes(b"x" * 100)
    (tmp_path / f".x.building-{os.getpid()}-0a1b2d").mkdir()  # a live owner: kept
    os.symlink(".nowhere", tmp_path / f".kb.link-{dead.pid}-00ff")
    KnowledgeBase.build_from_token_ids(docs_for("a"), tmp_path / "kb", vocab_size=50)
    assert hidden(tmp_path) == [f".x.building-{os.getpid()}-0a1b2d"]


def test_cleanup_never_touches_another_kb(tmp_path):
    """A KB whose name extends another's (``kb.kb-x`` next to ``kb``) keeps its folder when ``kb`` is rebuilt."""
    KnowledgeBase.build_from_token_ids(docs_for("b"), tmp_path / "kb.kb-x", vocab_size=50)
    for tag in ("a", "b", "a"):
        KnowledgeBase.build_from_token_ids(docs_for(tag), tmp_path / "kb", vocab_size=50, overwrite=True)
    assert KnowledgeBase.open(tmp_path / "kb.kb-x").doc_id(0) == "b0" and KnowledgeBase.open(tmp_path / "kb").doc_id(0) == "a0"
    assert hidden(tmp_path) == []


def test_build_into_a_plain_directory_with_overwrite(tmp_path):
    kb = KnowledgeBase.build_from_token_ids(docs_for("a"), tmp_path / "src", vocab_size=50)
    plain = kb.copy_to(tmp_path / "kb")  # a plain directory, not a symlink
    KnowledgeBase.build_from_token_ids(docs_for("b"), plain, vocab_size=50, overwrite=True)
    assert (tmp_path / "kb").is_symlink() and KnowledgeBase.open(plain).doc_id(0) == "b0"
    assert hidden(tmp_path) == []
    assert json.loads((tmp_path / "kb" / "manifest.json").read_text())["num_docs"] == 30


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    sys.exit(child(*sys.argv[2:]))
