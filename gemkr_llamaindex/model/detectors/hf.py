"""A transformers object-detection model as a :class:`~gemkr_llamaindex.model.detectors.base.Detector`.

Any folder written by ``save_pretrained`` of an ``AutoModelForObjectDetection`` model (RT-DETR, DETR,
Deformable DETR, YOLOS, ...) together with its image processor (``preprocessor_config.json``). It needs
only the core dependencies (transformers, torch; Apache-2.0/BSD), so it is the detector to ship where
ultralytics' AGPL-3.0 cannot go. Weights come from the local folder only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemkr_llamaindex.model.detectors.base import MAX_OBJECTS, Box, as_rgb, top_boxes

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

PROCESSOR_FILE = "preprocessor_config.json"


def _object_detection_types() -> frozenset[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    return frozenset(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)


def read_detection_config(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``config.json`` if it describes an object-detection model, else None."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures") or []
    if config.get("model_type") in _object_detection_types() or any(
        str(a).endswith("ForObjectDetection") for a in architectures
    ):
        return config
    return None


def is_object_detection_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a transformers object-detection model (by its ``config.json``)."""
    return Path(folder).is_dir() and read_detection_config(folder) is not None


class HFDetector:
    """``AutoModelForObjectDetection`` + ``AutoImageProcessor`` from a local folder.

    ``detect_batch`` preprocesses ``batch_size`` images at a time, runs them through the model in one
    forward on ``device`` and maps the boxes back to each image's own pixel size with the processor's
    ``post_process_object_detection(threshold=conf)``. Processors that resize to a fixed size (RT-DETR)
    make batched boxes equal to one-by-one boxes up to float rounding; processors that pad a batch to
    its largest image (DETR) mask the padding, which changes scores only slightly.

    Raises:
        FileNotFoundError: ``path`` is not a folder, or lacks ``config.json`` / ``preprocessor_config.json``.
        ValueError: the folder's config is not an object-detection model.
    """

    def __init__(
        self, path: str | Path, conf: float = 0.25, max_objects: int = MAX_OBJECTS, device: str = "cpu",
        *, batch_size: int = 8,
    ) -> None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"detector folder {folder} not found; give a local folder saved with a transformers "
                "object-detection model's save_pretrained (config.json, weights, preprocessor_config.json)"
            )
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json: it is not a transformers model folder")
        if read_detection_config(folder) is None:
            raise ValueError(
                f"{folder}/config.json is not an object-detection model; known types: "
                f"{', '.join(sorted(_object_detection_types()))}"
            )
        if not (folder / PROCESSOR_FILE).is_file():
            raise FileNotFoundError(
                f"{folder} has no {PROCESSOR_FILE}; save the model's image processor into the same folder "
                "(processor.save_pretrained(folder))"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.path = folder
        self.conf = conf
        self.max_objects = max_objects
        self.device = device
        self.batch_size = batch_size
        self.processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        # safetensors only: a pickled .bin could run code; remote code is never trusted (transformers' default)
        self.model = AutoModelForObjectDetection.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        self.model.to(device).eval()

    @property
    def class_names(self) -> dict[int, str]:
        """``{label: name}`` from the model config's ``id2label``."""
        return {int(k): str(v) for k, v in (self.model.config.id2label or {}).items()}

    def detect(self, image: Image.Image) -> list[Box]:
        """Boxes of one RGB PIL image, most confident first, at most ``max_objects``."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[Image.Image]) -> list[list[Box]]:
        """Boxes of each RGB PIL image, ``batch_size`` images per forward."""
        images = [as_rgb(im) for im in images]
        out: list[list[Box]] = []
        for start in range(0, len(images), self.batch_size):
            out.extend(self._detect_chunk(images[start : start + self.batch_size]))
        return out

    def _detect_chunk(self, images: list[Image.Image]) -> list[list[Box]]:
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        sizes = [(im.height, im.width) for im in images]
        results = self.processor.post_process_object_detection(outputs, threshold=self.conf, target_sizes=sizes)
        return [
            top_boxes(
                r["boxes"].float().cpu().numpy(), r["scores"].float().cpu().numpy(), r["labels"].cpu().numpy(),
                max_objects=self.max_objects, width=im.width, height=im.height,
            )
            for r, im in zip(results, images)
        ]
