"""Evidence scoring (SEAL-style n-gram aggregation) against brute force, and its sources on a real model."""

from __future__ import annotations

import math
import random

import pytest
from kb_reference import build_random_kb, occurring_ngrams

from gemkr_llamaindex.decoding import DecodingConfig
from gemkr_llamaindex.decoding.evidence import (
    Ngram,
    aggregate,
    clue_prefixes,
    ngram_weight,
    query_ngrams,
    query_spans,
    visited_ngrams,
    word_forms,
    word_start_mask,
)


@pytest.fixture(scope="module", params=[False, True], ids=["one-shard", "sharded"])
def random_kb(request, tmp_path_factory):
    return build_random_kb(tmp_path_factory.mktemp("ev"), request.param)


# ---------------------------------------------------------------------- the formula
def brute_force_scores(ngrams: list[Ngram], docs: list[list[int]], alpha: float, beta: float, smoothing: float,
                       max_count: int, weights: dict[str, float]) -> dict[int, float]:
    """The formula written out over plain token lists: counts by scanning, weights, coverage per document."""
    total = sum(map(len, docs))

    def occurrences(n):
        return sum(1 for d in docs for i in range(len(d) - len(n) + 1) if tuple(d[i : i + len(n)]) == n)

    best: dict[tuple[int, ...], float] = {}
    for g in ngrams:
        count = occurrences(g.token_ids)
        if not 0 < count <= max_count:
            continue
        p_n = (count + smoothing) / (total + smoothing)
        p_q = math.exp(min(g.logprob, -1e-10))
        w = max(0.0, math.log(p_q * (1 - p_n)) - math.log(p_n * (1 - p_q))) ** alpha * weights.get(g.source, 1.0)
        if w > 0 and w > best.get(g.token_ids, -1.0):
            best[g.token_ids] = w
    scores: dict[int, float] = {}
    for d, doc in enumerate(docs):
        covered: set[int] = set()
        for n, w in sorted(best.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0])):
            if any(tuple(doc[i : i + len(n)]) == n for i in range(len(doc) - len(n) + 1)):
                new = len(set(n) - covered) / len(set(n))
                scores[d] = scores.get(d, 0.0) + w * (1 - beta + beta * new if covered else 1.0)
                covered |= set(n)
    return scores


@pytest.mark.parametrize("seed", range(6))
def test_aggregate_equals_brute_force(random_kb, seed):
    kb, docs = random_kb
    rng = random.Random(seed)
    sources = ["query", "clues", "beams"]
    ngrams = [Ngram(n, -rng.uniform(0.05, 12.0), rng.choice(sources)) for n in occurring_ngrams(docs, rng, 40)]
    ngrams += [Ngram(ngrams[0].token_ids, ngrams[0].logprob - 1.0, "query")]  # a duplicate from another source
    alpha, beta, smoothing, cap = rng.choice([1.0, 2.0]), rng.choice([0.0, 0.25, 0.8, 1.0]), 5.0, rng.choice([3, 50])
    weights = {"clues": 0.25, "beams": 0.5}
    look = kb.lookup_ngrams([g.token_ids for g in ngrams], max_count=cap)
    got = aggregate(ngrams, look.counts, [look.docs_of(i) for i in range(len(ngrams))], kb.num_tokens, alpha=alpha,
                    beta=beta, smoothing=smoothing, max_count=cap, source_weights=weights)
    expected = brute_force_scores(ngrams, docs, alpha, beta, smoothing, cap, weights)
    assert set(got) == set(expected)
    for d, ev in got.items():
        assert ev.score == pytest.approx(expected[d], rel=1e-9, abs=1e-12)
        assert sum(i.contribution for i in ev.items) == pytest.approx(ev.score)
        assert all(i.weight >= i.contribution > 0 or beta == 1.0 for i in ev.items)


def test_weight_is_seals_log_odds():
    # P(n|q) = 0.5 and P(n) = 0.01: log odds ratio = log(0.5 * 0.99) - log(0.01 * 0.5)
    count, total = 0.01 * 1000 - 5, 1000 - 5
    assert ngram_weight(math.log(0.5), int(count), total, alpha=1.0) == pytest.approx(math.log(0.495 / 0.005))
    assert ngram_weight(math.log(0.5), int(count), total, alpha=2.0) == pytest.approx(math.log(0.495 / 0.005) ** 2)
    assert ngram_weight(-30.0, 3, 1000) == 0.0  # less likely under the query than in the corpus: no evidence
    assert ngram_weight(-1.0, 0, 1000) == 0.0  # absent


