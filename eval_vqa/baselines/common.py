"""Pieces shared by the baseline retrievers: query text with tags, top-k, caching, node building."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode


def query_text(bundle: QueryBundle, use_tags: bool) -> str:
    """The text a text retriever searches with: the question, plus ``" (tags)"`` when enabled and present."""
    tags = getattr(bundle, "tags", None) if use_tags else None
    return f"{bundle.query_str} ({tags})" if tags else bundle.query_str


def clamp_top_k(top_k: int, num_docs: int, who: str) -> int:
    """``min(top_k, num_docs)``, warning when it had to clamp (a silent short list would skew P@K)."""
    if top_k < 1:
        raise ValueError(f"{who}: top_k must be >= 1, got {top_k}")
    if top_k > num_docs:
        warnings.warn(f"{who}: top_k={top_k} exceeds the corpus size {num_docs}; returning {num_docs}", stacklevel=3)
        return num_docs
    return top_k


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties broken by lower index)."""
    k = min(k, scores.shape[0])
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    return part[np.lexsort((part, -scores[part]))]


def cache_key(doc_ids: Sequence[str], texts: Sequence[str], *extra: str) -> str:
    """A short name for cache files: the corpus's fingerprint (:func:`gemkr_llamaindex.kb.corpus_fingerprint`)
    with ``extra`` settings (model name, dimensions ...)."""
    from gemkr_llamaindex.kb import corpus_fingerprint, hash_fields

    h = hashlib.sha256()
    hash_fields(h, corpus_fingerprint(zip(doc_ids, texts))["sha256"], *extra)
    return h.hexdigest()[:20]


def cached_arrays(cache_file: Path | None, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load ``cache_file`` (.npz) if present, else compute and save it atomically; no cache if None."""
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as data:
            return {k: data[k] for k in data.files}
    arrays = compute()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache_file)
    return arrays


def default_cache_dir(kind: str) -> Path:
    from gemkr_llamaindex.assets import cache_dir

    return cache_dir() / "eval_vqa" / kind


def split_docs(docs: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """``(doc_id, text)`` pairs into two lists; rejects duplicate ids (results would be ambiguous)."""
    ids, texts, seen = [], [], set()
    for doc_id, text in docs:
        doc_id = str(doc_id)
        if doc_id in seen:
            raise ValueError(f"duplicate doc id {doc_id!r} in the corpus")
        seen.add(doc_id)
        ids.append(doc_id)
        texts.append(text)
    if not ids:
        raise ValueError("the corpus is empty")
    return ids, texts


class ScoringRetriever(BaseRetriever):
    """Base for retrievers that score every document: subclasses implement ``score(bundle) -> (N,)``.

    Returned nodes have ``id_`` = corpus doc id, the document text, and the float score.
    """

    def __init__(self, doc_ids: list[str], texts: list[str], similarity_top_k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.doc_ids = doc_ids
        self.texts = texts
        self.similarity_top_k = similarity_top_k

    @property
    def num_docs(self) -> int:
        return len(self.doc_ids)

    def score(self, query_bundle: QueryBundle) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        k = clamp_top_k(self.similarity_top_k, self.num_docs, type(self).__name__)
        scores = np.asarray(self.score(query_bundle), dtype=np.float64)
        return [
            NodeWithScore(node=TextNode(id_=self.doc_ids[i], text=self.texts[i]), score=float(scores[i]))
            for i in top_k_indices(scores, k)
        ]
