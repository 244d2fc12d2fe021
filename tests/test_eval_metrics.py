"""Metrics against cases computed by hand from the definitions in DESIGN.md."""

from __future__ import annotations

import pytest

from eval_vqa.metrics import (
    aggregate,
    answer_scores,
    exact_match,
    hit_at_k,
    is_relevant,
    metric_name,
    mrr,
    normalize_answer,
    precision_at_k,
    prp_at_k,
    prr_at_k,
    recall_at_k,
    retrieval_scores,
    vqa_accuracy,
)

# (passage, answers, substring?, word?)
RELEVANCE_CASES = [
    ("It is not a dog.", ["no"], True, False),
    ("Nobody came.", ["no"], True, False),
    ("No, it cannot.", ["no"], True, True),
    ("Launched in 1990.", ["1"], True, False),
    ("Only 1 survived.", ["1"], True, True),
    ("Player 1's turn", ["1"], True, True),
    ("The barn was bored.", ["red"], True, False),
    ("A RED bus.", ["red"], True, True),
    ("Reddish sky", ["red"], True, False),
    ("A rocket engine produces thrust", ["Rocket Engine"], True, True),
    ("blue sky", ["red", "sky"], True, True),
    ("blue sky", [], False, False),
    ("blue sky", ["", "  "], False, False),
]


@pytest.mark.parametrize("passage,answers,substring,word", RELEVANCE_CASES)
def test_relevance_variants(passage, answers, substring, word):
    assert is_relevant(passage, answers, "substring") is substring
    assert is_relevant(passage, answers, "word") is word


def test_relevance_rejects_unknown_mode_and_bare_string():
    with pytest.raises(ValueError, match="unknown relevance mode"):
        is_relevant("x", ["x"], "fuzzy")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        is_relevant("x", "x")


PASSAGES = ["the red car", "nothing here", "a red apple", "noon"]


def test_prp_uses_k_as_denominator_even_when_fewer_passages():
    assert prp_at_k(PASSAGES, ["red"], 1) == 1.0
    assert prp_at_k(PASSAGES, ["red"], 2) == 0.5
    assert prp_at_k(PASSAGES, ["red"], 4) == 0.5
    # only 4 passages came back but K = 10: 2 relevant / 10
    assert prp_at_k(PASSAGES, ["red"], 10) == pytest.approx(0.2)
    assert prp_at_k([], ["red"], 5) == 0.0
    # "no" substring-matches "nothing" and "noon" but word-matches neither
    assert prp_at_k(PASSAGES, ["no"], 4, "substring") == 0.5
    assert prp_at_k(PASSAGES, ["no"], 4, "word") == 0.0


def test_prr_is_any_relevant_in_top_k():
    assert prr_at_k(PASSAGES, ["apple"], 2) == 0.0
    assert prr_at_k(PASSAGES, ["apple"], 3) == 1.0
    assert prr_at_k(PASSAGES, ["no"], 2, "substring") == 1.0
    assert prr_at_k(PASSAGES, ["no"], 4, "word") == 0.0
    with pytest.raises(ValueError):
        prr_at_k(PASSAGES, ["red"], 0)


def test_aggregated_prp_equals_sum_over_k_times_n():
    q1 = prp_at_k(PASSAGES, ["red"], 5)  # 2 relevant
    q2 = prp_at_k(PASSAGES, ["noon"], 5)  # 1 relevant
    q3 = prp_at_k(PASSAGES, ["zebra"], 5)  # 0
    agg = aggregate([{"PRP@5": q1}, {"PRP@5": q2}, {"PRP@5": q3}])
    assert agg["PRP@5"] == pytest.approx((2 + 1 + 0) / (5 * 3))


def test_gold_id_metrics():
    ranked = ["d3", "d1", "d7", "d2"]
    gold = ["d1", "d2", "d9"]
    assert precision_at_k(ranked, gold, 1) == 0.0
    assert precision_at_k(ranked, gold, 2) == 0.5
    assert precision_at_k(ranked, gold, 10) == pytest.approx(2 / 10)
    assert recall_at_k(ranked, gold, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, gold, 4) == pytest.approx(2 / 3)
    assert hit_at_k(ranked, gold, 1) == 0.0 and hit_at_k(ranked, gold, 2) == 1.0
    assert mrr(ranked, gold) == 0.5
    assert mrr(ranked, ["d2"]) == 0.25
    assert mrr(ranked, ["d2"], k=3) == 0.0
    assert mrr(ranked, ["zz"]) == 0.0
    with pytest.raises(ValueError, match="gold"):
        recall_at_k(ranked, [], 5)