# ---------------------------------------------------------------------- n-gram extraction
def test_query_spans_skip_stopwords_and_never_cross_commas():
    spans = query_spans("Which city is the capital of Tatarstan?", max_words=3)
    assert "capital of Tatarstan" in spans and "city" in spans and "Tatarstan" in spans
    assert "the" not in spans and "is the" not in spans  # stop words only
    tags = query_spans("tiger cat, Egyptian cat", max_words=3)
    assert "tiger cat" in tags and "Egyptian cat" in tags and "cat Egyptian" not in tags


def test_query_ngrams_are_tokenized_as_the_kb(wiki_kb):
    grams = {t: (ids, src) for t, ids, src in query_ngrams("What family does the cat belong to?", "tabby",
                                                            wiki_kb.encode_batch)}
    assert grams[" cat"] == (tuple(wiki_kb.encode(" cat")), "query") and grams["Cat"][0] == tuple(wiki_kb.encode("Cat"))
    assert " tabby" in grams and " the" not in grams and " cats" not in grams
    more = {t: src for t, _, src in query_ngrams("What kind of program trains people?", None, wiki_kb.encode_batch,
                                                 inflections=True)}
    assert more[" trains"] == "query" and more[" trained"] == more[" training"] == "inflections"
    assert " kinds" not in more or more[" kinds"] == "inflections"


def test_word_forms_are_regular_inflections():
    assert {"train", "trained", "training"} <= set(word_forms("trains"))
    assert {"deploy", "deployed"} <= set(word_forms("deploys")) and "study" in word_forms("studies")
    assert "planets" in word_forms("planet") and "trains" not in word_forms("trains")
    assert word_forms("the") == word_forms("is") == word_forms("Tokyo2") == []


def test_word_boundaries_of_generated_ngrams(smollm2_tokenizer):
    starts = word_start_mask(smollm2_tokenizer)
    ids = smollm2_tokenizer(" family Felidae", add_special_tokens=False).input_ids  # " family", " Fel", "idae"
    assert starts[ids[0]] and starts[ids[1]] and not starts[ids[-1]]
    lps = [-1.0, -2.0, -2.5][: len(ids)]
    kept = [t for t, _ in clue_prefixes(ids, lps, starts)]
    assert tuple(ids[:1]) in kept and tuple(ids) in kept and tuple(ids[:2]) not in kept  # " family Fel" cut a word
    assert len(clue_prefixes(ids, lps, None)) == len(ids)
    visited = {tuple(ids[:k]): -float(k) for k in range(1, len(ids) + 1)}
    assert {t for t, _ in visited_ngrams(visited, starts)} == {tuple(ids[:1]), tuple(ids)}


