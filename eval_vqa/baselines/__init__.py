"""Baseline retrievers (LlamaIndex ``BaseRetriever`` subclasses) over the same doc ids as GeMKR.

Imported lazily: ``from eval_vqa.baselines.bm25 import BM25Baseline`` etc., so that importing this
package does not pull torch or sentence-transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BM25Baseline": "bm25",
    "DenseTextRetriever": "dense",
    "CLIPImageTextRetriever": "clip",
    "LateInteractionRetriever": "late_interaction",
    "GoldOracleRetriever": "oracle",
    "register_tiny_clip": "clip",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
