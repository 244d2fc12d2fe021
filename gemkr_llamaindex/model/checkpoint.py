"""GeMKR checkpoints: the trainable weights (safetensors) plus a config naming the frozen base models.

A checkpoint folder holds ``gemkr_config.json`` (format version, the ``GeMKRConfig``, fingerprints of
the frozen base weights, the trainable parameter count) and ``trainable.safetensors``. Nothing is
pickled. Loading rebuilds the model from the config and refuses other base weights than the ones the
checkpoint was trained on.

A ``detector`` in the config that is a ``.pt`` file is loaded by ultralytics, which unpickles it: a
checkpoint may only name a ``.pt`` inside its own folder (relative path); anything else must be passed
explicitly by the caller (``from_pretrained(dir, detector=...)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_FILE = "gemkr_config.json"
WEIGHTS_FILE = "trainable.safetensors"
FORMAT_VERSION = 2


def fingerprint(module: nn.Module) -> str:
    """Cheap identity of frozen weights: names, shapes and a few values rounded to bf16 precision.

    Rounding to bf16 makes the fingerprint of a model loaded in fp32 (CPU) and in bf16 (GPU) agree.
    """
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            continue
        flat = p.detach().flatten()
        sample = torch.cat([flat[:8], flat[-8:]]).to("cpu", torch.bfloat16).float()
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def save(state: dict[str, torch.Tensor], meta: dict[str, Any], directory: str | Path) -> Path:
    """Write the weights and ``meta`` into ``directory`` atomically (temp sibling, then one rename)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "gemkr", "version": str(FORMAT_VERSION)})
        (tmp / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2))
        swap_in(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def swap_in(tmp: Path, directory: Path) -> None:
    """Put the finished folder ``tmp`` at ``directory``: the old one is renamed aside first and removed
    only once the new one is in place, so an interrupted swap never leaves a half-written checkpoint."""
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        directory.rename(old)
    tmp.rename(directory)
    if old is not None:
        shutil.rmtree(old)


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata; clear errors for a folder that is not a (complete) checkpoint."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a GeMKR checkpoint (save_pretrained writes it)")
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory / WEIGHTS_FILE} is missing: the checkpoint is incomplete")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg}); the checkpoint is corrupt") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}: expected an object with a 'config' mapping; the checkpoint is corrupt")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version!r} is not one this library reads (<= {FORMAT_VERSION}); "
                         "upgrade gemkr-llamaindex")
    return meta


def resolve_detector(config: dict[str, Any], directory: Path, explicit: bool) -> dict[str, Any]:
    """The config with a checkpoint-relative ``.pt`` detector resolved; refuse one outside the folder."""
    det = config.get("detector")
    if explicit or not det or not str(det).endswith(".pt"):
        return config
    path = Path(det)
    path = (directory / path).resolve() if not path.is_absolute() else path.resolve()
    if directory.resolve() not in path.parents:
        raise ValueError(
            f"the checkpoint names the detector {det!r} outside its folder {directory}; ultralytics unpickles .pt "
            "files (it can run code), so pass it explicitly if you trust it: from_pretrained(dir, detector=PATH)"
        )
    return {**config, "detector": str(path)}


def load_trainable(model: nn.Module, path: str | Path, expected_fingerprints: dict[str, str] | None,
                   actual_fingerprints: dict[str, str], describe: str) -> None:
    """Copy saved trainable weights into ``model`` after checking base models, keys and shapes."""
    from safetensors.torch import load_file

    for part, fp in (expected_fingerprints or {}).items():
        if actual_fingerprints.get(part) != fp:
            raise ValueError(f"base {part} differs from the one this checkpoint was trained on ({describe}); "
                             "load it with the same base weights")
    state = load_file(str(path))
    own = dict(model.named_parameters())
    expected = {n for n, p in own.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: trainable weights do not match this model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was it saved with another prefix_length / LoRA / vision config?"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            if own[name].shape != tensor.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(own[name].shape)}")
            own[name].copy_(tensor.to(own[name].dtype))