# Expected values follow from the official evaluator's rules (GT-Vision-Lab vqaEval.py), worked out by
# hand; the comment says which rule decides each case.
NORMALISATION_CASES = [
    ("Dog.", "dog"),                    # period not before a digit goes; lower-case
    ("the dog", "dog"),                 # articles dropped
    ("A Dog", "dog"),
    ("an apple", "apple"),
    ("two", "2"),                       # number words zero..ten (and none) to digits
    ("Ten", "10"),
    ("none", "0"),
    ("eleven", "eleven"),               # ... and no others
    ("Two Dogs", "2 dogs"),
    ("the one", "1"),
    ("a", ""),                          # an answer that is only an article vanishes
    ("3.5", "3.5"),                     # a period before a digit stays
    (".5", ".5"),
    ("5.", "5"),
    ("a.b", "ab"),                      # a period is deleted, not turned into a space
    ("a" + "." * 40, "a" + "." * 8),    # at most 32 periods go (re.UNICODE passed as count)
    ("10,000", "10000"),                # digit,digit anywhere: every mark is deleted ...
    ("1,000 cars, 2 vans", "1000 cars 2 vans"),
    ("1,5-2", "152"),                   # ... the hyphen too
    ("t-shirt", "t shirt"),             # a mark with no space beside it becomes a space ...
    ("t-shirt - red", "tshirt red"),    # ... unless the same mark stands next to a space elsewhere
    ("x(-y-z", "x y z"),                # decided on the input text, not on what "(" left behind
    ("yes!", "yes"),
    ("hello , world", "hello world"),
    ("x,y", "x y"),
    ("a,b", "b"),                       # the comma becomes a space and "a" is then an article
    ("(x)", "x"),
    ("yes/no", "yes no"),
    ("12:30", "12:30"),                 # colon, '#', apostrophe are not punctuation there
    ("#1", "#1"),
    ("don't", "don't"),
    ("o'clock", "o'clock"),
    ("dont", "don't"),                  # apostrophe-less contractions restored
    ("isnt", "isn't"),
    ("hes", "he's"),
    ("twas", "'twas"),
    ("couldnt've", "couldn't've"),      # two apostrophes: a spelling missing one of them
    ("couldntve", "couldntve"),         # ... but not one missing both
    ("somebody'd", "somebodyd"),        # the one entry of the table that runs backwards
    ("its", "its"),                     # ordinary words are not in the table
    ("shes", "shes"),
    ("im", "im"),                       # the table's "Im" has a capital, the text is lower-cased
    ("  fire\thydrant\n", "fire hydrant"),
    ("x  y", "x y"),
]


@pytest.mark.parametrize("raw,norm", NORMALISATION_CASES)
def test_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


TEN = 10
# (prediction, references, official, always)
VQA_CASES = [
    # all ten references identical: the official evaluator compares stripped strings as they are
    ("two", ["2"] * TEN, 0.0, 1.0),
    ("Dog", ["dog"] * TEN, 0.0, 1.0),
    ("dog.", ["dog"] * TEN, 0.0, 1.0),
    ("the cat", ["cat"] * TEN, 0.0, 1.0),
    ("t-shirt", ["t shirt"] * TEN, 0.0, 1.0),
    (" dog\n", ["dog"] * TEN, 1.0, 1.0),                # newline/tab/strip always applies
    ("dog", ["dog "] * TEN, 1.0, 1.0),                  # ... to the references too
    ("dog", ["dog"] * TEN, 1.0, 1.0),
    # references that disagree: both sides are processed
    ("two", ["2"] * 9 + ["3"], 1.0, 1.0),
    ("t-shirt", ["t shirt"] * 9 + ["shirt"], 1.0, 1.0),
    ("10,000", ["10000"] * 5 + ["10,000"] * 5, 1.0, 1.0),
    ("one", ["1"] * 4 + ["one"] * 6, 1.0, 1.0),
    # leave-one-out over the ten, min(1, matches/3), averaged
    ("Dog", ["dog"] * 3 + ["cat"] * 7, (3 * 2 / 3 + 7 * 1) / 10, (3 * 2 / 3 + 7 * 1) / 10),
    ("dog", ["dog"] * 2 + ["cat"] * 8, (2 * 1 / 3 + 8 * 2 / 3) / 10, (2 * 1 / 3 + 8 * 2 / 3) / 10),
    ("dog", ["dog"] + ["cat"] * 9, 0.3, 0.3),
    ("dog", ["dog"] * 4 + ["cat"] * 6, 1.0, 1.0),
    ("bird", ["dog"] * 4 + ["cat"] * 6, 0.0, 0.0),
    # few references (answer alternatives, as in the mini benchmark)
    ("felidae", ["Felidae"], 0.0, 0.0),                 # one reference: nobody else to agree
    ("dog", ["dog", "dog"], 1 / 3, 1 / 3),
    ("Dog", ["dog", "dog"], 0.0, 1 / 3),
    ("Purr", ["purring", "purr"], 0.5 * 1 / 3, 0.5 * 1 / 3),
]


