"""Clue generation: a model's prompts, the constrained search over a KB, and the rankings built on it.

``generator`` (:class:`ClueGenerator`, :class:`BoundGenerator`), ``prompts`` (one interface for a trained
GeMKR model's template and a zero-shot chat prompt), ``scoring`` (prior calibration, evidence scoring).
The LlamaIndex classes (:mod:`gemkr_llamaindex.llamaindex`) use it; it uses the KB, the decoding loop and
the model.
"""

from gemkr_llamaindex.generation.generator import (
    BoundGenerator,
    ClueGenerator,
    PreparedQuery,
    checkpoint_decoding_config,
)
from gemkr_llamaindex.generation.prompts import ChatPrompts, PreparedPrompt, PromptSource, TemplatePrompts

__all__ = ["BoundGenerator", "ChatPrompts", "ClueGenerator", "PreparedPrompt", "PreparedQuery", "PromptSource",
           "TemplatePrompts", "checkpoint_decoding_config"]
