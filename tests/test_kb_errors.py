"""Bad input gets a clear error, and nothing half-written is left behind."""

from __future__ import annotations

import json
import os

import pytest
from conftest import as_text

from gemkr_llamaindex.kb import (
    ChecksumError,
    CorpusError,
    IndexFormatError,
    KBError,
    KnowledgeBase,
    read_corpus_file,
)

DOCS = [("a", "t1 t2 t3"), ("b", "t2 t3 t4"), ("c", "t5")]


@pytest.fixture()
def kb_dir(tmp_path, small_vocab_tokenizer):
    KnowledgeBase.build(DOCS, small_vocab_tokenizer, tmp_path / "kb", show_progress=False)
    return tmp_path / "kb"


def leftovers(parent):
    """Hidden entries of ``parent`` other than the versioned folders its KB symlinks point to."""
    current = {os.readlink(p) for p in parent.iterdir() if p.is_symlink()}
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and p.name not in current)


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        KnowledgeBase.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="manifest.json is missing"):
        KnowledgeBase.open(tmp_path / "empty")


def test_missing_and_truncated_files(kb_dir):
    shard = kb_dir / "shard_00000.fmi"
    data = shard.read_bytes()
    shard.write_bytes(data[:-64])
    with pytest.raises(IndexFormatError, match="truncated"):
        KnowledgeBase.open(kb_dir)
    shard.unlink()
    with pytest.raises(IndexFormatError, match="shard_00000.fmi is missing"):
        KnowledgeBase.open(kb_dir)


def test_checksum_mismatch(kb_dir):
    texts = kb_dir / "texts.bin"
    data = bytearray(texts.read_bytes())
    data[0] ^= 0x01
    texts.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="texts.bin"):
        KnowledgeBase.open(kb_dir, verify=True)


def test_corrupt_shard_header_is_caught_by_the_core(kb_dir):
    shard = kb_dir / "shard_00000.fmi"
    data = bytearray(shard.read_bytes())
    data[:8] = b"NOTANFMI"
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="bad magic"):
        KnowledgeBase.open(kb_dir, verify=False)


def test_newer_format_version(kb_dir):
    manifest = json.loads((kb_dir / "manifest.json").read_text())
    manifest["format_version"] = 99
    (kb_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="newer than this library"):
        KnowledgeBase.open(kb_dir)


def test_empty_corpus_and_empty_documents(tmp_path, small_vocab_tokenizer):
    with pytest.raises(CorpusError, match="corpus is empty"):
        KnowledgeBase.build([], small_vocab_tokenizer, tmp_path / "kb", show_progress=False)
    with pytest.raises(CorpusError, match=r"'b' \(row 1\) is empty"):
        KnowledgeBase.build([("a", "t1"), ("b", "  ")], small_vocab_tokenizer, tmp_path / "kb", show_progress=False)
    kb = KnowledgeBase.build([("a", "t1"), ("b", ""), ("c", "t2")], small_vocab_tokenizer, tmp_path / "kb",
                             skip_empty=True, show_progress=False)
    assert kb.num_docs == 2 and kb.manifest["skipped_empty"] == 1
    assert kb.doc_ids([2]) == ["c"]
    assert leftovers(tmp_path) == []


def test_duplicate_ids(tmp_path, small_vocab_tokenizer):
    with pytest.raises(CorpusError, match="'a' occurs twice"):
        KnowledgeBase.build([("a", "t1"), ("b", "t2"), ("a", "t3")], small_vocab_tokenizer, tmp_path / "kb",
                            show_progress=False)
    assert not (tmp_path / "kb").exists()
    assert leftovers(tmp_path) == []


