"""Moved: :mod:`gemkr_llamaindex.query` (the multimodal query every part shares)."""

from gemkr_llamaindex.query import VQAQueryBundle

__all__ = ["VQAQueryBundle"]