# ---------------------------------------------------------------------- sources on a real (tiny) model
@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory, wiki_kb):
    """A random 2-layer LLaMA with SmolLM2's tokenizer over the real corpus: its near-uniform n-gram
    probabilities (~e^-10.8 per token) still beat the corpus frequency of rare words, so evidence exists."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gemkr_llamaindex.llamaindex import ClueGenerator
    from gemkr_llamaindex.model.tiny import build_tiny_llm

    path = build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny")
    llm, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    kb = wiki_kb
    cfg = DecodingConfig(num_beams=4, num_groups=2, min_length=2, max_length=5)
    return ClueGenerator(llm=llm, tokenizer=tok, config=cfg), kb


QUESTION, TAGS = "Which city is the capital of France?", "tower, river"


@pytest.mark.parametrize("sources", ["query", "inflections", "clues", "beams", "unigrams", "clues,query,inflections",
                                     "clues,beams,query,inflections,unigrams"])
def test_each_source_switches_on_and_off(tiny_generator, sources):
    from gemkr_llamaindex.decoding import SearchStats
    from gemkr_llamaindex.llamaindex import VQAQueryBundle

    gen, kb = tiny_generator
    gen.search.config = gen.config.replace(evidence=sources, evidence_unigram_top=50)
    try:
        stats = SearchStats()
        (res,) = gen.generate([VQAQueryBundle(query_str=QUESTION, tags=TAGS)], kb, stats=stats)
    finally:
        gen.search.config = gen.config.replace(evidence="")
    wanted = set(sources.split(","))
    used = {i.source for d in res.docs for i in d.evidence}
    assert used and used <= wanted
    assert (stats.steps > 0) == bool(wanted & {"clues", "beams"})  # no beam search without generated evidence
    scores = [d.score for d in res.docs]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    for d in res.docs:
        assert d.score == pytest.approx(sum(i.contribution for i in d.evidence))
        assert d.doc_id == kb.doc_id(d.doc_index)


def test_ngram_log_likelihoods_equal_teacher_forcing(tiny_generator):
    """Query n-grams (tree pass under the query prompt) and generated n-grams (the search's running sums)
    carry exactly the log-likelihood a teacher-forced pass over prompt + n-gram gives."""
    import torch

    from gemkr_llamaindex.llamaindex import VQAQueryBundle
    from gemkr_llamaindex.model.scoring import target_log_probs

    gen, kb = tiny_generator
    gen.search.config = gen.config.replace(evidence="clues,beams,query", evidence_whole_words=False)
    try:
        bundle = VQAQueryBundle(query_str=QUESTION, tags=TAGS)
        prepared = gen.prepare([bundle])
        prompts = gen.build_prompts(prepared)
        (res,) = gen.search_clues(prompts, 1, kb, keep_history=True)
        ngrams, look = gen.evidence_ngrams(prompts, 0, prepared[0].prompt.question, TAGS, res, kb)
    finally:
        gen.search.config = gen.config.replace(evidence="", evidence_whole_words=True)
    assert {n.source for n in ngrams} == {"clues", "beams", "query"}
    prompt = gen.prompt_row(prompts, 0)
    picked = ngrams[:: max(1, len(ngrams) // 25)]
    with torch.inference_mode():
        for n in picked:
            logp, _ = target_log_probs(gen.llm, prompt, [list(n.token_ids)], gen.tokenizer.pad_token_id)
            assert n.logprob == pytest.approx(float(logp.sum()), abs=2e-4), n
    assert look.counts.tolist() == kb.ngram_counts([n.token_ids for n in ngrams]).tolist()


def test_evidence_config_is_checked():
    with pytest.raises(ValueError, match="unknown evidence source"):
        DecodingConfig(evidence="query,bm25")
    with pytest.raises(ValueError, match="evidence_beta"):
        DecodingConfig(evidence="query", evidence_beta=1.5)
    assert DecodingConfig(evidence="clues, query,clues").evidence_sources == ("clues", "query")
    assert not DecodingConfig(evidence="query").runs_search and DecodingConfig(evidence="query,clues").runs_search
    assert DecodingConfig().runs_search and DecodingConfig.from_options({"evidence": "query"}).evidence == "query"


def test_eval_registry_ranks_one_model_each_way(tiny_generator, wiki_docs, tmp_path, monkeypatch):
    """``gemkr-paper`` / ``gemkr-seal`` / ``gemkr-fast`` are the ``gemkr`` retriever with a named scoring."""
    from eval_vqa.registry import build_retriever

    gen, _ = tiny_generator
    monkeypatch.setenv("GEMKR_CACHE", str(tmp_path))  # the corpus KB is built here, not in the user's cache
    docs = wiki_docs[:30]
    base = {"top_k": 3, "use_tags": False, "zero_shot": "1", "llm": gen.llm.name_or_path, "beams": 4, "groups": 2}
    seen = {}
    for name in ("gemkr-paper", "gemkr-seal", "gemkr-fast"):
        retriever = build_retriever(name, docs, dict(base))
        seen[name] = retriever.generator.config
        hits = retriever.retrieve("Which city is the capital of France?")
        assert all(h.node.node_id in dict(docs) for h in hits)
    assert seen["gemkr-paper"].evidence == "" and seen["gemkr-fast"].evidence_sources == ("query", "inflections")
    assert seen["gemkr-seal"].evidence_alpha == 2.0 and seen["gemkr-seal"].evidence_beta == 0.8
    assert seen["gemkr-fast"].num_beams == 4  # the run's other options still apply
    with pytest.raises(ValueError, match="unknown scoring"):
        DecodingConfig().with_scoring("bm25")


@pytest.mark.parametrize("scoring", ["evidence=query", "evidence="], ids=["evidence", "paper"])
def test_gemkr_retrieve_prints_what_ranked_each_document(tiny_generator, capsys, scoring):
    """``gemkr retrieve`` shows a document's strongest evidence, or its best clue under the paper's scoring
    (a document ranked by evidence may have no clue: the listing must not need one)."""
    from gemkr_llamaindex.cli import main

    gen, kb = tiny_generator
    args = ["retrieve", str(kb.path), "--question", QUESTION, "--llm", gen.llm.name_or_path, "--tags", "none",
            "--beams", "4", "--groups", "2", "--option", scoring]
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:2] in {f"{i}." for i in range(1, 6)}]
    assert lines and all(("evidence '" if scoring == "evidence=query" else "clue '") in line for line in lines)
