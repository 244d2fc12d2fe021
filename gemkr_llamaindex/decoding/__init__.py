"""Knowledge-guided constrained decoding: the engine-independent search and its backends."""

from gemkr_llamaindex.decoding.beam_search import ConstrainedBeamSearch, LogProbBackend
from gemkr_llamaindex.decoding.config import DecodingConfig
from gemkr_llamaindex.decoding.hf_backend import HFBackend, Prompts
from gemkr_llamaindex.decoding.results import Clue, DocumentHit, QueryResult
from gemkr_llamaindex.decoding.vllm_backend import TopLogprobsBackend, VLLMBackend, export_lora_adapter

__all__ = [
    "ConstrainedBeamSearch",
    "LogProbBackend",
    "DecodingConfig",
    "HFBackend",
    "Prompts",
    "Clue",
    "DocumentHit",
    "QueryResult",
    "TopLogprobsBackend",
    "VLLMBackend",
    "export_lora_adapter",
]
