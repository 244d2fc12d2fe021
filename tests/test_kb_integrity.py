"""Integrity of a KB on disk: corrupt files never crash the process, manifests and inputs fail clearly,
the tokenizer check covers the whole pipeline, and a KB knows its identity (build_id, copy_to).

The fuzz test drives this same file as a script (``python test_kb_integrity.py --fuzz-worker ...``): a
fork server that imports the library once and opens each corrupted KB in a forked child.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from conftest import as_text, word_tokenizer
from kb_reference import ReferenceKB

from gemkr_llamaindex.kb import (
    END,
    ChecksumError,
    CorpusError,
    IndexFormatError,
    KBError,
    KnowledgeBase,
    TokenizerMismatchError,
    read_corpus_file,
)

HERE = Path(__file__).resolve()


def small_docs(n=40, seed=0):
    rng = random.Random(seed)
    return [[rng.choice([1, 2, 3, 4, 5, rng.randrange(50)]) for _ in range(rng.randint(1, 20))] for _ in range(n)]


def build(tmp_path, docs, name="kb", **kw) -> KnowledgeBase:
    pairs = [(f"d{i}", as_text(d)) for i, d in enumerate(docs)]
    return KnowledgeBase.build(pairs, word_tokenizer(50), tmp_path / name, show_progress=False, **kw)


# ---------------------------------------------------------------------------------------------- fuzz
def fuzz_queries(kb: KnowledgeBase, encode: bool) -> None:
    for ids in ([1], [1, 2], [3, 4, 5], [7], []):
        kb.count(ids)
        kb.next_tokens(ids)
        kb.doc_ids(ids)
        kb.unique_doc(ids)
    for anchor in ("any", "doc_start"):
        states = kb.root_states(4, anchor=anchor)
        for tok in ([1, 2, 3, 4], [2, 2, END, 5], [END, 1, 1, 1]):
            kb.children(states)
            kb.continuations(states)
            states = kb.step(states, tok).states
    for i in range(min(kb.num_docs, 5)):
        kb.text(i)
        try:
            kb.index_of(kb.doc_id(i))
        except KeyError:  # damaged ids (verify=False) may no longer be in sorted order: a wrong answer
            pass
    int(np.asarray(kb.doc_lengths()).sum())
    if encode:
        kb.encode("t1 t2 t3")


def fuzz_child(kb_dir: str, verify: bool, encode: bool) -> int:
    try:
        fuzz_queries(KnowledgeBase.open(kb_dir, verify=verify), encode)
        return 0
    except KBError:
        return 3
    except BaseException:
        traceback.print_exc()
        return 4


def fuzz_worker(kb_dir: str, trials_file: str, encode: bool) -> None:
    """Per trial: patch the file in place, fork a child that opens and queries the KB, restore the file.
    Prints per trial the child's exit code (0 answered, 3 KBError, 4 other error), 'signal N' or 'hang'.
    With ``encode`` the children also load the KB's tokenizer (transformers is imported once, before
    forking; forking a process that holds it costs 3x more, hence two workers)."""
    if encode:
        from transformers import AutoTokenizer  # noqa: F401

    folder = Path(os.path.realpath(kb_dir))
    results = []
    for trial in json.loads(Path(trials_file).read_text()):
        path = folder / trial["file"]
        original = path.read_bytes()
        data = bytearray(original)
        for offset, xor in trial["flips"]:
            data[offset % len(data)] ^= xor
        path.write_bytes(bytes(data))
        pid = os.fork()
        if pid == 0:
            os._exit(fuzz_child(kb_dir, trial["verify"], encode))
        deadline, status = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            time.sleep(0.002)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            results.append("hang")
        else:
            results.append(f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
        path.write_bytes(original)
    print(json.dumps(results))


def test_corrupt_files_never_crash_the_process(tmp_path):
    """Every file of a 2-shard KB, bytes flipped at seeded random offsets (often near the end of a shard,
    where the rank directories and the cache lie), opened with and without checksum verification."""
    kb = build(tmp_path, small_docs(), shard_tokens=250, cache_min_children=2)
    assert kb.num_shards == 2
    rng = random.Random(1234)
    trials = []
    for name in sorted(kb.manifest["files"]) + ["manifest.json"]:
        size = (kb.real_path / name).stat().st_size
        for k in range(16 if name.startswith("tokenizer/") or name == "manifest.json" else 36):
            where = k % 3  # near the end, in the first KiB, anywhere
            flips = []
            for _ in range(rng.randint(1, 3)):
                at = {0: size - 1 - rng.randrange(min(size, 256)), 1: rng.randrange(min(size, 1024))}.get(where, rng.randrange(size))
                flips.append([at, rng.randint(1, 255)])
            trials.append({"file": name, "flips": flips, "verify": k % 4 == 0})
    results = []
    for encode in (False, True):  # the tokenizer files (and the manifest) with tokenizer loading
        batch = [t for t in trials if (t["file"].startswith("tokenizer/") or t["file"] == "manifest.json") == encode]
        (tmp_path / "trials.json").write_text(json.dumps(batch))
        done = subprocess.run([sys.executable, str(HERE), "--fuzz-worker", str(kb.path), str(tmp_path / "trials.json"),
                               str(int(encode))], capture_output=True, text=True, timeout=300, cwd=HERE.parent)
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(got) == len(batch)
        bad = [(t["file"], t["flips"], t["verify"], r) for t, r in zip(batch, got) if r not in (0, 3)]
        assert not bad, f"{len(bad)} trials died or raised a non-KB error: {bad[:10]}\n{done.stderr[-3000:]}"
        results += list(zip(batch, got))
    trials, results = [t for t, _ in results], [r for _, r in results]
    shard_results = [r for t, r in zip(trials, results) if t["file"].endswith(".fmi") and not t["verify"]]
    assert shard_results.count(3) > len(shard_results) // 2  # most corrupt shards are caught without checksums
    assert all(r == 3 for t, r in zip(trials, results) if t["verify"])  # the checksum catches every flip


# ---------------------------------------------------------------------------------------------- checksums
def test_xxh64_matches_the_reference_algorithm(tmp_path):
    from gemkr_llamaindex.kb import _fmindex

    assert _fmindex.xxh64(b"") == 0xEF46DB3751D8E999
    assert _fmindex.xxh64(b"abc") == 0x44BC2CF5AD770999
    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert _fmindex.xxh64_file(str(tmp_path / "f")) == _fmindex.xxh64(data)
    xxhash = pytest.importorskip("xxhash")
    for n in (0, 1, 3, 4, 7, 8, 31, 32, 33, 63, 64, 1000, 100_003):
        assert _fmindex.xxh64(data[:n]) == xxhash.xxh64_intdigest(data[:n]), n


def test_checksums_are_verified_by_default_at_every_size(tmp_path):
    kb = build(tmp_path, small_docs())
    assert set(kb.manifest["files"]) >= {"shard_00000.fmi", "doc_lengths.npy", "tokenizer/tokenizer.json"}
    assert all(len(r["xxh64"]) == 16 for r in kb.manifest["files"].values())
    texts, first = kb.real_path / "texts.bin", kb.text(0)
    data = bytearray(texts.read_bytes())
    data[3] ^= 0x01  # a letter of a document text: invisible to every structural check
    texts.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="texts.bin: xxh64 checksum differs"):
        KnowledgeBase.open(kb.path)
    assert KnowledgeBase.open(kb.path, verify=False).text(0) != first  # opted out: sizes/structure only
    shard = kb.real_path / "shard_00000.fmi"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # padding at the end of the cache section
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="shard_00000.fmi: xxh64 checksum differs"):
        KnowledgeBase.open(kb.path)


# ---------------------------------------------------------------------------------------------- manifest
def rewrite_manifest(kb_dir: Path, change) -> None:
    path = Path(os.path.realpath(kb_dir)) / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


@pytest.mark.parametrize("change, message", [
    (lambda m: [1, 2], "holds a JSON list, not an object"),
    (lambda m: {k: v for k, v in m.items() if k != "files"}, "no 'files' records"),
    (lambda m: {**m, "format_version": "3"}, "format_version '3' is not an integer"),
    (lambda m: {**m, "format_version": 2}, "older than this library's"),
    (lambda m: {**m, "shards": [{"file": "../x.fmi", "num_docs": 1, "num_tokens": 1}]}, "names an unrecorded file"),
    (lambda m: {**m, "files": {**m["files"], "../etc/passwd": {"bytes": 1, "xxh64": "0"}}}, "points outside"),
    (lambda m: {**m, "num_docs": "40"}, "'num_docs' is not a count"),
    (lambda m: {**m, "normalization": None}, "no valid 'normalization'"),
])
def test_bad_manifests_are_index_format_errors(tmp_path, change, message):
    kb_dir = build(tmp_path, small_docs(5)).path
    rewrite_manifest(kb_dir, change)
    with pytest.raises(IndexFormatError, match=message):
        KnowledgeBase.open(kb_dir)


def test_missing_tokenizer_folder_is_reported_as_incomplete(tmp_path):
    import shutil

    kb = build(tmp_path, small_docs(5))
    shutil.rmtree(kb.real_path / "tokenizer")
    with pytest.raises(IndexFormatError, match="tokenizer folder .* is missing: the KB is incomplete"):
        KnowledgeBase.open(kb.path)
    ids_only = KnowledgeBase.build_from_token_ids([("a", [1, 2])], tmp_path / "ids", vocab_size=10)
    with pytest.raises(KBError, match="built from token ids without a tokenizer"):
        ids_only.encode("x")


# ---------------------------------------------------------------------------------------------- tokenizer
def lowercasing(tok):
    """The same vocabulary and model with a lower-casing normaliser: other ids for 'T1' than the original."""
    from tokenizers import Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    core.normalizer = normalizers.Lowercase()
    other = PreTrainedTokenizerFast(tokenizer_object=core)
    other.name_or_path = "lowercasing-copy"
    return other


def test_tokenizer_check_covers_the_normaliser(tmp_path):
    kb = build(tmp_path, [[1, 2], [3]])
    same_vocab = lowercasing(word_tokenizer(50))
    assert same_vocab.get_vocab() == word_tokenizer(50).get_vocab()
    with pytest.raises(TokenizerMismatchError, match=r"'lowercasing-copy'.*: its normalizer differs") as err:
        KnowledgeBase.open(kb.path, tokenizer=same_vocab)
    assert "TokenizersBackend" in str(err.value) and "rebuild the KB" in str(err.value)
    KnowledgeBase.open(kb.path, tokenizer=word_tokenizer(50))  # an equal pipeline passes
    fp = kb.manifest["tokenizer"]["fingerprint"]
    assert set(fp) == {"normalizer", "pre_tokenizer", "model", "added_tokens"}
    # The saved tokenizer (what kb.tokenizer loads) has the same fingerprint as the one given to build.
    kb.check_tokenizer(KnowledgeBase.open(kb.path).tokenizer)


def test_tokenizer_check_names_the_vocabulary_size(tmp_path):
    kb = build(tmp_path, [[1, 2]])
    with pytest.raises(TokenizerMismatchError, match="vocabulary has 60 tokens, the KB's 50"):
        kb.check_tokenizer(word_tokenizer(60))


# ---------------------------------------------------------------------------------------------- corpus
@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "text": null}', r"c.jsonl:2: field 'text': the text is null"),
    ('{"id": null, "text": "t1"}', r"c.jsonl:2: field 'id': the id is null"),
    ('{"id": true, "text": "t1"}', r"c.jsonl:2: field 'id': the id is a bool"),
    ('{"id": 1.5, "text": "t1"}', r"c.jsonl:2: field 'id': the id is a float"),
    ('{"id": "a", "text": ["t1"]}', r"c.jsonl:2: field 'text': the text is a list"),
])
def test_jsonl_nulls_and_non_strings_are_errors(tmp_path, line, message):
    (tmp_path / "c.jsonl").write_text('{"id": "ok", "text": "t2"}\n' + line + "\n")
    with pytest.raises(CorpusError, match=message):
        list(read_corpus_file(tmp_path / "c.jsonl"))


def test_pairs_with_bad_ids_or_texts(tmp_path):
    tok = word_tokenizer(50)
    with pytest.raises(CorpusError, match=r"document 1: the id is null"):
        KnowledgeBase.build([("a", "t1"), (None, "t2")], tok, tmp_path / "kb", show_progress=False)
    with pytest.raises(CorpusError, match=r"document 0 \('a'\): the text is null"):
        KnowledgeBase.build([("a", None)], tok, tmp_path / "kb", show_progress=False)
    kb = KnowledgeBase.build([(7, "t1"), (np.int64(8), "t2")], tok, tmp_path / "kb", show_progress=False)
    assert kb.doc_ids([1]) == ["7"] and kb.doc_ids([2]) == ["8"]  # integer ids are their digits


def test_lone_surrogates_name_the_document(tmp_path):
    tok = word_tokenizer(50)
    with pytest.raises(CorpusError, match=r"document 'b' \(row 1\): the text is not valid Unicode.*'\\ud800'"):
        KnowledgeBase.build([("a", "t1"), ("b", "t2 \ud800")], tok, tmp_path / "kb", show_progress=False)
    with pytest.raises(CorpusError, match=r"document 'x\\udc00' \(row 0\): the id is not valid Unicode"):
        KnowledgeBase.build_from_token_ids([("x\udc00", [1])], tmp_path / "kb", vocab_size=10)
    assert not (tmp_path / "kb").exists()


# ---------------------------------------------------------------------------------------------- identity
def test_build_id_and_copy_to(tmp_path):
    kb = build(tmp_path, small_docs(8))
    assert len(kb.build_id) == 32 and int(kb.build_id, 16) >= 0
    again = build(tmp_path, small_docs(8), name="kb2")
    assert again.build_id != kb.build_id and again.content_hash == kb.content_hash  # same files, new build
    dest = kb.copy_to(tmp_path / "copies" / "kb")
    assert dest == tmp_path / "copies" / "kb" and dest.is_dir() and not dest.is_symlink()
    assert sorted(p.name for p in (tmp_path / "copies").iterdir()) == ["kb"]  # no temporary left behind
    copy = KnowledgeBase.open(dest)
    assert copy.build_id == kb.build_id and copy.num_docs == kb.num_docs
    assert copy.doc_ids([1, 2]) == kb.doc_ids([1, 2]) and copy.encode("t3") == [3]
    with pytest.raises(KBError, match="already exists"):
        kb.copy_to(dest)
    assert again.copy_to(dest, overwrite=True) == dest
    assert KnowledgeBase.open(dest).build_id == again.build_id


def test_doc_lengths_and_short_documents(tmp_path, capsys):
    from gemkr_llamaindex.cli import main

    docs = small_docs(30, seed=3)
    kb = build(tmp_path, docs)
    lengths = kb.doc_lengths()
    assert lengths.dtype == np.uint32 and lengths.tolist() == [len(d) for d in docs]
    assert not lengths.flags.writeable
    assert main(["kb", "info", str(kb.path), "--short-docs", "5"]) == 0
    out = capsys.readouterr().out
    assert f"documents shorter than 5 tokens: {ReferenceKB(docs).short_docs(5)}" in out
    assert main(["kb", "info", str(kb.path)]) == 0
    assert f"documents shorter than 10 tokens: {ReferenceKB(docs).short_docs(10)}" in capsys.readouterr().out


if __name__ == "__main__" and sys.argv[1:2] == ["--fuzz-worker"]:
    fuzz_worker(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
