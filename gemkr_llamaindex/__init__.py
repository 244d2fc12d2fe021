"""gemkr-llamaindex: generative multimodal knowledge retrieval (GeMKR, AAAI 2024) for LlamaIndex.

Data flow: query image -> detector -> vision (CLIP + object-aware prefix) -> alignment -> LLM ->
constrained decoding against the FM-index knowledge base -> NodeWithScore -> reader -> answer.

Heavy modules (torch, transformers, llama-index) are imported lazily, on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gemkr_llamaindex._version import __version__

_LAZY = {
    "load_tokenizer": "gemkr_llamaindex.assets",
    "KnowledgeBase": "gemkr_llamaindex.kb",
    "KBError": "gemkr_llamaindex.kb",
    "GeMKRIndex": "gemkr_llamaindex.llamaindex",
    "GeMKRRetriever": "gemkr_llamaindex.llamaindex",
    "MultimodalFusionRetriever": "gemkr_llamaindex.llamaindex",
    "ImageBoundQueryEngine": "gemkr_llamaindex.llamaindex",
    "vqa_tool": "gemkr_llamaindex.llamaindex",
    "ClueGenerator": "gemkr_llamaindex.llamaindex",
    "VQAQueryBundle": "gemkr_llamaindex.query",
    "DecodingConfig": "gemkr_llamaindex.decoding",
    "GeMKRModel": "gemkr_llamaindex.model.gemkr",
    "GeMKRConfig": "gemkr_llamaindex.model.config",
    "TrainConfig": "gemkr_llamaindex.training.trainer",
    "train": "gemkr_llamaindex.training.trainer",
    "hint_tagger": "gemkr_llamaindex.tags",
    "load_image": "gemkr_llamaindex.images",
}

if TYPE_CHECKING:  # pragma: no cover
    from gemkr_llamaindex.assets import load_tokenizer
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.images import load_image
    from gemkr_llamaindex.kb import KBError, KnowledgeBase
    from gemkr_llamaindex.llamaindex import (
        ClueGenerator,
        GeMKRIndex,
        GeMKRRetriever,
        ImageBoundQueryEngine,
        MultimodalFusionRetriever,
        VQAQueryBundle,
        vqa_tool,
    )
    from gemkr_llamaindex.model.config import GeMKRConfig
    from gemkr_llamaindex.model.gemkr import GeMKRModel
    from gemkr_llamaindex.tags import hint_tagger
    from gemkr_llamaindex.training.trainer import TrainConfig, train

__all__ = [
    "ClueGenerator",
    "DecodingConfig",
    "GeMKRConfig",
    "GeMKRIndex",
    "GeMKRModel",
    "GeMKRRetriever",
    "ImageBoundQueryEngine",
    "KBError",
    "KnowledgeBase",
    "MultimodalFusionRetriever",
    "TrainConfig",
    "VQAQueryBundle",
    "__version__",
    "hint_tagger",
    "load_image",
    "load_tokenizer",
    "train",
    "vqa_tool",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gemkr_llamaindex' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
