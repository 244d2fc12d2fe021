"""GeMKR checkpoints: the trainable weights (safetensors) plus a config naming the frozen base models.

A checkpoint folder holds ``gemkr_config.json`` (format version, the ``GeMKRConfig``, fingerprints of
the frozen base weights, the trainable parameter count, a SHA-256 of each weight file),
``trainable.safetensors``, ``decoding.json`` (the decoding settings it is meant to be used with) and,
when its detector's weights travel with it, ``detector.safetensors``. Nothing is pickled and nothing in
it is code. Loading checks the weight files against their checksums, refuses non-finite weights, and
rebuilds the model from the config, refusing other base weights than the ones it was trained on.

A checkpoint may name a detector only as data (:func:`resolve_detector`): a YOLO architecture YAML
(parsed, never evaluated), a YOLO ``.safetensors`` export or a transformers folder with safetensors
weights, inside its own folder (or an architecture that ships with ultralytics, by name). A pickle-based
detector (``.pt``) is loaded only when the caller passes it: ``from_pretrained(dir, detector=PATH,
trust_detector_pickle=True)``. ``docs/security.md`` lists what is accepted and refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from gemkr_llamaindex.decoding.config import DecodingConfig

CONFIG_FILE = "gemkr_config.json"
WEIGHTS_FILE = "trainable.safetensors"
DECODING_FILE = "decoding.json"
DETECTOR_FILE = "detector.safetensors"
#: 3: weight checksums (``files``) and a ``decoding.json`` in every checkpoint. Versions 1 and 2 (before
#: both) still load: without checksums, and with a warning and the library's decoding defaults when their
#: ``decoding.json`` is missing.
FORMAT_VERSION = 3
CHECKSUMS_SINCE = 3


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(state: dict[str, torch.Tensor], meta: dict[str, Any], directory: str | Path,
         decoding: DecodingConfig | None = None, files: Mapping[str, bytes] | None = None) -> Path:
    """Write the weights, ``decoding`` (default: the library's defaults, written out so the checkpoint keeps
    them), any extra weight ``files`` and ``meta`` with the checksums into ``directory``, atomically (a temp
    sibling, then one rename)."""
    from safetensors.torch import save_file

    from gemkr_llamaindex.decoding.config import DecodingConfig

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "gemkr", "version": str(FORMAT_VERSION)})
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        write_decoding(tmp, decoding or DecodingConfig())
        sums = {name: file_sha256(tmp / name) for name in (WEIGHTS_FILE, *(files or {}))}
        (tmp / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta, "files": sums}, indent=2))
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


def read_config(directory: str | Path, verify: bool = True) -> dict[str, Any]:
    """The checkpoint's metadata; clear errors for a folder that is not a (complete, intact) checkpoint.

    ``verify``: check each weight file against the SHA-256 recorded at save time (format 3 on).
    """
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a GeMKR checkpoint (save_pretrained writes it)")
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory / WEIGHTS_FILE} is missing: the checkpoint is incomplete")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}: expected an object with a 'config' mapping; the checkpoint is corrupt")
    version = meta.get("format_version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version!r} is not one this library reads (1 to {FORMAT_VERSION}); "
                         "a newer one needs a newer gemkr-llamaindex")
    fps = meta.get("base_fingerprints")
    if not (isinstance(fps, dict) and isinstance(fps.get("llm"), str) and all(isinstance(v, str) for v in fps.values())):
        raise ValueError(f"{path}: 'base_fingerprints' (the frozen base models' identity) is missing or malformed; "
                         "the checkpoint is corrupt")
    sums = meta.get("files")
    if version >= CHECKSUMS_SINCE and not (isinstance(sums, dict) and WEIGHTS_FILE in sums):
        raise ValueError(f"{path}: 'files' (the weight checksums) is missing; the checkpoint is corrupt")
    if verify:
        for name, want in (sums or {}).items():
            if Path(name).name != name or not (directory / name).is_file():
                raise ValueError(f"{path}: it lists the weight file {name!r}, which is not in {directory}")
            if file_sha256(directory / name) != want:
                raise ValueError(f"{directory / name}: its SHA-256 differs from the one recorded at save time; the "
                                 "file is corrupt (or was changed): restore it or save the checkpoint again")
    return meta


def write_decoding(directory: str | Path, config: DecodingConfig) -> Path:
    """Write ``decoding.json`` (the settings a checkpoint is decoded with) atomically: temp file, then rename."""
    path = Path(directory) / DECODING_FILE
    tmp = path.with_name(f".{DECODING_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(config.to_dict(), indent=2))
    os.replace(tmp, path)
    return path


def read_decoding(directory: str | Path) -> DecodingConfig | None:
    """The checkpoint's decoding settings (``decoding.json``), checked and naming the file on a bad value.

    Format 3 on always has one (missing: the checkpoint is incomplete); an older checkpoint without one
    decodes with the library's defaults (None), with a warning.
    """
    from gemkr_llamaindex.decoding.config import DecodingConfig

    directory = Path(directory)
    path = directory / DECODING_FILE
    if not path.is_file():
        version = read_config(directory, verify=False)["format_version"]
        if version >= CHECKSUMS_SINCE:
            raise FileNotFoundError(f"{path} is missing: the checkpoint is incomplete (save_pretrained writes it)")
        warnings.warn(f"{directory} has no {DECODING_FILE} (written by an older version): it decodes with the "
                      "library's default settings, not necessarily the ones it was trained for", stacklevel=3)
        return None
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(options, dict):
            raise ValueError("expected an object of DecodingConfig fields")
        return DecodingConfig.from_options(options)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and bad values alike
        raise ValueError(f"{path}: {exc}") from None


def resolve_detector(config: dict[str, Any], directory: Path, explicit: bool) -> dict[str, Any]:
    """The config with the detector it names resolved inside ``directory``, or ValueError for one a
    checkpoint may not name: a path outside its folder, or a format that can run code when loaded.

    The path is normalised and its suffix compared without case first (``evil.PT``, ``evil.pt/.``).
    ``explicit``: the caller passed its own detector, which replaces the checkpoint's.
    """
    from gemkr_llamaindex.model.detector import HF_PREFIX
    from gemkr_llamaindex.ultralytics_env import yolo_weights_format

    det = config.get("detector")
    if explicit or det is None:
        return config
    where = directory / CONFIG_FILE
    if not isinstance(det, str) or not det.strip():
        raise ValueError(f"{where}: 'detector' must be a path or null, got {det!r}")
    hf = det.startswith(HF_PREFIX)
    spec = os.path.normpath(det[len(HF_PREFIX):] if hf else det)
    kind = yolo_weights_format(spec)
    if not hf and kind == "architecture" and len(Path(spec).parts) == 1 and not (directory / spec).exists():
        return config  # an architecture that ships with ultralytics, by name: read as data (no weights)
    path = (directory / spec).resolve()
    if Path(spec).is_absolute() or directory.resolve() not in path.parents:
        raise ValueError(f"{where} names the detector {det!r} outside its folder; pass a detector you trust "
                         "yourself: from_pretrained(dir, detector=PATH)")
    if not (hf or path.is_dir() or kind != "pickle"):
        raise ValueError(
            f"{where} names the detector {det!r}, a pickle-based file: loading it can run any code it holds, so a "
            f"checkpoint may not carry one (detector weights travel as {DETECTOR_FILE}, which save_pretrained "
            "writes). If you trust the file, pass it yourself: from_pretrained(dir, detector=PATH, "
            "trust_detector_pickle=True)"
        )
    return {**config, "detector": (HF_PREFIX if hf else "") + str(path)}


def load_trainable(model: nn.Module, path: str | Path, expected_fingerprints: dict[str, str] | None,
                   actual_fingerprints: dict[str, str], describe: str) -> None:
    """Copy saved trainable weights into ``model`` after checking base models, keys, shapes and values."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    expected_fingerprints = expected_fingerprints or {}
    for part, fp in actual_fingerprints.items():
        if part not in expected_fingerprints:
            raise ValueError(f"{path}: the checkpoint records no fingerprint of its base {part}, so it cannot be "
                             "checked against this model's; it is corrupt or was saved for another configuration")
        if expected_fingerprints[part] != fp:
            raise ValueError(f"base {part} differs from the one this checkpoint was trained on ({describe}); "
                             "load it with the same base weights")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc}); the checkpoint is corrupt") from None
    own = dict(model.named_parameters())
    expected = {n for n, p in own.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: trainable weights do not match this model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was it saved with another prefix_length / LoRA / vision config?"
        )
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(own[name].shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: {name} holds NaN or infinite values; the checkpoint is corrupt (a diverged "
                             "run saves such weights): use an earlier checkpoint")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor.to(own[name].dtype))
