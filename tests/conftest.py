"""Shared fixtures: tiny real tokenizers built in-process, and small KBs. No network anywhere."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")


def word_tokenizer(vocab_size: int):
    """A real fast tokenizer whose word ``t{i}`` is token id ``i``: corpora of arbitrary token ids as text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core)


def as_text(ids) -> str:
    return " ".join(f"t{i}" for i in ids)


@pytest.fixture(scope="session")
def small_vocab_tokenizer():
    return word_tokenizer(50)


@pytest.fixture(scope="session")
def large_vocab_tokenizer():
    return word_tokenizer(70_000)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from gemkr_llamaindex.assets import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(scope="session")
def wiki_docs():
    from gemkr_llamaindex.assets import wiki_summaries

    return list(wiki_summaries())


@pytest.fixture(scope="session")
def wiki_kb(tmp_path_factory, wiki_docs, smollm2_tokenizer):
    """The KB over all 10,033 packaged Wikipedia summaries (a few seconds to build)."""
    from gemkr_llamaindex.kb import KnowledgeBase

    return KnowledgeBase.build(wiki_docs, smollm2_tokenizer, tmp_path_factory.mktemp("kb") / "wiki",
                               show_progress=False)


DECODING_VOCAB = 200


@pytest.fixture(scope="session")
def decoding_kb(tmp_path_factory):
    """40 random documents over a 200-word vocabulary: a few frequent tokens make shared prefixes, the rest
    make most 3-grams unique (what constrained decoding needs to branch and to stop)."""
    import numpy as np

    from gemkr_llamaindex.kb import KnowledgeBase

    rng = np.random.default_rng(0)
    docs = []
    for i in range(40):
        toks = [int(t) if rng.random() < 0.7 else int(rng.integers(3, 8)) for t in rng.integers(3, DECODING_VOCAB, 14)]
        docs.append((f"doc{i}", as_text(toks)))
    return KnowledgeBase.build(docs, word_tokenizer(DECODING_VOCAB), tmp_path_factory.mktemp("dec") / "kb",
                               show_progress=False)


@pytest.fixture(scope="session")
def decoding_lm():
    """A 2-layer random LLaMA over the same vocabulary, its output sharpened so beams differ meaningfully."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=DECODING_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(8)
    return m


RAY_EXTRA_REASON = "the Ray tests need the [ray] extra: pip install 'gemkr-llamaindex[ray]'"


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster (2 CPUs) for every Ray test of the session; skips without the extra."""
    ray = pytest.importorskip("ray", reason=RAY_EXTRA_REASON)
    pytest.importorskip("ray.data", reason=RAY_EXTRA_REASON)
    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
