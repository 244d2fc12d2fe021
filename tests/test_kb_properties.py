"""Every KB operation, including the stateful API, equals brute force on random corpora."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import as_text, word_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kb_reference import ReferenceKB

from gemkr_llamaindex.kb import END, KnowledgeBase

SMALL_V, LARGE_V = 50, 70_000
_TOKENIZERS = {}


def tokenizer(vocab: int):
    if vocab not in _TOKENIZERS:
        _TOKENIZERS[vocab] = word_tokenizer(vocab)
    return _TOKENIZERS[vocab]


def build(docs, vocab, directory: Path, **kw) -> KnowledgeBase:
    pairs = [(f"d{i}", as_text(d)) for i, d in enumerate(docs)]
    return KnowledgeBase.build(pairs, tokenizer(vocab), directory / "kb", show_progress=False, overwrite=True, **kw)


@st.composite
def corpora(draw):
    vocab = draw(st.sampled_from([SMALL_V, LARGE_V]))
    # A few frequent ids make repeats (and long shared prefixes) likely; rare ids test the large vocab.
    frequent = st.integers(0, 5)
    token = st.one_of(frequent, frequent, st.integers(0, vocab - 1))
    doc = st.lists(token, min_size=1, max_size=25)
    docs = draw(st.lists(doc, min_size=1, max_size=12))
    if draw(st.booleans()):  # duplicated documents
        docs = docs + [docs[draw(st.integers(0, len(docs) - 1))]]
    return vocab, docs


def queries(docs, draw):
    """Prefixes that occur (incl. ones ending at a document end), absent ones, and the empty prefix."""
    out = [[]]
    for _ in range(12):
        d = docs[draw(st.integers(0, len(docs) - 1))]
        a = draw(st.integers(0, len(d) - 1))
        b = draw(st.integers(a + 1, len(d)))
        out.append(d[a:b])
        out.append(d[a:])  # ends at the document end
    out.append(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    out.append([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])  # almost surely absent
    return out


def check_static_ops(kb: KnowledgeBase, ref: ReferenceKB, qs) -> None:
    for q in qs:
        assert kb.count(q) == ref.count(q), q
        assert kb.next_tokens(q).tolist() == ref.next_tokens(q), q
        assert kb.doc_indices(q).tolist() == ref.doc_indices(q), q
        assert kb.doc_ids(q) == [f"d{i}" for i in ref.doc_indices(q)], q
        expected = ref.unique_doc_index(q)
        assert kb.unique_doc_index(q) == expected, q
        assert kb.unique_doc(q) == (None if expected < 0 else f"d{expected}"), q
    batch = kb.next_tokens_batch(qs)
    assert [b.tolist() for b in batch] == [ref.next_tokens(q) for q in qs]


def check_stateful(kb: KnowledgeBase, ref: ReferenceKB, qs) -> None:
    """Walk every query token by token with extend/children/unique_docs, all batched over the queries."""
    qs = [q for q in qs if q]
    states = kb.root_states(len(qs))
    for step in range(max(map(len, qs))):
        live = [i for i, q in enumerate(qs) if len(q) > step]
        children = kb.children(states[live])
        for j, i in enumerate(live):
            sl = children.of(j)
            prefix = qs[i][:step]
            assert children.tokens[sl].tolist() == ref.continuations(prefix)
            for tok, cnt, child, uniq in zip(children.tokens[sl], children.counts[sl], children.states[sl],
                                             children.unique[sl]):
                if tok == END:  # the clue ends at a document's end
                    assert cnt == ref.clue_count(prefix, end=True) and uniq == ref.clue_unique(prefix, end=True)
                    continue
                assert cnt == ref.count(prefix + [int(tok)])
                assert uniq == ref.unique_doc_index(prefix + [int(tok)])
                np.testing.assert_array_equal(child, kb.state(prefix + [int(tok)])[0])
        tokens = np.array([qs[i][step] for i in live])
        new = kb.extend(states[live], tokens)
        states[live] = new
        for j, i in enumerate(live):
            prefix = qs[i][: step + 1]
            np.testing.assert_array_equal(new[j], kb.state(prefix)[0])
        counts = kb.counts(new)
        uniq = kb.unique_docs(new)
        for j, i in enumerate(live):
            prefix = qs[i][: step + 1]
            assert counts[j] == ref.count(prefix)
            assert uniq[j] == ref.unique_doc_index(prefix)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), corpus=corpora())
def test_operations_match_brute_force(data, corpus):
    vocab, docs = corpus
    ref = ReferenceKB(docs)
    qs = queries(docs, data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        kb = build(docs, vocab, Path(tmp), sample_rate=data.draw(st.sampled_from([1, 3, 16])),
                   cache_min_children=data.draw(st.sampled_from([1, 2, 128])))
        assert kb.num_docs == len(docs)
        assert kb.num_tokens == sum(map(len, docs))
        check_static_ops(kb, ref, qs)
        check_stateful(kb, ref, qs)
        # The empty prefix continues with every token that occurs.
        assert kb.next_tokens([]).tolist() == sorted(set(itertools.chain.from_iterable(docs)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), corpus=corpora())
def test_sharded_equals_unsharded(data, corpus):
    vocab, docs = corpus
    qs = queries(docs, data.draw)
    shard_tokens = data.draw(st.integers(1, max(1, sum(map(len, docs)) // 2)))
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        one = build(docs, vocab, Path(a))
        many = build(docs, vocab, Path(b), shard_tokens=shard_tokens)
        assert one.num_shards == 1
        assert many.num_shards >= 1
        for q in qs:
            assert many.count(q) == one.count(q)
            assert many.next_tokens(q).tolist() == one.next_tokens(q).tolist()
            assert many.doc_ids(q) == one.doc_ids(q)
            assert many.unique_doc(q) == one.unique_doc(q)
        check_stateful(many, ReferenceKB(docs), qs)


def test_multi_shard_unique_doc_needs_a_single_shard(tmp_path):
    # The same sentence in two documents that land in different shards is not unique.
    docs = [[1, 2, 3], [4, 5], [1, 2, 3]]
    kb = build(docs, SMALL_V, tmp_path, shard_tokens=4)
    assert kb.num_shards == 3
    assert kb.unique_doc([1, 2]) is None
    assert kb.doc_ids([1, 2]) == ["d0", "d2"]
    assert kb.unique_doc([4]) == "d1"
    assert kb.count([2, 3]) == 2


@pytest.mark.parametrize("vocab", [SMALL_V, LARGE_V])
def test_token_ids_near_the_top_of_the_vocabulary(tmp_path, vocab):
    docs = [[vocab - 1, vocab - 2, 0], [0, vocab - 1]]
    kb = build(docs, vocab, tmp_path)
    assert kb.next_tokens([vocab - 1]).tolist() == [vocab - 2]
    assert kb.next_tokens([0]).tolist() == [vocab - 1]
    assert kb.unique_doc([vocab - 1, vocab - 2]) == "d0"
    assert kb.doc_ids([vocab - 1]) == ["d0", "d1"]
