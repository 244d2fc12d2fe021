"""``GeMKRConfig``: names the frozen base models and sizes the trainable parts (saved with every checkpoint)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gemkr_llamaindex.assets import DEFAULT_LLM
from gemkr_llamaindex.config_fields import check_fields
from gemkr_llamaindex.model.template import DEFAULT_TASK


@dataclass
class GeMKRConfig:
    """Names the frozen base models and sizes the trainable parts.

    * ``llm``: a local Hugging Face causal LM folder, a ``.gguf`` file, or ``"smollm2"`` (packaged).
    * ``clip_model``: an open_clip architecture (the paper's is ``"ViT-L-14"``), or ``None`` (the default)
      for a model **without a vision tower**: the query reaches the LLM as question + visual tags only (the
      paper's caption-only ablation, and the shipped checkpoint), and only LoRA trains.
      ``clip_pretrained`` is a local checkpoint file; ``None`` gives a random tower seeded by ``clip_seed``
      (architectures not shipped with open_clip go in ``clip_model_cfg``).
    * ``detector``: a YOLO architecture ``.yaml``, a YOLO ``.safetensors`` export or a transformers
      object-detection folder (any spec the detector factory accepts; a pickle-based ``.pt`` needs the
      model's ``trust_detector_pickle=True``); ``None`` means no object features.

    Nothing here names a download: hub ids and open_clip tags (``"openai"``, ``hf-hub:...``) are refused
    when the model is built unless it is built with ``allow_download=True``.
    """

    llm: str = DEFAULT_LLM
    clip_model: str | None = None
    clip_pretrained: str | None = None
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
        check_fields(self)  # a string lora_target_modules was once split into characters
        if self.clip_model is None and self.detector is not None:
            raise ValueError("a detector needs the vision tower (its crops are encoded by CLIP): set clip_model")
        for key in ("prefix_length", "lora_r", "lora_alpha"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_objects < 0 or not 0 <= self.detector_conf <= 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("need max_objects >= 0, 0 <= detector_conf <= 1 and 0 <= lora_dropout < 1")
        if not self.lora_target_modules:
            raise ValueError("lora_target_modules must name at least one module (e.g. ['q_proj', 'v_proj'])")

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
