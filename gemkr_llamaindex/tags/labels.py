"""ImageNet-1k class names as plain words, read from installed packages (no copy is vendored here).

Label files in the wild come as ``n02123159 tiger_cat``, ``n02123159: tiger_cat`` or WordNet synonym
lists (``tench, Tinca tinca``); :func:`clean_label` turns each into the words a text retriever or an
LLM can use (``tiger cat``, ``tench``).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

IMAGENET_NUM_CLASSES = 1000

_SYNSET = re.compile(r"^\s*n\d{8}\s*[:,\t ]\s*")
_SPACES = re.compile(r"\s+")


def clean_label(raw: str) -> str:
    """Plain words of one class name: synset id dropped, first synonym kept, underscores to spaces."""
    text = _SYNSET.sub("", raw.strip())
    text = text.split(",", 1)[0].replace("_", " ")
    return _SPACES.sub(" ", text).strip()


def _ultralytics_imagenet_yaml() -> Path | None:
    spec = importlib.util.find_spec("ultralytics")  # locate only: importing ultralytics writes settings
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "datasets" / "ImageNet.yaml"
    return path if path.is_file() else None


def _from_ultralytics() -> list[str] | None:
    path = _ultralytics_imagenet_yaml()
    if path is None:
        return None
    import yaml

    synsets = yaml.safe_load(path.read_text(encoding="utf-8")).get("map") or {}
    # Class index i of every ImageNet-1k model is the i-th synset id in sorted order.
    if len(synsets) != IMAGENET_NUM_CLASSES:
        return None
    return [clean_label(str(synsets[key])) for key in sorted(synsets)]


def _from_torchvision() -> list[str] | None:
    try:
        from torchvision.models import EfficientNet_B0_Weights
    except ImportError:
        return None
    names = list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
    return [clean_label(n) for n in names] if len(names) == IMAGENET_NUM_CLASSES else None


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order, cleaned to plain words.

    Read from the WordNet names in ultralytics' ``ImageNet.yaml`` (e.g. ``Egyptian cat``), else from
    torchvision's weight metadata (the ``[tags]`` extra installs torchvision).
    """
    names = _from_ultralytics() or _from_torchvision()
    if not names:
        raise FileNotFoundError(
            "no ImageNet-1k class names found: neither ultralytics' cfg/datasets/ImageNet.yaml nor "
            "torchvision is installed; pass labels=... (a list or a file with one class name a line)"
        )
    return tuple(names)


def read_label_file(path: str | Path) -> list[str]:
    """One class name a line (any of the accepted raw formats), blank lines ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [clean_label(line) for line in lines if line.strip()]
