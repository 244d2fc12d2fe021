"""Batched n-gram lookups of the KB (evidence scoring's counts and documents) against brute force."""

from __future__ import annotations

import random

import pytest
from kb_reference import ReferenceKB, build_random_kb, occurring_ngrams


@pytest.fixture(scope="module", params=[False, True], ids=["one-shard", "sharded"])
def random_kb(request, tmp_path_factory):
    return build_random_kb(tmp_path_factory.mktemp("ngrams"), request.param)


def test_batched_lookups_equal_per_ngram_calls_and_brute_force(random_kb):
    kb, docs = random_kb
    ref = ReferenceKB(docs)
    ngrams = occurring_ngrams(docs, random.Random(1), 60)
    counts = kb.ngram_counts(ngrams)
    assert counts.tolist() == [kb.count(list(n)) for n in ngrams] == [ref.count(n) for n in ngrams]
    for cap in (None, 1, 3, 10**9):
        look = kb.lookup_ngrams(ngrams, max_count=cap)
        assert look.counts.tolist() == counts.tolist()
        for i, n in enumerate(ngrams):
            listed = counts[i] > 0 and (cap is None or counts[i] <= cap)
            expected = ref.doc_indices(n) if listed else []
            assert look.docs_of(i).tolist() == expected == (kb.doc_indices(list(n)).tolist() if listed else [])


def test_batched_lookups_edge_cases(random_kb):
    kb, _ = random_kb
    empty = kb.lookup_ngrams([])
    assert empty.counts.shape == (0,) and empty.offsets.tolist() == [0] and empty.docs.shape == (0,)
    with pytest.raises(ValueError, match="n-gram 1 is empty"):
        kb.lookup_ngrams([(1,), ()])
    with pytest.raises(ValueError, match="outside the KB's vocabulary"):
        kb.ngram_counts([(1, 99)])


def test_batched_lookups_on_real_text(wiki_kb):
    texts = [" family Felidae", " the", " natural satellite", " Tatarstan", "Cat", " of the order", " zzqqxx"]
    ngrams = [tuple(wiki_kb.encode(t)) for t in texts]
    look = wiki_kb.lookup_ngrams(ngrams, max_count=1500)
    for i, n in enumerate(ngrams):
        assert look.counts[i] == wiki_kb.count(list(n))
        expected = wiki_kb.doc_indices(list(n)).tolist() if 0 < look.counts[i] <= 1500 else []
        assert look.docs_of(i).tolist() == expected
    assert look.counts[1] > 1500 and look.docs_of(1).size == 0  # " the": too frequent to locate


def test_remote_kb_lookups_equal_local(ray_cluster, tmp_path):
    from gemkr_llamaindex.distributed import open_remote_kb

    kb, docs = build_random_kb(tmp_path, sharded=True)
    ngrams = occurring_ngrams(docs, random.Random(2), 30)
    remote = open_remote_kb(kb.path, groups=2)
    try:
        local, far = kb.lookup_ngrams(ngrams, max_count=4), remote.lookup_ngrams(ngrams, max_count=4)
        assert far.counts.tolist() == local.counts.tolist()
        assert far.offsets.tolist() == local.offsets.tolist() and far.docs.tolist() == local.docs.tolist()
    finally:
        remote.close()




@pytest.mark.parametrize("seed", range(3))
def test_word_end_lookups_equal_brute_force(random_kb, seed):
    """With ``word_starts`` only occurrences followed by a word-starting token or a document end count."""
    import numpy as np

    kb, docs = random_kb
    rng = random.Random(seed)
    starts = np.array([rng.random() < 0.5 for _ in range(12)])
    ngrams = occurring_ngrams(docs, rng, 50)

    def ends_a_word(doc, i, n):
        j = i + len(n)
        return tuple(doc[i:j]) == n and (j == len(doc) or bool(starts[doc[j]]))

    for cap in (None, 2, 10**9):
        look = kb.lookup_ngrams(ngrams, max_count=cap, word_starts=starts)
        for b, n in enumerate(ngrams):
            count = sum(ends_a_word(d, i, n) for d in docs for i in range(len(d) - len(n) + 1))
            holders = [k for k, d in enumerate(docs) if any(ends_a_word(d, i, n) for i in range(len(d)))]
            assert look.counts[b] == count
            listed = count > 0 and (cap is None or count <= cap)
            assert look.docs_of(b).tolist() == (holders if listed else [])
    assert kb.lookup_ngrams([], word_starts=starts).offsets.tolist() == [0]
