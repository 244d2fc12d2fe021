"""ultralytics YOLO as a :class:`~gemkr_llamaindex.model.detectors.base.Detector` (extra ``[yolo]``, AGPL-3.0).

ultralytics is imported when a detector is built, offline and configured under the package cache, and
every call into it keeps torch's thread count; model files are read as data, and a pickle-based ``.pt``
only with ``trust_pickle=True`` (see ``gemkr_llamaindex.ultralytics_env``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemkr_llamaindex.model.detectors.base import MAX_OBJECTS, Box, as_rgb, top_boxes
from gemkr_llamaindex.ultralytics_env import load_yolo, preserve_torch_threads, yolo_safetensors

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

YOLO_SUFFIXES = (".pt", ".yaml", ".yml", ".safetensors")


class YOLODetector:
    """An ultralytics YOLO model from an architecture ``.yaml`` (random init), a ``.safetensors`` export
    (:meth:`save_safetensors`), or, with ``trust_pickle=True`` only, a local ``.pt`` file (a pickle: it can
    run code when loaded).

    ``detect`` keeps the ``max_objects`` most confident boxes above ``conf``. ``detect_batch`` sends the
    images of one size to ``predict`` together, ``batch_size`` at a time, on ``device``: ultralytics
    letterboxes a batch of mixed sizes to a square, which would make a box depend on its batch-mates, so
    images of different sizes go in separate calls and every box equals what ``detect`` gives.

    Raises:
        FileNotFoundError: ``weights`` is not a local file (or a known architecture name); nothing is ever
            downloaded.
        UntrustedModelFileError: a pickle-based file without ``trust_pickle``, or a YAML that would run code.
        ImportError: ultralytics is not installed (the message names the ``[yolo]`` extra).
    """

    def __init__(
        self, weights: str | Path, conf: float = 0.25, max_objects: int = MAX_OBJECTS, device: str = "cpu",
        *, batch_size: int = 16, trust_pickle: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.weights = str(weights)
        self.conf = conf
        self.max_objects = max_objects
        self.device = device
        self.batch_size = batch_size
        self.model = load_yolo(self.weights, trust_pickle=trust_pickle)
        self._export = yolo_safetensors(self.model)  # before any predict fuses its layers

    def safetensors_bytes(self) -> bytes:
        """The weights as they were loaded (architecture, tensors, class names) as safetensors: a format that
        carries no code, which a GeMKR checkpoint may carry and which loads without ``trust_pickle``."""
        return self._export

    def save_safetensors(self, path: str | Path) -> Path:
        """Write :meth:`safetensors_bytes` to ``path`` (atomically), e.g. once for a trusted ``.pt``."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(self._export)
        tmp.replace(path)
        return path

    def detect(self, image: Image.Image) -> list[Box]:
        """Boxes of one RGB PIL image, most confident first, at most ``max_objects``."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[Image.Image]) -> list[list[Box]]:
        """Boxes of each RGB PIL image; equal-sized images share a ``predict`` call."""
        images = [as_rgb(im) for im in images]
        out: list[list[Box]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.size), []).append(i)
        for rows in by_size.values():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                for i, result in zip(chunk, self._predict([images[i] for i in chunk])):
                    out[i] = self._boxes(result, images[i].size)
        return out

    def _predict(self, images: list[Image.Image]) -> list[Any]:
        with preserve_torch_threads():
            return self.model.predict(
                images, conf=self.conf, max_det=max(self.max_objects, 1) * 4, verbose=False, device=self.device
            )

    def _boxes(self, result: Any, size: tuple[int, int]) -> list[Box]:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return []
        return top_boxes(
            boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy(),
            max_objects=self.max_objects, width=size[0], height=size[1],
        )
