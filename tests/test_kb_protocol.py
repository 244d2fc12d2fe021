"""The decoder's protocol (root_states with anchors, step, continuations, children with unique docs, END)
equals brute force (tests/kb_reference.py) on random corpora, single- and multi-shard."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import as_text, word_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kb_reference import ReferenceKB

from gemkr_llamaindex.kb import END, KnowledgeBase, StepResult

VOCAB = 40
TOKENIZER = word_tokenizer(VOCAB)


def build(docs, directory: Path, **kw) -> KnowledgeBase:
    pairs = [(f"d{i}", as_text(d)) for i, d in enumerate(docs)]
    return KnowledgeBase.build(pairs, TOKENIZER, directory / "kb", show_progress=False, overwrite=True, **kw)


@st.composite
def corpora(draw):
    """Small alphabets (many shared prefixes), then the shapes END must get right: duplicated documents,
    one-token documents, and documents that are prefixes or suffixes of others."""
    token = st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(0, VOCAB - 1))
    docs = draw(st.lists(st.lists(token, min_size=1, max_size=12), min_size=1, max_size=8))
    for _ in range(draw(st.integers(0, 4))):
        src = docs[draw(st.integers(0, len(docs) - 1))]
        kind = draw(st.sampled_from(["dup", "one", "prefix", "suffix"]))
        cut = draw(st.integers(1, len(src)))
        docs.append({"dup": src, "one": [draw(token)], "prefix": src[:cut], "suffix": src[-cut:]}[kind])
    return docs


def clues(docs, draw):
    """Clues to walk: substrings, prefixes, suffixes, whole documents, absent ones; some end with END."""
    out = []
    for _ in range(10):
        d = docs[draw(st.integers(0, len(docs) - 1))]
        a = draw(st.integers(0, len(d) - 1))
        b = draw(st.integers(a + 1, len(d)))
        out += [d[a:b], d[:b], d[a:], list(d)]
    out.append(draw(st.lists(st.integers(0, 3), min_size=1, max_size=4)))
    return [(c + [END]) if draw(st.booleans()) else c for c in out]


def check_walk(kb: KnowledgeBase, ref: ReferenceKB, walks, anchor: str) -> None:
    """Walk every clue token by token with step(), batched, checking states, counts, unique docs,
    continuations and children (with END and unique) against brute force at every step."""
    states = kb.root_states(len(walks), anchor=anchor)
    assert states.shape == (len(walks), kb.num_shards, 2) and states.dtype == np.int64
    for t in range(max(map(len, walks)) + 1):
        live = [i for i, w in enumerate(walks) if len(w) >= t]
        cur = states[live]
        offsets, tokens = kb.continuations(cur)
        ch = kb.children(cur)
        for j, i in enumerate(live):
            prefix, ended = walks[i][:t], t > 0 and walks[i][t - 1] == END
            core = prefix[:-1] if ended else prefix
            expected = ref.continuations(core, anchor, end=ended)
            assert tokens[offsets[j] : offsets[j + 1]].tolist() == expected, (prefix, anchor)
            sl = ch.of(j)
            assert ch.tokens[sl].tolist() == expected
            for tok, cnt, uniq in zip(ch.tokens[sl].tolist(), ch.counts[sl].tolist(), ch.unique[sl].tolist()):
                nxt, end = (core, True) if tok == END else (core + [tok], False)
                assert cnt == ref.clue_count(nxt, anchor, end) and uniq == ref.clue_unique(nxt, anchor, end), (nxt, end)
        go = [i for i in live if len(walks[i]) > t]
        if not go:
            break
        toks = [walks[i][t] for i in go]
        res = kb.step(states[go], toks)
        assert isinstance(res, StepResult)
        # The fused call equals the three separate ones (extend for token ids; END has no extend).
        plain = [k for k, tok in enumerate(toks) if tok != END]
        np.testing.assert_array_equal(res.states[plain], kb.extend(states[go][plain], np.array(toks)[plain]))
        np.testing.assert_array_equal(res.counts, kb.counts(res.states))
        np.testing.assert_array_equal(res.unique, kb.unique_docs(res.states))
        for k, i in enumerate(go):
            w = walks[i][: t + 1]
            end = w[-1] == END
            core = w[:-1] if end else w
            assert res.counts[k] == ref.clue_count(core, anchor, end), (w, anchor)
            assert res.unique[k] == ref.clue_unique(core, anchor, end), (w, anchor)
            assert bool(kb.is_terminal(res.states[k : k + 1])[0]) == (end and res.counts[k] > 0)
        states[go] = res.states
    # A terminal state extends to nothing, by END or by any token.
    ended = [i for i, w in enumerate(walks) if w and w[-1] == END]
    if ended:
        for tok in (END, 0, 1):
            res = kb.step(states[ended], [tok] * len(ended))
            assert not res.counts.any() and (res.unique == -1).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), docs=corpora())
def test_protocol_matches_brute_force(data, docs):
    ref = ReferenceKB(docs)
    walks = clues(docs, data.draw)
    shard_tokens = data.draw(st.sampled_from([None, None, 3, 10]))
    with tempfile.TemporaryDirectory() as tmp:
        kb = build(docs, Path(tmp), shard_tokens=shard_tokens, sample_rate=data.draw(st.sampled_from([1, 3, 16])),
                   cache_min_children=data.draw(st.sampled_from([1, 2, 128])))
        for anchor in ("any", "doc_start"):
            check_walk(kb, ref, walks, anchor)
        for w in walks:  # searched from the first token, anchored or not
            core = [t for t in w if t != END]
            for anchor in ("any", "doc_start"):
                if core or anchor == "doc_start":  # (the unanchored root counts index rows, not positions)
                    assert kb.counts(kb.state(core, anchor=anchor))[0] == ref.clue_count(core, anchor)


def test_anchored_root_counts_documents(tmp_path):
    docs = [[1, 2, 3], [1, 2], [2, 3], [1]]
    kb = build(docs, tmp_path, shard_tokens=3)
    assert kb.num_shards > 1
    root = kb.root_states(2, anchor="doc_start")
    assert kb.counts(root).tolist() == [4, 4]
    offsets, tokens = kb.continuations(root[:1])
    assert tokens.tolist() == [1, 2]  # first tokens only
    res = kb.step(root[:1], [1])
    assert res.counts.tolist() == [3]  # d0, d1, d3 start with 1
    res = kb.step(res.states, [END])
    assert res.counts.tolist() == [1] and res.unique.tolist() == [3]  # the whole document "1" is d3


def test_moon_landing_short_document_is_reachable(tmp_path, smollm2_tokenizer):
    """The issue: a 4-token document is a prefix of another one's text, so no clue of >= 4 tokens is unique
    to it unless the clue may end at the document's end."""
    docs = [("moon", "Moon landing"), ("apollo", "Moon landing was a triumph of Apollo 11."),
            ("mars", "Mars landing is next.")]
    kb = KnowledgeBase.build(docs, smollm2_tokenizer, tmp_path / "kb", show_progress=False)
    ids = kb.encode("Moon landing")
    assert kb.unique_doc(ids) is None  # both documents contain it
    states = kb.root_states(1)
    for t in ids:
        res = kb.step(states, [t])
        states = res.states
    assert res.counts.tolist() == [2] and res.unique.tolist() == [-1]
    offsets, tokens = kb.continuations(states)
    assert tokens[0] == END  # the clue may end here: "Moon landing" is a whole document's end
    ch = kb.children(states)
    assert ch.tokens[0] == END and ch.unique[0] == kb.index_of("moon")
    res = kb.step(states, [END])
    assert res.counts.tolist() == [1] and kb.doc_id(int(res.unique[0])) == "moon"
    # Anchored at the document start, + END: the whole document.
    states = kb.root_states(1, anchor="doc_start")
    for t in ids + [END]:
        res = kb.step(states, [t])
        states = res.states
    assert kb.doc_id(int(res.unique[0])) == "moon"


