"""Constrained diverse beam search on a tiny real causal LM and a real KB."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DECODING_VOCAB

from gemkr_llamaindex.decoding import ConstrainedBeamSearch, DecodingConfig, HFBackend, Prompts

VOCAB = DECODING_VOCAB


@pytest.fixture(scope="module")
def kb(decoding_kb):
    return decoding_kb


@pytest.fixture(scope="module")
def model(decoding_lm):
    return decoding_lm


def prompts_of(rows: list[list[int]]) -> Prompts:
    """Left-padded token-id prompts."""
    n = max(map(len, rows))
    ids = torch.full((len(rows), n), 2, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):] = torch.tensor(r)
        mask[i, n - len(r):] = 1
    return Prompts(attention_mask=mask, input_ids=ids)


PROMPTS = [[5, 9, 13, 44, 71], [8, 120, 3], [150, 151, 152, 7, 9, 11, 13]]


def run(kb, model, cfg, prompts=PROMPTS, **kwargs):
    search = ConstrainedBeamSearch(cfg)
    return search(HFBackend(model), prompts_of(prompts), len(prompts), kb, **kwargs)


def test_one_group_without_early_stop_equals_transformers_beam_search(kb, model):
    k, steps = 4, 3
    cfg = DecodingConfig(num_beams=k, num_groups=1, diversity_penalty=0.0, min_length=1, max_length=steps,
                         stop_when_unique=False, constraint="mask")
    prompt = PROMPTS[0]
    ours = run(kb, model, cfg, [prompt])[0]

    def allowed(batch_id, input_ids):
        generated = input_ids[len(prompt):].tolist()
        nxt = kb.next_tokens(generated).tolist()
        return nxt or [1]

    out = model.generate(torch.tensor([prompt]), num_beams=k, num_return_sequences=k, max_new_tokens=steps,
                         do_sample=False, prefix_allowed_tokens_fn=allowed, length_penalty=1.0,
                         return_dict_in_generate=True, output_scores=True, pad_token_id=2, eos_token_id=1)
    hf = [(seq[len(prompt):].tolist(), float(s)) for seq, s in zip(out.sequences, out.sequences_scores)]
    # Our search then drops the clues that map to several documents; the others must match exactly.
    hf_unique = [(seq, score) for seq, score in hf if kb.unique_doc(seq) is not None]
    assert len(hf_unique) >= 2
    assert [c.token_ids for c in ours.clues] == [seq for seq, _ in hf_unique]
    for c, (_, score) in zip(ours.clues, hf_unique):
        assert c.score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("groups,penalty", [(1, 0.0), (3, 0.5), (6, 1.0)])
def test_mask_and_topk_constraints_give_identical_results(kb, model, groups, penalty):
    base = dict(num_beams=6, num_groups=groups, diversity_penalty=penalty, min_length=2, max_length=6)
    a = run(kb, model, DecodingConfig(constraint="mask", **base))
    b = run(kb, model, DecodingConfig(constraint="topk", topk_candidates=2, enumerate_below=0, **base))
    c = run(kb, model, DecodingConfig(constraint="topk", topk_candidates=40, enumerate_below=3, **base))
    assert [[x.token_ids for x in r.clues] for r in c] == [[x.token_ids for x in r.clues] for r in a]
    for ra, rb in zip(a, b):
        assert [(c.token_ids, c.doc_id) for c in ra.clues] == [(c.token_ids, c.doc_id) for c in rb.clues]
        assert [c.score for c in ra.clues] == pytest.approx([c.score for c in rb.clues], abs=1e-6)
        assert [d.doc_id for d in ra.docs] == [d.doc_id for d in rb.docs]


def sequence_logprob(model, prompt: list[int], clue: list[int]) -> float:
    ids = torch.tensor([prompt + clue])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(clue))


def test_clue_properties(kb, model):
    cfg = DecodingConfig(num_beams=8, num_groups=4, diversity_penalty=0.5, min_length=2, max_length=5,
                         length_penalty=0.7)
    results = run(kb, model, cfg)
    assert any(r.clues for r in results)
    for prompt, r in zip(PROMPTS, results):
        scores = [c.score for c in r.clues]
        assert scores == sorted(scores, reverse=True)
        assert len({d.doc_id for d in r.docs}) == len(r.docs)  # deduplicated
        assert len({tuple(c.token_ids) for c in r.clues}) == len(r.clues)
        assert [d.score for d in r.docs] == sorted((d.score for d in r.docs), reverse=True)
        for c in r.clues:
            assert cfg.min_length <= len(c.token_ids) <= cfg.max_length
            assert kb.count(c.token_ids) > 0  # occurs in the KB
            assert kb.unique_doc(c.token_ids) == c.doc_id  # and maps to its one document
            # stops as soon as unique: no shorter prefix of length >= l_min was already unique
            for n in range(cfg.min_length, len(c.token_ids)):
                assert kb.unique_doc(c.token_ids[:n]) is None
            assert c.logprob == pytest.approx(sequence_logprob(model, prompt, c.token_ids), abs=1e-4)
            assert c.score == pytest.approx(c.logprob / len(c.token_ids) ** 0.7, abs=1e-6)


def test_groups_produce_different_clues(kb, model):
    diverse = run(kb, model, DecodingConfig(num_beams=8, num_groups=8, diversity_penalty=3.0, min_length=2,
                                            max_length=5))
    for r in diverse:
        firsts = {c.token_ids[0] for c in r.clues}
        assert len(firsts) > 1 or len(r.clues) <= 1


def test_batched_queries_equal_single_queries(kb, model):
    cfg = DecodingConfig(num_beams=6, num_groups=2, min_length=2, max_length=5)
    batched = run(kb, model, cfg)
    for prompt, r in zip(PROMPTS, batched):
        single = run(kb, model, cfg, [prompt])[0]
        assert [c.token_ids for c in single.clues] == [c.token_ids for c in r.clues]
        assert [c.score for c in single.clues] == pytest.approx([c.score for c in r.clues], abs=1e-4)


def test_logsumexp_document_scores(kb, model):
    cfg = DecodingConfig(num_beams=8, num_groups=2, min_length=1, max_length=4, doc_score="logsumexp")
    for r in run(kb, model, cfg):
        for d in r.docs:
            expected = math.log(sum(math.exp(c.score) for c in d.clues))
            assert d.score == pytest.approx(expected, abs=1e-6)


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of num_groups"):
        DecodingConfig(num_beams=10, num_groups=4)
    with pytest.raises(ValueError, match="min_length"):
        DecodingConfig(min_length=5, max_length=3)
    with pytest.raises(ValueError, match="constraint must be one of"):
        DecodingConfig(constraint="fast")


# ---------------------------------------------------------------------------------------------- device-side selection
def _host_search():
    from host_search import HostSideBeamSearch  # tests/host_search.py: the former search, frozen as an oracle

    return HostSideBeamSearch


@pytest.mark.parametrize("constraint", ["mask", "topk"])
@pytest.mark.parametrize("groups,penalty,lp", [(1, 0.0, 1.0), (3, 0.5, 0.7), (6, 1.0, 1.0)])
def test_device_side_selection_equals_the_host_side_search(kb, model, constraint, groups, penalty, lp):
    """The search picks candidates with tensor ops where the log-probs are and fetches only (beams x m) of
    them; it must return exactly what the former host-side search (full rows on the host) returned."""
    cfg = DecodingConfig(num_beams=6, num_groups=groups, diversity_penalty=penalty, min_length=2, max_length=6,
                         length_penalty=lp, constraint=constraint, topk_candidates=8, enumerate_below=3,
                         allow_doc_end=False)
    new = run(kb, model, cfg)
    old = _host_search()(cfg)(HFBackend(model), prompts_of(PROMPTS), len(PROMPTS), kb)
    for a, b in zip(new, old):
        assert [(c.token_ids, c.doc_id) for c in a.clues] == [(c.token_ids, c.doc_id) for c in b.clues]
        assert [c.score for c in a.clues] == pytest.approx([c.score for c in b.clues], abs=1e-6)
        assert [d.doc_id for d in a.docs] == [d.doc_id for d in b.docs]


def test_search_stats_are_per_call(kb, model):
    from gemkr_llamaindex.decoding import SearchStats

    cfg = DecodingConfig(num_beams=4, num_groups=2, min_length=2, max_length=4)
    a, b = SearchStats(), SearchStats()
    run(kb, model, cfg, stats=a)
    run(kb, model, cfg, PROMPTS[:1], stats=b)
    assert a.kb_calls > 0 and b.kb_calls > 0 and a.steps >= b.steps
    assert a.total >= a.model and a.total >= a.kb
    assert not hasattr(ConstrainedBeamSearch(cfg), "timings")  # nothing shared between calls


# ---------------------------------------------------------------------------------------------- anchors and END, by brute force
TINY_DOCS = [[5, 6], [5, 6, 7, 8, 9], [9, 10, 11, 5], [12, 5, 6, 13], [10, 11]]


@pytest.fixture(scope="module")
def tiny_kb(tmp_path_factory):
    from conftest import as_text, word_tokenizer

    from gemkr_llamaindex.kb import KnowledgeBase

    docs = [(f"d{i}", as_text(d)) for i, d in enumerate(TINY_DOCS)]
    return KnowledgeBase.build(docs, word_tokenizer(DECODING_VOCAB), tmp_path_factory.mktemp("tiny") / "kb",
                               show_progress=False)


def _occurrences(prefix: tuple[int, ...], anchored: bool) -> list[tuple[int, int]]:
    """(doc, end position) of every occurrence of ``prefix`` (at document starts only when anchored)."""
    out = []
    for d, doc in enumerate(TINY_DOCS):
        for s in ([0] if anchored else range(len(doc))):
            if tuple(doc[s : s + len(prefix)]) == prefix:
                out.append((d, s + len(prefix)))
    return out


def oracle_clues(cfg: DecodingConfig, anchored: bool) -> set[tuple[tuple[int, ...], bool, int]]:
    """Every clue an exhaustive search finishes: (tokens, ends_document, doc). A live prefix finishes with a
    token when it is unique and long enough (or at max_length), or with END when exactly one document ends
    with it."""
    found = set()
    live = [()]
    for length in range(1, cfg.max_length + 1):
        nxt = []
        for p in live:
            occ = _occurrences(p, anchored) if p else None
            if p:  # END: the clue ends where exactly one document ends with it
                ends = {d for d, e in occ if e == len(TINY_DOCS[d])}
                if len(ends) == 1 and sum(1 for d, e in occ if e == len(TINY_DOCS[d])) == 1:
                    found.add((p, True, next(iter(ends))))
            toks = {TINY_DOCS[d][e] for d, e in (occ if p else _occurrences((), anchored) or [])
                    if e < len(TINY_DOCS[d])} if p else ({doc[0] for doc in TINY_DOCS} if anchored else
                                                         {t for doc in TINY_DOCS for t in doc})
            for t in sorted(toks):
                q = (*p, t)
                docs = {d for d, _ in _occurrences(q, anchored)}
                unique = len(docs) == 1
                if length == cfg.max_length or (length >= cfg.min_length and unique):
                    if unique:
                        found.add((q, False, next(iter(docs))))
                    continue
                nxt.append(q)
        live = nxt
    return found


@pytest.mark.parametrize("anchor", ["any", "doc_start"])
@pytest.mark.parametrize("constraint", ["mask", "topk"])
def test_exhaustive_search_finds_exactly_the_brute_force_clues(tiny_kb, model, anchor, constraint):
    """With more beams than prefixes the search is exhaustive: its clues must be the brute-force set,
    including clues that end at a document's end (the two-token document d0 is reachable although
    min_length is 3 and d1 starts with it too) and, anchored, only document openings."""
    cfg = DecodingConfig(num_beams=64, num_groups=1, diversity_penalty=0.0, min_length=3, max_length=5,
                         anchor=anchor, constraint=constraint, topk_candidates=4, enumerate_below=1)
    res = run(tiny_kb, model, cfg, [PROMPTS[0]], end_token_id=1)[0]
    got = {(tuple(c.token_ids), c.ends_document, int(c.doc_id[1:])) for c in res.clues}
    want = oracle_clues(cfg, anchored=anchor == "doc_start")
    assert got == want
    assert ((5, 6), True, 0) in got  # the short document, ended by END
    for c in res.clues:  # scores are the model's: EOS log-prob included for END clues
        seq = c.token_ids + ([1] if c.ends_document else [])
        assert c.logprob == pytest.approx(sequence_logprob(model, PROMPTS[0], seq), abs=1e-4)
    without = run(tiny_kb, model, cfg.replace(allow_doc_end=False), [PROMPTS[0]], end_token_id=1)[0]
    assert "d0" not in {c.doc_id for c in without.clues}  # the defect END fixes


def test_mixed_anchoring_anchors_the_first_half_of_the_groups(tiny_kb, model):
    cfg = DecodingConfig(num_beams=8, num_groups=4, min_length=2, max_length=4, anchor="mixed")
    assert cfg.group_anchors() == ["doc_start", "doc_start", "any", "any"]
    res = run(tiny_kb, model, cfg, PROMPTS, end_token_id=1)
    anchored = {tuple(c.token_ids) for r in res for c in r.clues}
    assert anchored
    for r in res:
        for c in r.clues:
            assert _occurrences(tuple(c.token_ids), anchored=False)  # every clue occurs in the KB
