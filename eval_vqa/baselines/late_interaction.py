"""Late-interaction (ColBERT / FLMR-style) retriever: a small-scale reimplementation in PreFLMR's spirit.

score(q, d) = sum over query tokens i of max over passage tokens j of <E_q[i], E_d[j]>  (MaxSim).

* Passage tokens: contextual token embeddings of all-MiniLM-L6-v2 (packaged), padding dropped, at most
  ``max_doc_tokens`` per passage.
* Query tokens: the question's (plus tags') token embeddings from the same encoder, plus, when a CLIP
  model is given and the query has an image, the CLIP vision tower's pooled and patch tokens mapped into
  the text space by a linear mapping network (PreFLMR maps [CLS] with an MLP and feeds patches through
  cross-attention; we keep one linear map for both).
* All tokens go through a fixed, seeded random projection to ``dim`` dimensions (Johnson-Lindenstrauss:
  dot products are roughly preserved, memory drops 3x) and are L2-normalised.

What differs from PreFLMR: no trained ColBERT projection, no cross-attention block, no instruction
tokens, and a mapping network that is random unless ``mapping_path`` points at trained weights
(a torch file with ``weight`` [text_dim, vision_width] and ``bias``). Without trained mapping and CLIP
weights the image tokens add noise; with ``clip_model=None`` the retriever is text-only late interaction.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from llama_index.core.schema import QueryBundle

from .clip import _open_query_image, load_open_clip
from .common import (
    ScoringRetriever,
    cache_key,
    cached_arrays,
    default_cache_dir,
    query_text,
    split_docs,
)
from .dense import default_text_model_path, load_sentence_model


class LateInteractionRetriever(ScoringRetriever):
    """Token-level MaxSim between query tokens (text + mapped image patches) and passage tokens."""

    def __init__(
        self,
        docs: Iterable[tuple[str, str]],
        text_model: str | None = None,
        clip_model: str | None = None,
        clip_pretrained: str | None = None,
        mapping_path: str | Path | None = None,
        similarity_top_k: int = 10,
        dim: int | None = 128,
        max_doc_tokens: int = 128,
        use_tags: bool = True,
        seed: int = 0,
        batch_size: int = 64,
        block_tokens: int = 262_144,
        cache_dir: str | Path | None | bool = None,
        device: str = "cpu",
        show_progress: bool = False,
        **kwargs,
    ) -> None:
        doc_ids, texts = split_docs(docs)
        super().__init__(doc_ids, texts, similarity_top_k, **kwargs)
        import torch

        self._torch = torch
        self.device = device
        self.use_tags = use_tags
        self.block_tokens = block_tokens
        self.text_model_path = text_model or default_text_model_path()
        self.encoder = load_sentence_model(self.text_model_path, device)
        self.encoder.max_seq_length = max_doc_tokens
        get_dim = getattr(self.encoder, "get_embedding_dimension", None) or self.encoder.get_sentence_embedding_dimension
        text_dim = get_dim()
        rng = np.random.default_rng(seed)
        self.projection = (
            None if dim is None else (rng.standard_normal((text_dim, dim)) / np.sqrt(dim)).astype(np.float32)
        )

        self.clip = None
        if clip_model is not None:
            self.clip, self.clip_preprocess, _ = load_open_clip(clip_model, clip_pretrained, device)
            self.clip.visual.output_tokens = True
            width = self._vision_width()
            self.mapping = torch.nn.Linear(width, text_dim)
            if mapping_path is not None:
                self.mapping.load_state_dict(torch.load(mapping_path, map_location="cpu", weights_only=True))
            else:
                warnings.warn("late interaction: the image mapping network is random (no mapping_path); "
                              "image tokens add noise", stacklevel=2)
                torch.manual_seed(seed)
                self.mapping.reset_parameters()
            self.mapping.eval()

        cache_file = None
        if cache_dir is not False:
            root = Path(cache_dir) if cache_dir else default_cache_dir("late_interaction")
            key = cache_key(doc_ids, texts, Path(self.text_model_path).name, str(dim), str(max_doc_tokens),
                                     str(seed))
            cache_file = root / f"{key}.npz"

        def compute() -> dict[str, np.ndarray]:
            tokens = self.encoder.encode(texts, batch_size=batch_size, output_value="token_embeddings",
                                         show_progress_bar=show_progress, convert_to_numpy=False)
            lengths = np.array([t.shape[0] for t in tokens], dtype=np.int64)
            flat = self._finish(np.concatenate([t.float().cpu().numpy() for t in tokens]))
            return {"tokens": flat.astype(np.float16), "lengths": lengths}

        arrays = cached_arrays(cache_file, compute)
        self.doc_tokens = arrays["tokens"]
        self.doc_offsets = np.concatenate([[0], np.cumsum(arrays["lengths"])[:-1]]).astype(np.int64)

    def _vision_width(self) -> int:
        with self._torch.no_grad():
            size = self.clip.visual.image_size
            size = size if isinstance(size, (tuple, list)) else (size, size)
            _, tokens = self.clip.visual(self._torch.zeros(1, 3, *size))
        return int(tokens.shape[-1])

    def _finish(self, emb: np.ndarray) -> np.ndarray:
        """Project (if ``dim``) and L2-normalise token rows."""
        if self.projection is not None:
            emb = emb @ self.projection
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def query_tokens(self, query_bundle: QueryBundle) -> np.ndarray:
        """Query token matrix [n_tokens, dim]: text tokens, then mapped image tokens when available."""
        text = self.encoder.encode([query_text(query_bundle, self.use_tags)], output_value="token_embeddings",
                                   show_progress_bar=False, convert_to_numpy=False)[0]
        parts = [text.float().cpu().numpy()]
        if self.clip is not None and query_bundle.image_path:
            image = _open_query_image(query_bundle, type(self).__name__)
            with self._torch.no_grad():
                pooled, patches = self.clip.visual(self.clip_preprocess(image).unsqueeze(0).to(self.device))
                # pooled may already be projected to the joint space; the mapping takes the width-sized tokens
                vis = patches[0]
                if pooled.shape[-1] == vis.shape[-1]:
                    vis = self._torch.cat([pooled, vis], dim=0)
                parts.append(self.mapping(vis.float().cpu()).numpy())
        return self._finish(np.concatenate(parts)).astype(np.float32)

    def score(self, query_bundle: QueryBundle) -> np.ndarray:
        q = self.query_tokens(query_bundle)
        n_docs = self.num_docs
        scores = np.zeros(n_docs, dtype=np.float64)
        starts = self.doc_offsets
        ends = np.append(starts[1:], self.doc_tokens.shape[0])
        doc = 0
        while doc < n_docs:  # blocks of whole documents, ~block_tokens tokens each
            last = int(np.searchsorted(starts, starts[doc] + self.block_tokens, side="right"))
            last = max(last, doc + 1)
            lo, hi = int(starts[doc]), int(ends[last - 1])
            sim = q @ self.doc_tokens[lo:hi].astype(np.float32).T  # [n_q, tokens in block]
            maxsim = np.maximum.reduceat(sim, starts[doc:last] - lo, axis=1)  # [n_q, docs in block]
            scores[doc:last] = maxsim.sum(axis=0)
            doc = last
        return scores