@pytest.mark.parametrize("prediction,refs,official,always", VQA_CASES)
def test_vqa_accuracy_official_and_always(prediction, refs, official, always):
    assert vqa_accuracy(prediction, refs) == pytest.approx(official)
    assert vqa_accuracy(prediction, refs, normalize="official") == pytest.approx(official)
    assert vqa_accuracy(prediction, refs, normalize="always") == pytest.approx(always)


def test_vqa_accuracy_with_mixed_spellings():
    # OK-VQA style: 5 answers each given twice; they differ, so all are processed: "2" matches 6
    refs = ["two", "two", "2", "2", "Two.", "Two.", "three", "three", "a couple", "a couple"]
    assert vqa_accuracy("2", refs) == 1.0
    refs = ["the red one", "red one", "Red", "red", "maroon", "maroon", "crimson", "crimson", "pink", "pink"]
    # "red" matches refs 3,4 (2 refs): each sees 1 (1/3), the other 8 see 2 (2/3)
    assert vqa_accuracy("Red.", refs) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    # "the red one" -> "red 1" matches refs 1 and 2
    assert vqa_accuracy("Red one", refs) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    refs = ["don't know"] * 2 + ["dont know"] * 2 + ["no"] * 6
    assert vqa_accuracy("dont know", refs) == 1.0


def test_vqa_accuracy_errors():
    with pytest.raises(ValueError):
        vqa_accuracy("dog", [])
    with pytest.raises(ValueError, match="normalize"):
        vqa_accuracy("dog", ["dog"], normalize="sometimes")  # type: ignore[arg-type]


def test_exact_match():
    assert exact_match("The Eiffel Tower.", ["eiffel tower", "tower"]) == 1.0
    assert exact_match("two", ["2"]) == 1.0
    assert exact_match("eiffel", ["eiffel tower"]) == 0.0


def test_per_query_bundle_has_canonical_names():
    scores = retrieval_scores(
        passages=["the red car", "a blue sky"], retrieved_ids=["a", "b"], answers=["red"],
        gold_ids=["b"], ks=[1, 5],
    )
    assert scores[metric_name("PRR", 1, "substring")] == 1.0 == scores["PRR@1 (substring)"]
    assert scores["PRP@5 (word)"] == pytest.approx(1 / 5)
    assert scores["P@1 (gold)"] == 0.0 and scores["R@5 (gold)"] == 1.0 and scores["MRR@5 (gold)"] == 0.5
    assert "MRR (gold)" not in scores  # MRR is named by its cut, the largest K
    cut = retrieval_scores(["x"] * 3, ["a", "b", "g"], ["x"], ["g"], ks=[1, 2])
    assert cut["MRR@2 (gold)"] == 0.0 and cut["Hit@2 (gold)"] == 0.0  # the gold document at rank 3 is past the cut
    assert "P@1 (gold)" not in retrieval_scores(["x"], ["a"], ["x"], None, ks=[1])
    # official VQA accuracy compares raw strings when all ten agree; EM always normalises
    assert answer_scores("two", ["2"] * 10) == {"VQA acc (leave-one-out)": 0.0, "EM (VQA-normalised)": 1.0}
    assert answer_scores("two", ["2"] * 10, vqa_normalize="always")["VQA acc (leave-one-out)"] == 1.0


def test_hit_at_k_and_recall_at_k_differ_with_several_gold_documents():
    """R@K (trec recall_K): the share of gold documents found; Hit@K (trec success_K, the GeMKR paper's R@K):
    whether any was found."""
    scores = retrieval_scores(["x"] * 2, ["g1", "a"], [], ["g1", "g2", "g3", "g4"], ks=[1, 2])
    assert scores["R@2 (gold)"] == 0.25 and scores["Hit@2 (gold)"] == 1.0 and scores["Hit@1 (gold)"] == 1.0


def test_substring_relevance_agrees_with_the_vrr_expression_on_lowercase_answers():
    """VRR/GeMKR's scripts test ``ans in passage.lower()`` (the answer as it is); ours lowercases both. On
    lowercase answers (all of OK-VQA's) the two agree: here on the mini benchmark's answers against its gold
    passages; a capitalised answer can only match ours."""
    from eval_vqa.loaders import load_dataset

    mini = load_dataset("mini")
    texts = dict(mini.corpus())
    pairs = [(a, texts[g]) for q in mini.queries for a in q.answers for g in q.gold_doc_ids]
    lowercase = [(a, p) for a, p in pairs if a == a.lower()]
    assert len(lowercase) > 40 and any(a in p.lower() for a, p in lowercase)
    for answer, passage in lowercase:
        assert is_relevant(passage, [answer], "substring") == (answer in passage.lower())
    # the mini benchmark also has capitalised answers ("Felidae"): found here, never by the VRR expression
    capitalised = [(a, p) for a, p in pairs if a != a.lower()]
    assert capitalised and all(is_relevant(p, [a], "substring") and a not in p.lower() for a, p in capitalised)