def test_token_ids_beyond_the_vocabulary(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={"a": 0, "b": 1, "far": 500}, unk_token="a"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    assert len(tok) == 3
    with pytest.raises(CorpusError, match="token id 500 is outside the tokenizer's vocabulary"):
        KnowledgeBase.build([("x", "a b far")], tok, tmp_path / "kb", show_progress=False)


def test_interrupted_build_leaves_nothing(tmp_path, small_vocab_tokenizer):
    def docs():
        yield "a", "t1 t2"
        yield "b", "t3"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        KnowledgeBase.build(docs(), small_vocab_tokenizer, tmp_path / "kb", show_progress=False)
    assert not (tmp_path / "kb").exists()
    assert leftovers(tmp_path) == []


def test_existing_directory_needs_overwrite(kb_dir, small_vocab_tokenizer):
    with pytest.raises(KBError, match="already exists"):
        KnowledgeBase.build(DOCS, small_vocab_tokenizer, kb_dir, show_progress=False)
    kb = KnowledgeBase.build([("z", "t9")], small_vocab_tokenizer, kb_dir, overwrite=True, show_progress=False)
    assert KnowledgeBase.open(kb_dir).doc_ids([9]) == ["z"] and kb.num_docs == 1
    assert leftovers(kb_dir.parent) == []


def test_query_ids_outside_the_vocabulary(kb_dir):
    kb = KnowledgeBase.open(kb_dir)
    with pytest.raises(ValueError, match="outside the KB's vocabulary"):
        kb.next_tokens([10_000])
    with pytest.raises(ValueError, match="outside the KB's vocabulary"):
        kb.count([-1])
    with pytest.raises(KeyError, match="no document with id 'nope'"):
        kb.text("nope")
    with pytest.raises(ValueError, match="states must have shape"):
        kb.children(kb.root_states(2)[:, :, :1])
    bad = kb.root_states(1)
    bad[0, 0, 1] += 1_000
    with pytest.raises(ValueError, match="outside shard 0"):
        kb.extend(bad, [1])


def test_non_utf8_row_is_named(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_bytes(b"kid,text\n1,fine row\n2,bad \xff row\n")
    with pytest.raises(CorpusError, match=r"corpus.csv:3: not UTF-8 text"):
        list(read_corpus_file(path))


def test_file_formats(tmp_path, small_vocab_tokenizer):
    (tmp_path / "c.jsonl").write_text('{"id": 1, "text": "t1 t2"}\n{"id": 2, "text": "t3"}\n')
    assert list(read_corpus_file(tmp_path / "c.jsonl")) == [("1", "t1 t2"), ("2", "t3")]
    (tmp_path / "bad.jsonl").write_text('{"doc": 1, "body": "t1"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:1: expected fields 'id' and 'text', found \['body', 'doc'\]"):
        list(read_corpus_file(tmp_path / "bad.jsonl"))
    assert list(read_corpus_file(tmp_path / "bad.jsonl", id_field="doc", text_field="body")) == [("1", "t1")]
    (tmp_path / "gs112k.csv").write_text('kid,text\n0,"t1, t2"\n1,t3\n')
    assert list(read_corpus_file(tmp_path / "gs112k.csv")) == [("0", "t1, t2"), ("1", "t3")]
    (tmp_path / "psgs_w100.tsv").write_text("id\ttext\ttitle\n1\tt4 t5\tt6\n2\tt7\tt8\n")
    assert list(read_corpus_file(tmp_path / "psgs_w100.tsv")) == [("1", "t6. t4 t5"), ("2", "t8. t7")]
    assert list(read_corpus_file(tmp_path / "psgs_w100.tsv", include_title=False))[0] == ("1", "t4 t5")
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CorpusError, match=r"cannot find the id column.*found \['a', 'b'\]"):
        list(read_corpus_file(tmp_path / "cols.csv"))
    with pytest.raises(CorpusError, match="does not exist"):
        list(read_corpus_file(tmp_path / "missing.csv"))
    kb = KnowledgeBase.build(tmp_path / "psgs_w100.tsv", small_vocab_tokenizer, tmp_path / "kb", show_progress=False)
    assert kb.doc_ids([4, 5]) == ["1"] and kb.text("2") == "t8. t7"


def test_llamaindex_documents_as_input(tmp_path, small_vocab_tokenizer):
    from llama_index.core.schema import Document, TextNode

    nodes = [Document(text=as_text([1, 2]), id_="doc-1"), TextNode(text=as_text([2, 3]), id_="node-2")]
    kb = KnowledgeBase.build(nodes, small_vocab_tokenizer, tmp_path / "kb", show_progress=False)
    assert kb.doc_ids([2]) == ["doc-1", "node-2"]
    assert kb.unique_doc([2, 3]) == "node-2"


def test_kb_directory_honours_the_umask(kb_dir):
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(kb_dir).st_mode & 0o777 == 0o777 & ~umask


def test_older_format_version(kb_dir):
    manifest = json.loads((kb_dir / "manifest.json").read_text())
    manifest["format_version"] = 1
    (kb_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="older than this library's"):
        KnowledgeBase.open(kb_dir)
