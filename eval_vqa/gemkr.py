"""The ``gemkr`` evaluation retriever: GeMKR over a KB of the evaluated corpus (built once, cached).

Which model: ``--option checkpoint=DIR`` (a trained GeMKR checkpoint), else, on the packaged Wikipedia
summaries, the checkpoint that ships with the library (trained on pseudo-queries made from that corpus
alone), else zero-shot ``--option llm=NAME`` (default the packaged SmolLM2). ``--option zero_shot=1``
forces the zero-shot path. Decoding: the checkpoint's own settings (or :class:`DecodingConfig`'s
defaults), overridden by any DecodingConfig field given as an option (``min_length=5``, ``anchor=mixed``,
``beams=20`` ...), then by ``scoring=paper|seal|fast`` (:data:`gemkr_llamaindex.decoding.config.SCORINGS`),
which the registry's ``gemkr-paper``, ``gemkr-seal`` and ``gemkr-fast`` set.
"""

from __future__ import annotations

import sys
from typing import Any

#: Factory options that are not decoding settings.
OWN_OPTIONS = {"checkpoint", "llm", "zero_shot", "device", "batch_size", "top_k", "use_tags", "progress", "tagger",
               "scoring"}


def corpus_kb(docs: list, tokenizer: Any, progress: bool = False):
    """The KB of ``docs`` for ``tokenizer``, built once per corpus and tokenizer under the cache
    (:func:`gemkr_llamaindex.kb_cache.cached_kb`)."""
    from gemkr_llamaindex.kb_cache import cached_kb

    return cached_kb(docs, tokenizer, show_progress=progress)


def option_names() -> set[str]:
    """Every option this retriever reads: :data:`OWN_OPTIONS` and each ``DecodingConfig`` field (``beams``,
    ``groups`` too), read when called, so a new decoding setting is an option as soon as it exists."""
    from gemkr_llamaindex.decoding import DecodingConfig

    return OWN_OPTIONS | DecodingConfig.option_names()


def decoding_options(options: dict) -> dict[str, Any]:
    """The options that are DecodingConfig fields (``beams``/``groups`` accepted)."""
    from gemkr_llamaindex.decoding import DecodingConfig

    names = DecodingConfig.option_names()
    return {k: v for k, v in options.items() if k in names}


def gemkr_generator(docs: list, o: dict):
    """The clue generator the options ask for (see the module docstring)."""
    from gemkr_llamaindex.assets import DEFAULT_LLM
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.generation import ClueGenerator, checkpoint_decoding_config

    zero_shot = str(o.get("zero_shot", "0")).strip().lower() in ("1", "true", "yes")
    checkpoint = o.get("checkpoint")
    if checkpoint is None and not zero_shot:
        from gemkr_llamaindex.checkpoints import packaged_checkpoint_for

        checkpoint = packaged_checkpoint_for(docs)
    batch = int(o.get("batch_size", 4))

    def config(base: DecodingConfig | None) -> DecodingConfig:
        cfg = DecodingConfig.from_options(decoding_options(o), base)
        return cfg.with_scoring(o["scoring"]) if o.get("scoring") else cfg

    if checkpoint and not zero_shot:
        print(f"gemkr: trained checkpoint {checkpoint}", file=sys.stderr)
        return ClueGenerator.from_checkpoint(checkpoint, device=o.get("device", "cpu"), batch_size=batch,
                                             config=config(checkpoint_decoding_config(checkpoint)))
    why = "zero_shot=1" if zero_shot else "no trained checkpoint for this corpus"
    print(f"gemkr: zero-shot {o.get('llm', DEFAULT_LLM)} ({why})", file=sys.stderr)
    return ClueGenerator.zero_shot_llm(o.get("llm", DEFAULT_LLM), batch_size=batch, config=config(None))


def gemkr_retriever(docs: list, o: dict):
    """GeMKR over a KB of the corpus; see the module docstring."""
    from gemkr_llamaindex.llamaindex import GeMKRRetriever

    gen = gemkr_generator(docs, o)
    kb = corpus_kb(docs, gen.tokenizer, progress=o.get("progress", False))
    return GeMKRRetriever(gen, kb, similarity_top_k=o["top_k"])
