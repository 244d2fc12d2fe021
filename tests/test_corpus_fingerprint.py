"""Corpus fingerprints decide which run folder resumes, which cache a baseline reuses and which packaged
checkpoint a corpus gets: two different corpora must never share one, whatever bytes their ids and texts hold."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Joined with separator bytes, these two corpora fed the same bytes to the hash (the separators occur inside
# the texts): the old fingerprints of both were equal.
CORPUS_A = [("a", "b\1c\0d"), ("e", "f")]
CORPUS_B = [("a", "b"), ("c", "d\1e\0f")]
# The same trick against the baselines' separators (\1 between id and text, \2 after the text).
BASELINE_A = [("a", "b\2c\1d"), ("e", "f")]
BASELINE_B = [("a", "b"), ("c", "d\2e\1f")]


def test_hash_fields_length_prefixes_every_field():
    from gemkr_llamaindex.kb import hash_fields

    def digest(*fields):
        h = hashlib.sha256()
        hash_fields(h, *fields)
        return h.hexdigest()

    assert digest("ab", "c") != digest("a", "bc") != digest("abc")
    assert digest("a", "") != digest("a") and digest("é") == digest("é".encode())


def test_checkpoint_lookup_fingerprint_tells_the_colliding_corpora_apart():
    from gemkr_llamaindex.checkpoints import corpus_fingerprint

    a, b = corpus_fingerprint(CORPUS_A), corpus_fingerprint(CORPUS_B)
    assert a["num_docs"] == b["num_docs"] == 2
    assert a["sha256"] != b["sha256"]


def test_baseline_cache_fingerprint_tells_the_colliding_corpora_apart():
    from eval_vqa.baselines.common import cache_key

    def fp(docs, *extra):
        return cache_key([d for d, _ in docs], [t for _, t in docs], *extra)

    assert fp(BASELINE_A) != fp(BASELINE_B)
    assert fp(CORPUS_A) != fp(CORPUS_B)
    assert fp([("x", "y")], "m\0") != fp([("\0x", "y")], "m")  # settings and corpus cannot trade bytes


def test_eval_kb_cache_key_tells_the_colliding_corpora_apart(tmp_path, monkeypatch, small_vocab_tokenizer):
    from eval_vqa.gemkr import corpus_kb

    monkeypatch.setenv("GEMKR_CACHE", str(tmp_path))
    kb_a = corpus_kb([(i, "t3 t4 " + t) for i, t in CORPUS_A], small_vocab_tokenizer)
    kb_b = corpus_kb([(i, "t3 t4 " + t) for i, t in CORPUS_B], small_vocab_tokenizer)
    assert kb_a.path != kb_b.path and kb_b.doc_id(1) == "c"


def test_the_packaged_checkpoint_is_found_for_the_packaged_corpus_only(wiki_docs):
    from gemkr_llamaindex.checkpoints import WIKI_SMOLLM2, packaged_checkpoint, packaged_checkpoint_for

    assert packaged_checkpoint_for(wiki_docs) == packaged_checkpoint(WIKI_SMOLLM2) is not None
    assert packaged_checkpoint_for(wiki_docs[:-1] + [(wiki_docs[-1][0], wiki_docs[-1][1] + " ")]) is None


def test_one_bad_corpus_record_does_not_hide_the_other_checkpoints(tmp_path, monkeypatch):
    """A sibling checkpoint whose corpus.json is torn or not an object is skipped with a warning naming it."""
    import json

    import pytest

    from gemkr_llamaindex import checkpoints

    docs = [("a", "alpha text"), ("b", "beta text")]
    for name, record in (("a-torn", '{"num_docs": 2, "sha'), ("b-list", "[1, 2]"), ("c-bytes", b"\xff\xfe"),
                         ("d-good", json.dumps(checkpoints.corpus_fingerprint(docs)))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "gemkr_config.json").write_text("{}")
        target = tmp_path / name / checkpoints.CORPUS_FILE
        target.write_bytes(record) if isinstance(record, bytes) else target.write_text(record)
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path)
    with pytest.warns(UserWarning, match=r"corpus\.json: unreadable corpus record") as caught:
        assert checkpoints.packaged_checkpoint_for(docs) == tmp_path / "d-good"
    assert sorted(Path(str(w.message).split(":")[0]).parent.name for w in caught) == ["a-torn", "b-list", "c-bytes"]
