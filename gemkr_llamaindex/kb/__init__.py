"""FM-index knowledge base over LLM-tokenized documents (GetNext, ValidDistinct, LookupDoc)."""

from gemkr_llamaindex.kb.corpus import corpus_fingerprint, hash_fields, iter_documents, read_corpus_file, read_jsonl_corpus
from gemkr_llamaindex.kb.errors import (
    ChecksumError,
    CorpusError,
    IndexFormatError,
    KBError,
    TokenizerMismatchError,
)
from gemkr_llamaindex.kb.knowledge_base import ANCHORS, END, Children, KnowledgeBase, NgramLookup, StepResult
from gemkr_llamaindex.kb.tokenization import Normalization

__all__ = [
    "KnowledgeBase",
    "Children",
    "StepResult",
    "NgramLookup",
    "END",
    "ANCHORS",
    "Normalization",
    "hash_fields",
    "corpus_fingerprint",
    "iter_documents",
    "read_corpus_file",
    "read_jsonl_corpus",
    "KBError",
    "CorpusError",
    "IndexFormatError",
    "ChecksumError",
    "TokenizerMismatchError",
]
