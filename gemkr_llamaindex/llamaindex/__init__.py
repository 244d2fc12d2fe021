"""LlamaIndex integration: GeMKRIndex, GeMKRRetriever and the ClueGenerator behind them."""

from gemkr_llamaindex.llamaindex.clue_generator import ClueGenerator, ClueQuery
from gemkr_llamaindex.llamaindex.index import GeMKRIndex, GeMKRIndexStruct
from gemkr_llamaindex.llamaindex.retriever import GeMKRRetriever

__all__ = ["ClueGenerator", "ClueQuery", "GeMKRIndex", "GeMKRIndexStruct", "GeMKRRetriever"]
