"""``GeMKRConfig``: names the frozen base models and sizes the trainable parts (saved with every checkpoint)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gemkr_llamaindex.model.template import DEFAULT_TASK


@dataclass
class GeMKRConfig:
    """Names the frozen base models and sizes the trainable parts.

    * ``llm``: a Hugging Face causal LM folder or name, a ``.gguf`` file, or ``"smollm2"`` (packaged).
    * ``clip_model``: an open_clip architecture, or ``None`` for a model **without a vision tower**: the
      query reaches the LLM as question + visual tags only (the paper's caption-only ablation), and only
      LoRA trains. ``clip_pretrained`` is an open_clip tag or a local checkpoint; ``None`` gives a random
      tower seeded by ``clip_seed`` (architectures not shipped with open_clip go in ``clip_model_cfg``).
    * ``detector``: a YOLO ``.pt`` path or architecture ``.yaml`` (or any spec the detector factory
      accepts); ``None`` means no object features.
    """

    llm: str = "smollm2"
    clip_model: str | None = "ViT-L-14"
    clip_pretrained: str | None = "openai"
    clip_model_cfg: dict[str, Any] | None = None
    clip_seed: int = 0
    detector: str | None = None
    detector_conf: float = 0.25
    prefix_length: int = 10
    max_objects: int = 5
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    task_description: str = DEFAULT_TASK
    seed: int = 0

    def __post_init__(self) -> None:
        if self.clip_model is None and self.detector is not None:
            raise ValueError("a detector needs the vision tower (its crops are encoded by CLIP): set clip_model")

    @property
    def has_vision(self) -> bool:
        return self.clip_model is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeMKRConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GeMKRConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)
