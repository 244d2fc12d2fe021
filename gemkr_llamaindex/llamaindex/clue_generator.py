"""Moved: :mod:`gemkr_llamaindex.generation` (the generator has a room of its own)."""

from gemkr_llamaindex.generation.generator import BoundGenerator, ClueGenerator, checkpoint_decoding_config
from gemkr_llamaindex.generation.prompts import ZERO_SHOT_SYSTEM

__all__ = ["ZERO_SHOT_SYSTEM", "BoundGenerator", "ClueGenerator", "checkpoint_decoding_config"]
