"""LlamaIndex integration: GeMKRIndex, GeMKRRetriever, the ClueGenerator behind them, the multimodal query."""

from gemkr_llamaindex.generation import ClueGenerator
from gemkr_llamaindex.llamaindex.fusion import MultimodalFusionRetriever
from gemkr_llamaindex.llamaindex.index import GeMKRIndex, GeMKRIndexStruct
from gemkr_llamaindex.llamaindex.retriever import GeMKRRetriever
from gemkr_llamaindex.llamaindex.tools import ImageBoundQueryEngine, vqa_tool
from gemkr_llamaindex.query import VQAQueryBundle

__all__ = ["ClueGenerator", "GeMKRIndex", "GeMKRIndexStruct", "GeMKRRetriever", "ImageBoundQueryEngine",
           "MultimodalFusionRetriever", "VQAQueryBundle", "vqa_tool"]
