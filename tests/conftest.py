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
