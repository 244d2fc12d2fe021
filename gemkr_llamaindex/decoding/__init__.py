"""Knowledge-guided constrained decoding: the engine-independent search, its KB interface and its backends."""

from gemkr_llamaindex.decoding.beam_search import ConstrainedBeamSearch, LogProbBackend, SearchStats
from gemkr_llamaindex.decoding.config import DecodingConfig
from gemkr_llamaindex.decoding.constraint import END, ConstraintIndex
from gemkr_llamaindex.decoding.hf_backend import HFBackend, Prompts
from gemkr_llamaindex.decoding.results import Clue, DocumentHit, QueryResult
from gemkr_llamaindex.decoding.vllm_backend import TopLogprobsBackend, VLLMBackend, VLLMServer, export_lora_adapter

__all__ = [
    "END",
    "Clue",
    "ConstrainedBeamSearch",
    "ConstraintIndex",
    "DecodingConfig",
    "DocumentHit",
    "HFBackend",
    "LogProbBackend",
    "Prompts",
    "QueryResult",
    "SearchStats",
    "TopLogprobsBackend",
    "VLLMBackend",
    "VLLMServer",
    "export_lora_adapter",
]
