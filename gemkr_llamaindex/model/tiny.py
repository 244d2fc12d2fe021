"""Tiny, offline base models for tests, examples and CPU benchmarks (random weights, real tokenizer).

They exercise exactly the code paths of the real models: a 2-layer LLaMA with SmolLM2's tokenizer and
vocabulary, and a small open_clip ViT given by config (registered with open_clip, never downloaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_CLIP_NAME = "gemkr-tiny-vit"
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_llm(out_dir: str | Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random ``layers``-layer LLaMA using the SmolLM2 tokenizer (vocab 49152) into ``out_dir``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gemkr_llamaindex import assets

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(str(assets.smollm2_path()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_config(llm_dir: str | Path, **overrides: Any):
    """A ``GeMKRConfig`` over the tiny LLaMA at ``llm_dir`` and the tiny random ViT."""
    from gemkr_llamaindex.model.gemkr import GeMKRConfig

    base = {"llm": str(llm_dir), "clip_model": TINY_CLIP_NAME, "clip_pretrained": None, "clip_model_cfg": TINY_CLIP_CFG,
                "prefix_length": 6, "max_objects": 5}
    base.update(overrides)
    return GeMKRConfig(**base)
