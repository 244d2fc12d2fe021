"""Dataset loaders: each returns a :class:`VQADataset` (queries + streamed ``(doc_id, text)`` corpus).

``load_dataset(name, data_dir, **options)`` dispatches on the names in :data:`DATASETS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import DatasetFormatError, ImageLoadError, VQADataset, VQAQuery
from .gemkr_json import load_gemkr_json
from .jsonl import load_jsonl, load_mini, load_mini_text
from .m2kr import load_m2kr
from .okvqa import load_okvqa_gs112k, load_okvqa_wk21m
from .remuq import TSVImageStore, load_remuq

DATASETS: dict[str, Callable[..., VQADataset]] = {
    "mini": load_mini,
    "mini-text": load_mini_text,
    "okvqa-gs112k": load_okvqa_gs112k,
    "okvqa-wk21m": load_okvqa_wk21m,
    "gemkr-json": load_gemkr_json,
    "remuq": load_remuq,
    "m2kr": load_m2kr,
    "jsonl": load_jsonl,
}


PACKAGED = ("mini", "mini-text")
"""Datasets that ship with the package (no ``--data-dir``)."""


def load_dataset(name: str, data_dir: str | Path | None = None, **options) -> VQADataset:
    """Load a dataset by name; ``options`` are the loader's keyword arguments (file names, task...)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is None and name not in PACKAGED:
        raise ValueError(f"dataset {name!r} needs --data-dir")
    return DATASETS[name](data_dir, **options)


__all__ = [
    "DATASETS", "PACKAGED", "DatasetFormatError", "ImageLoadError", "TSVImageStore", "VQADataset", "VQAQuery",
    "load_dataset", "load_gemkr_json", "load_jsonl", "load_m2kr", "load_mini", "load_mini_text", "load_okvqa_gs112k",
    "load_okvqa_wk21m", "load_remuq",
]
