"""Span-constrained answers: the reader can only answer with a span of the passages it read."""

from __future__ import annotations

import random
import re

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from reader import VQAReader
from reader.prompt import SPANS_KWARG, build_vqa_message
from reader.spans import SpanTrie, passage_spans


def words_of(texts) -> set[str]:
    return {w.strip("\"'`.,;:!?()[]{}").lower() for t in texts for w in t.split()} - {""}


def walk(trie: SpanTrie, tokenizer, prefix=(), out=None) -> list[str]:
    """Every string an EOS-terminated path of the trie decodes to (a brute-force read of the trie)."""
    out = [] if out is None else out
    for t in trie.allowed(list(prefix)):
        if t in trie.eos:
            out.append(tokenizer.decode(list(prefix)))
        else:
            walk(trie, tokenizer, (*prefix, t), out)
    return out


def test_trie_paths_are_exactly_the_spans(smollm2_tokenizer):
    texts = ["Cat. The cat is a small mammal of the family Felidae.", "Procyonidae is a family."]
    trie = SpanTrie(texts, smollm2_tokenizer, smollm2_tokenizer.eos_token_id, max_words=2)
    spans = passage_spans(texts, max_words=2)
    assert "Felidae" in spans and "family Felidae" in spans and "felidae" in spans and "The cat" in spans
    assert "Felidae." not in spans and "Procyonidae is a" not in spans  # edge punctuation off; 2 words at most
    assert sorted(walk(trie, smollm2_tokenizer)) == sorted(spans)
    assert trie.allowed([10**6]) == trie.eos  # a prefix outside the trie can only end
    assert not SpanTrie([], smollm2_tokenizer, 0)


@pytest.fixture(scope="module")
def tiny_reader(tmp_path_factory):
    from gemkr_llamaindex.model.tiny import build_tiny_llm

    path = build_tiny_llm(tmp_path_factory.mktemp("reader") / "tiny", seed=3)
    return VQAReader(str(path), max_new_tokens=12).load()


def test_constrained_answers_never_hold_a_word_absent_from_the_passages(tiny_reader, wiki_docs):
    """A random model answers anything; constrained to spans, every word it says is in a passage."""
    rng = random.Random(0)
    for trial in range(6):
        picked = rng.sample(wiki_docs, 2)
        nodes = [NodeWithScore(node=TextNode(id_=t, text=x), score=1.0) for t, x in picked]
        question = rng.choice(["What is this?", "Which family does it belong to?", "Where is it found?"])
        message = build_vqa_message(question, nodes=nodes, max_passage_chars=300, answer_spans=True)
        read = message.additional_kwargs[SPANS_KWARG]
        raw = tiny_reader.chat([message]).message.content or ""
        assert raw.strip(), trial
        allowed = words_of(read)
        assert {w.lower() for w in re.findall(r"\S+", raw)} <= allowed | {""}, (raw, read)
        free = tiny_reader.chat([build_vqa_message(question, nodes=nodes, max_passage_chars=300)]).message.content
        assert SPANS_KWARG not in build_vqa_message(question, nodes=nodes).additional_kwargs
        assert isinstance(free, str)


def test_answer_spans_on_the_packaged_reader():
    nodes = [NodeWithScore(node=TextNode(id_="Cat", text="Cat. The cat is a small carnivorous mammal of the family "
                                         "Felidae. It is the only domesticated species."), score=1.0)]
    answer = VQAReader().answer("Which planet is the Moon the natural satellite of?", passages=nodes, answer_spans=True)
    assert answer and words_of([answer]) <= words_of([nodes[0].node.get_content()])


def test_span_beam_search_finds_the_best_span_when_beams_cover_the_trie(tiny_reader):
    """With more beams than spans the search is exhaustive: it returns the span whose teacher-forced
    ``(log p(span) + log p(EOS)) / (len + 1)`` is highest, computed here one span at a time."""
    import torch

    from reader.spans import span_beam_search

    backend = tiny_reader._backend
    tok, model = backend.tokenizer, backend.model
    trie = SpanTrie(["Felidae family. Big cats."], tok, tok.eos_token_id, max_words=2)
    prompt = tok("Which family?", return_tensors="pt").input_ids
    with torch.inference_mode():
        got = span_beam_search(model, prompt, trie, num_beams=64, max_new_tokens=16)
        best, best_score = None, None
        for seq in tok(trie.spans, add_special_tokens=False).input_ids:
            ids = torch.tensor([prompt[0].tolist() + seq + [tok.eos_token_id]])
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            target = ids[0, prompt.shape[1]:]
            score = float(logp[prompt.shape[1] - 1:].gather(1, target[:, None]).sum()) / len(target)
            if best_score is None or score > best_score:
                best, best_score = seq, score
    assert got == best
