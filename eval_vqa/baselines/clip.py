"""CLIP image-to-text baseline: the query image's CLIP embedding against CLIP text embeddings of passages.

Any open_clip architecture by name, with ``pretrained`` = an open_clip tag (needs the hub, so only
where weights are cached) or a local checkpoint path. No CLIP weights ship in any package: with
``pretrained=None`` the model is randomly initialised and its rankings are meaningless (tests use a
tiny random model only to check the plumbing). Passages longer than the context (77 tokens) are
truncated by the CLIP tokenizer.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from llama_index.core.schema import QueryBundle

from gemkr_llamaindex.model.vision import import_open_clip

from .common import ScoringRetriever, cache_key, cached_arrays, default_cache_dir, split_docs

TINY_CLIP = "gemkr-tiny-clip"
_TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> str:
    """Register a tiny open_clip architecture (2+2 layers, 32-d) for offline tests; returns its name."""
    open_clip = import_open_clip()  # an ImportError naming the [vision] extra when it is missing

    if TINY_CLIP not in open_clip.list_models():
        folder = default_cache_dir("clip_configs")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{TINY_CLIP}.json").write_text(json.dumps(_TINY_CLIP_CFG))
        open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    return TINY_CLIP


def load_open_clip(model_name: str, pretrained: str | None = None, device: str = "cpu"):
    """``(model, preprocess, tokenizer)`` for an open_clip model; warns when the weights are random."""
    open_clip = import_open_clip()  # an ImportError naming the [vision] extra when it is missing

    if model_name == TINY_CLIP:
        register_tiny_clip()
    if pretrained is None:
        warnings.warn(f"open_clip {model_name!r} has random weights (pretrained=None): its scores are meaningless",
                      stacklevel=3)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


def _open_query_image(query_bundle: QueryBundle, who: str):
    """The query picture as RGB, decoded by the package's one image path (its size and mode checks included)."""
    from gemkr_llamaindex.images import load_image

    path = query_bundle.image_path
    if not path:
        raise ValueError(f"{who} needs QueryBundle.image_path (the query image)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{who}: query image not found: {path}")
    return load_image(path).image


class CLIPImageTextRetriever(ScoringRetriever):
    """Cosine similarity of CLIP(image) with CLIP(passage text).

    ``question_weight`` > 0 adds the CLIP text embedding of the question to the image embedding
    (before normalising), a common image+text query variant; 0 is pure image-to-text.
    """

    def __init__(
        self,
        docs: Iterable[tuple[str, str]],
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        similarity_top_k: int = 10,
        question_weight: float = 0.0,
        batch_size: int = 64,
        cache_dir: str | Path | None | bool = None,
        device: str = "cpu",
        **kwargs,
    ) -> None:
        doc_ids, texts = split_docs(docs)
        super().__init__(doc_ids, texts, similarity_top_k, **kwargs)
        import torch

        self._torch = torch
        self.device = device
        self.question_weight = question_weight
        self.model, self.preprocess, self.tokenizer = load_open_clip(model_name, pretrained, device)
        cache_file = None
        if cache_dir is not False and pretrained is not None:  # random weights change per run: never cache
            root = Path(cache_dir) if cache_dir else default_cache_dir("clip")
            cache_file = root / f"{cache_key(doc_ids, texts, model_name, str(pretrained))}.npz"

        def compute() -> dict[str, np.ndarray]:
            chunks = [self._encode_text(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
            return {"emb": np.concatenate(chunks)}

        self.doc_embeddings = cached_arrays(cache_file, compute)["emb"]

    def _encode_text(self, texts: list[str]) -> np.ndarray:
        with self._torch.no_grad():
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True)
        return emb.float().cpu().numpy()

    def score(self, query_bundle: QueryBundle) -> np.ndarray:
        image = _open_query_image(query_bundle, type(self).__name__)
        with self._torch.no_grad():
            q = self.model.encode_image(self.preprocess(image).unsqueeze(0).to(self.device), normalize=True)[0]
            if self.question_weight:
                q = q + self.question_weight * self.model.encode_text(
                    self.tokenizer([query_bundle.query_str]).to(self.device), normalize=True)[0]
                q = q / q.norm()
        return self.doc_embeddings @ q.float().cpu().numpy()
