"""The KB on real text: the packaged Wikipedia summaries with the SmolLM2 tokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest
from kb_reference import ReferenceKB

from gemkr_llamaindex.kb import KnowledgeBase, TokenizerMismatchError


@pytest.fixture(scope="module")
def wiki_reference(wiki_kb, wiki_docs):
    return ReferenceKB(wiki_kb.encode_batch([text for _, text in wiki_docs]))


def sample_prefixes(kb, n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        doc = kb.doc_tokens(rng.randrange(kb.num_docs)).tolist()
        a = rng.randrange(len(doc))
        out.append(doc[a : a + rng.choice([1, 1, 2, 3, 5, 8])])
    return out


def test_whole_corpus_is_indexed(wiki_kb, wiki_docs):
    assert wiki_kb.num_docs == 10_033
    assert wiki_kb.doc_id(0) == wiki_docs[0][0]
    assert wiki_kb.text("Paris") == dict(wiki_docs)["Paris"]
    assert wiki_kb.index_of("Paris") == [t for t, _ in wiki_docs].index("Paris")
    assert wiki_kb.num_tokens == sum(len(ids) for ids in wiki_kb.encode_batch([t for _, t in wiki_docs]))
    assert wiki_kb.doc_tokens("Paris").tolist() == wiki_kb.encode(wiki_kb.text("Paris"))


def test_matches_brute_force_on_sampled_prefixes(wiki_kb, wiki_reference):
    for q in sample_prefixes(wiki_kb, 120):
        assert wiki_kb.count(q) == wiki_reference.count(q)
        assert wiki_kb.next_tokens(q).tolist() == wiki_reference.next_tokens(q)
        assert wiki_kb.doc_indices(q).tolist() == wiki_reference.doc_indices(q)
        assert wiki_kb.unique_doc_index(q) == wiki_reference.unique_doc_index(q)


def test_frequent_prefix_continuations_come_from_the_cache_and_are_exact(wiki_kb, wiki_reference):
    the = wiki_kb.encode(" the")
    assert len(the) == 1
    assert wiki_kb.next_tokens(the).tolist() == wiki_reference.next_tokens(the)
    assert len(wiki_kb.next_tokens([])) > 30_000


def test_a_sentence_maps_back_to_its_document(wiki_kb):
    text = wiki_kb.text("Eiffel Tower")
    ids = wiki_kb.encode(text)[:12]
    assert wiki_kb.unique_doc(ids) == "Eiffel Tower"
    assert wiki_kb.doc_ids(ids) == ["Eiffel Tower"]
    states = wiki_kb.root_states(1)
    for t in ids:
        states = wiki_kb.extend(states, [t])
    assert wiki_kb.unique_docs(states).tolist() == [wiki_kb.index_of("Eiffel Tower")]


def test_persistence_round_trip(wiki_kb):
    again = KnowledgeBase.open(wiki_kb.path, verify=True)
    for q in sample_prefixes(wiki_kb, 30, seed=1):
        assert again.next_tokens(q).tolist() == wiki_kb.next_tokens(q).tolist()
        assert again.doc_ids(q) == wiki_kb.doc_ids(q)
        assert again.unique_doc(q) == wiki_kb.unique_doc(q)
    assert again.encode("Hello world") == wiki_kb.encode("Hello world")
    np.testing.assert_array_equal(again.doc_tokens(5), wiki_kb.doc_tokens(5))


def test_tokenizer_check(wiki_kb, smollm2_tokenizer, large_vocab_tokenizer):
    KnowledgeBase.open(wiki_kb.path, tokenizer=smollm2_tokenizer)
    with pytest.raises(TokenizerMismatchError, match="rebuild the KB with the model's tokenizer"):
        KnowledgeBase.open(wiki_kb.path, tokenizer=large_vocab_tokenizer)


def test_lowercase_normalisation_is_recorded_and_applied(tmp_path, smollm2_tokenizer):
    docs = [("a", "The Eiffel Tower is in PARIS."), ("b", "Berlin is in Germany.")]
    kb = KnowledgeBase.build(docs, smollm2_tokenizer, tmp_path / "kb", lowercase=True, show_progress=False)
    assert kb.manifest["normalization"] == {"lowercase": True, "unicode": None}
    assert kb.unique_doc(kb.encode(" EIFFEL tower")) == "a"
    assert kb.text("a") == "The Eiffel Tower is in PARIS."  # stored text is the original
    assert KnowledgeBase.open(tmp_path / "kb").encode("PARIS") == kb.encode("paris")
