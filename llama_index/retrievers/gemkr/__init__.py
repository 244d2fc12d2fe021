"""GeMKR in LlamaIndex's integration namespace: ``from llama_index.retrievers.gemkr import GeMKRRetriever``.

The library's home is ``gemkr_llamaindex``; this namespace package (no ``llama_index/__init__.py`` of ours)
re-exports its LlamaIndex classes under the path LlamaIndex integrations use.
"""

from gemkr_llamaindex.llamaindex import (
    ClueGenerator,
    GeMKRIndex,
    GeMKRRetriever,
    ImageBoundQueryEngine,
    MultimodalFusionRetriever,
    VQAQueryBundle,
    vqa_tool,
)

__all__ = ["ClueGenerator", "GeMKRIndex", "GeMKRRetriever", "ImageBoundQueryEngine", "MultimodalFusionRetriever",
           "VQAQueryBundle", "vqa_tool"]
