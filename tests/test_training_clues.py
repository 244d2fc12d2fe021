"""Supervised text sampling against a real KnowledgeBase built from a handful of documents."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from gemkr_llamaindex.assets import load_tokenizer
from gemkr_llamaindex.kb import KnowledgeBase
from gemkr_llamaindex.training.clues import ClueSampler, keywords, start_distribution, token_view

SHARED = "The old harbour bridge carries trains, trams and bicycles across the wide grey river every single day."
DOCS = [
    ("Tiger", ("The tiger is the largest living cat species. It has orange fur with black stripes. "
              "Tigers hunt deer and wild boar at night. Most wild tigers live in India.")),
    ("Bridge town", f"{SHARED} The town grew around its fish market in the twelfth century."),
    ("River city", f"Many visitors come for the museums. {SHARED}"),
    ("Volcano", ("Mount Etna is an active volcano on the east coast of Sicily. It erupts often. "
                "Its lava flows have shaped the farms and vineyards around Catania for centuries.")),
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return KnowledgeBase.build(DOCS, load_tokenizer("smollm2"), tmp_path_factory.mktemp("kb") / "kb", show_progress=False)


def _contains(haystack: np.ndarray, needle: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n].tolist() == needle for i in range(len(haystack) - n + 1))


def test_keywords_drop_stop_words_and_stem():
    assert keywords("Where do the tigers hunt?") == {"tiger", "hunt"}


@pytest.mark.parametrize("length", [4, 12])
def test_clues_have_length_and_are_document_substrings(kb, length):
    sampler = ClueSampler(kb, m=2, length=length, seed=1)
    for doc_id, _ in DOCS:
        clues = sampler.sample("What do tigers hunt at night?", doc_id)
        assert len(clues) == 2 and len({c.start for c in clues}) == 2
        tokens = kb.doc_tokens(doc_id)
        for c in clues:
            assert len(c.token_ids) == length
            assert c.token_ids == tokens[c.start : c.start + length].tolist()
            assert _contains(tokens, c.token_ids)
            assert doc_id in kb.doc_ids(c.token_ids)  # the KB itself finds the clue in this document
            assert c.unique == (kb.unique_doc(c.token_ids) == doc_id)


def test_starts_come_from_the_most_hit_sentence(kb):
    view = token_view(kb.doc_tokens("Tiger"), kb.tokenizer, keywords("What do tigers hunt at night?"))
    hits_per_sentence = [int(view.hit[a:b].sum()) for a, b in view.sentences]
    assert len(view.sentences) == 4 and hits_per_sentence.index(max(hits_per_sentence)) == 2
    cands, probs = start_distribution(view, 5, rho=1.0)
    a, b = view.sentences[2]
    assert all(a <= c < b for c in cands)
    assert probs.sum() == pytest.approx(1.0)
    # pi = c / (c + rho), softmax: a span with 2 hits is e^(2/3 - 1/2) times as likely as one with 1 hit
    window = np.concatenate([[0], np.cumsum(view.hit)])
    counts = window[np.minimum(cands + 5, len(view.ids))] - window[cands]
    expected = np.exp(counts / (counts + 1.0))
    np.testing.assert_allclose(probs, expected / expected.sum())
    assert counts.max() >= 2 and counts.min() <= 1


def test_sampling_follows_the_scores(kb):
    question = "What do tigers hunt at night?"
    view = token_view(kb.doc_tokens("Tiger"), kb.tokenizer, keywords(question))
    cands, probs = start_distribution(view, 5, rho=0.2)  # small rho: sharper preference
    sampler = ClueSampler(kb, m=1, length=5, rho=0.2, redraws=0, seed=0)
    draws = 1500
    freq = {int(c): 0 for c in cands}
    for _ in range(draws):
        freq[sampler.sample(question, "Tiger")[0].start] += 1
    empirical = np.array([freq[int(c)] for c in cands]) / draws
    assert np.abs(empirical - probs).max() < 0.05
    assert np.corrcoef(empirical, probs)[0, 1] > 0.8


def test_unique_clues_are_preferred_and_reported(kb):
    # Both bridge documents contain SHARED; most starts inside it give clues found in two documents.
    question = "Which bridge carries trains and trams across the river?"
    greedy = ClueSampler(kb, m=2, length=6, redraws=0, seed=0)
    prefer = ClueSampler(kb, m=2, length=6, redraws=40, seed=0)
    for _ in range(5):
        greedy.sample(question, "Bridge town")
        clues = prefer.sample(question, "Bridge town")
        assert all(kb.unique_doc(c.token_ids) == "Bridge town" for c in clues)
    assert prefer.stats.unique_share == 1.0
    assert greedy.stats.unique_share < prefer.stats.unique_share
    assert greedy.stats.clues == prefer.stats.clues == 10


def test_unknown_document_is_reported_not_fatal(kb):
    sampler = ClueSampler(kb)
    assert sampler.sample_many("q", ["Tiger", "No such doc"])
    assert sampler.stats.docs_missing == ["No such doc"]
