"""Moved: the multimodal hybrid lives in the library, :mod:`gemkr_llamaindex.llamaindex.fusion`
(also ``llama_index.retrievers.gemkr``). This name stays for code that imported it from here."""

from gemkr_llamaindex.llamaindex.fusion import MultimodalFusionRetriever, merge_by_node_id

__all__ = ["MultimodalFusionRetriever", "merge_by_node_id"]