def test_end_in_several_shards_is_not_unique(tmp_path):
    docs = [[5, 6], [7], [5, 6], [8, 6]]
    kb = build(docs, tmp_path, shard_tokens=2)
    assert kb.num_shards >= 3
    res = kb.step(kb.step(kb.root_states(1), [6]).states, [END])
    assert res.counts.tolist() == [3] and res.unique.tolist() == [-1]
    res = kb.step(kb.state([8, 6]), [END])
    assert res.counts.tolist() == [1] and res.unique.tolist() == [3]


def test_protocol_input_errors(tmp_path):
    kb = build([[1, 2]], tmp_path)
    with pytest.raises(ValueError, match="unknown anchor 'start'.*'any'.*'doc_start'"):
        kb.root_states(1, anchor="start")
    with pytest.raises(ValueError, match="one token per state"):
        kb.step(kb.root_states(2), [1])
    with pytest.raises(ValueError, match=r"token -2 .*END \(-1\)"):
        kb.step(kb.root_states(1), [-2])
    bad = kb.root_states(1)
    bad[0, 0, 0] = -5  # half a terminal entry
    with pytest.raises(ValueError, match="outside shard 0"):
        kb.step(bad, [1])
    assert KnowledgeBase.END == END == -1
    assert kb.children(kb.root_states(1), unique=False).unique is None
