"""Detected object classes as tags, from ultralytics YOLO weights the user brings by local path.

No YOLO weights can be installed from a package registry, so this backend only produces tags when the
weights carry real class names (a trained ``.pt``). A model built from a ``.yaml`` config has the
placeholder names ``"0"``, ``"1"``, ... and yields no tags unless ``names=`` is given. ultralytics is
kept off the network: ``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=0`` are set, and its settings file goes
to a folder under our cache, before ultralytics is first imported.

ultralytics (AGPL-3.0) is not part of the ``[tags]`` extra: this backend needs ``[yolo]``, and says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemkr_llamaindex.tags.base import MissingExtraError, VisualTagger
from gemkr_llamaindex.tags.tag import Tag
from gemkr_llamaindex.ultralytics_env import import_ultralytics, load_yolo, preserve_torch_threads, yolo_weights_format

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def import_ultralytics_offline() -> Any:
    """Import ``ultralytics`` with its network features (online checks, auto-install) switched off.

    Raises:
        MissingExtraError: ultralytics is not installed (the message names the ``[yolo]`` extra).
    """
    try:
        return import_ultralytics()
    except ImportError as exc:
        raise MissingExtraError(f"the yolo tag backend cannot run: {exc}") from exc


def real_class_names(names: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
    """Class names as ``{index: name}``, or ``{}`` when they are only the placeholders "0", "1", ..."""
    if not names:
        return {}
    mapping = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
    mapping = {int(k): str(v) for k, v in mapping.items()}
    if all(v == str(k) for k, v in mapping.items()):
        return {}
    return mapping


def detections_to_tags(
    classes: Sequence[int], scores: Sequence[float], names: Mapping[int, str], *, max_tags: int
) -> list[Tag]:
    """One tag per detected class (its best confidence), best first; unnamed classes are skipped."""
    best: dict[str, float] = {}
    for cls, score in zip(classes, scores):
        name = names.get(int(cls))
        if name is None:
            continue
        text = name.replace("_", " ").strip()
        if text and float(score) > best.get(text, -1.0):
            best[text] = float(score)
    ranked = sorted(best.items(), key=lambda kv: -kv[1])[:max_tags]
    return [Tag(text, score, "object") for text, score in ranked]


class YOLOTagger(VisualTagger):
    """ultralytics YOLO detections as tags (kind ``"object"``).

    Args:
        weights: a local ``.pt`` file (trained weights, cached by content hash; ultralytics unpickles
            it, so load only files you trust), a ``.safetensors`` export (``YOLODetector.save_safetensors``)
            or a model ``.yaml`` (architecture only, read as data; results are not cached since the
            weights are random).
        model: an already built ``ultralytics.YOLO`` instead of ``weights`` (not cached).
        names: class names overriding those in the weights (list or ``{index: name}``).
        conf: minimum detection confidence.
        iou: NMS IoU threshold.
        imgsz: inference image size.
        max_tags: at most this many classes per image.
        device: torch device string.
        cache: see :class:`VisualTagger`.
    """

    name = "yolo"

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        model: Any = None,
        names: Mapping[int, str] | Sequence[str] | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        max_tags: int = 10,
        device: str = "cpu",
        cache: bool | str | Path | None = True,
    ) -> None:
        super().__init__(cache=cache)
        if (weights is None) == (model is None):
            raise ValueError("give exactly one of weights= (a local .pt or .yaml path) or model= (a YOLO)")
        self.weights = Path(weights) if weights is not None else None
        if self.weights is not None and self.weights.suffix == ".pt" and not self.weights.is_file():
            raise FileNotFoundError(
                f"YOLO weights {self.weights} not found; no weights can be downloaded here, so pass the path "
                "of a local .pt file (or a model .yaml for an untrained architecture)"
            )
        self._model = model
        self._names_override = real_class_names(names) if names is not None else None
        if names is not None and not self._names_override:
            raise ValueError("names= must hold real class names, not the placeholders '0', '1', ...")
        self.conf = conf
        self.iou = iou
        self.imgsz = imgsz
        self.max_tags = max_tags
        self.device = device
        self._key: str | None = None

    @property
    def cache_key(self) -> str | None:
        if self.weights is None or yolo_weights_format(self.weights) == "architecture":
            return None  # random or in-memory weights: their output is not a function of a file
        if self._key is None:
            digest = hashlib.sha256(self.weights.read_bytes()).hexdigest()[:16]
            key = f"yolo-{digest}-c{self.conf:g}-i{self.iou:g}-s{self.imgsz}-n{self.max_tags}"
            if self._names_override:
                joined = "\n".join(f"{k}={v}" for k, v in sorted(self._names_override.items()))
                key += "-names" + hashlib.sha256(joined.encode()).hexdigest()[:12]
            self._key = key
        return self._key

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The ``ultralytics.YOLO`` model, built on first use."""
        if self._model is None:
            import_ultralytics_offline()
            self._model = load_yolo(self.weights, trust_pickle=True)  # the caller named this file: see ``weights``
        return self._model

    @property
    def class_names(self) -> dict[int, str]:
        """The class names tags are made of; ``{}`` when the weights only carry placeholders."""
        if self._names_override is not None:
            return self._names_override
        return real_class_names(getattr(self.model, "names", None))

    def _tag_images(self, images: Sequence[Image.Image]) -> list[list[Tag]]:
        import_ultralytics_offline()
        names = self.class_names
        with preserve_torch_threads():
            results = self.model.predict(
                list(images), conf=self.conf, iou=self.iou, imgsz=self.imgsz, device=self.device, verbose=False
            )
        tags = []
        for result in results:
            boxes = result.boxes
            if boxes is None or len(boxes) == 0:
                tags.append([])
                continue
            classes = boxes.cls.int().tolist()
            scores = boxes.conf.tolist()
            tags.append(detections_to_tags(classes, scores, names, max_tags=self.max_tags))
        return tags
