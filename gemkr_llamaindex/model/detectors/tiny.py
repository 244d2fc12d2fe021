"""A tiny random transformers RT-DETR for tests, examples and CPU checks (nothing is downloaded).

RT-DETR carries its own ResNet backbone config, so unlike DETR (a timm backbone by default) it builds
from transformers alone. Random weights: boxes and scores are meaningless but exercise every code path.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_rtdetr(out_dir: str | Path, num_labels: int = 3, seed: int = 0, image_size: int = 64) -> Path:
    """Save a ~120k-parameter RT-DETR (1 encoder + 1 decoder layer, 20 queries) and a processor that resizes
    to ``image_size`` px into ``out_dir``; a folder :func:`~gemkr_llamaindex.model.detector.make_detector`
    accepts. Returns ``out_dir`` (left as is if it already holds a model)."""
    import torch
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "preprocessor_config.json").is_file():
        return out_dir
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic",
                                  out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(
        backbone_config=backbone, d_model=32, encoder_hidden_dim=32, encoder_in_channels=[16, 24, 32], feat_strides=[8, 16, 32],
        encoder_layers=1, encoder_ffn_dim=32, encoder_attention_heads=2, hidden_expansion=0.5,
        decoder_layers=1, decoder_ffn_dim=32, decoder_attention_heads=2, decoder_in_channels=[32, 32, 32],
        num_feature_levels=3, decoder_n_points=2, num_queries=20, num_denoising=0, num_labels=num_labels,
        initializer_range=0.1,  # the default 0.02 makes every score the prior 0.25; 0.1 gives distinct scores, sized boxes
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RTDetrForObjectDetection(config)
    model.save_pretrained(out_dir)
    RTDetrImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out_dir)
    return out_dir
