"""Using ultralytics inside a library: offline, configured under our cache, polite to torch, and never
running code that a file brings.

Both the GeMKR YOLO detector (``model.detectors.yolo``) and the YOLO tagger (``tags.yolo``) go through
here. ultralytics is AGPL-3.0 and lives in the optional ``[yolo]`` extra: nothing in the core imports it,
and :func:`import_ultralytics` says which extra to install when it is missing.

What a YOLO model file may do (:func:`load_yolo`): ultralytics loads ``.pt`` files with pickle, which can
run any code, and ``eval()``s the ``activation`` of a model YAML (and calls whatever its layer names
name). So an architecture YAML is parsed here as data, checked (:func:`check_architecture`: a literal
``nn.<Activation>(...)``, layers that are ``torch.nn.Module`` classes) and handed to ultralytics as a
fresh copy; trained weights travel as safetensors (:func:`yolo_safetensors`: tensors plus the checked
architecture and the class names as JSON); a ``.pt`` (or any other format) loads only when the caller
says it trusts the file, and then through ultralytics' own restricted loader (``ULTRALYTICS_SAFE_LOAD``:
``torch.load(weights_only=True)`` with an allow-list of its classes), switched on before its import.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

YOLO_EXTRA_HINT = 'pip install "gemkr-llamaindex[yolo]"'

# One process-wide lock for every call into ultralytics: its predictors are not thread-safe, and the
# thread-count save/restore below must never interleave between threads.
_ULTRALYTICS_LOCK = threading.RLock()
_env_ready = False


def offline_ultralytics_env() -> None:
    """Point ultralytics away from the network and from ``~/.config`` before it is first imported: no
    online checks or auto-installs, settings under ``<cache>/ultralytics``, quiet unless the user said
    otherwise. Done once per process (the first time a YOLO model is built), never again at call time."""
    global _env_ready
    with _ULTRALYTICS_LOCK:
        if _env_ready:
            return
        from gemkr_llamaindex import assets

        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "0"
        os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"  # weights_only .pt loading, no eval() of model YAMLs
        os.environ.setdefault("YOLO_VERBOSE", "False")
        if "YOLO_CONFIG_DIR" not in os.environ:
            config_dir = assets.cache_dir() / "ultralytics"
            config_dir.mkdir(parents=True, exist_ok=True)
            os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
        _env_ready = True


def import_ultralytics() -> Any:
    """The ``ultralytics`` module, imported offline (:func:`offline_ultralytics_env` first).

    Raises:
        ImportError: ultralytics is not installed; the message names the ``[yolo]`` extra (AGPL-3.0).
    """
    offline_ultralytics_env()
    try:
        import ultralytics
    except ImportError as exc:
        raise ImportError(
            f"YOLO detection needs ultralytics, which is not installed ({exc}); install the yolo extra: "
            f"{YOLO_EXTRA_HINT} (ultralytics is AGPL-3.0; for a permissively licensed detector give a "
            "transformers object-detection folder, see gemkr_llamaindex.model.detector.make_detector)"
        ) from exc
    return ultralytics


@contextlib.contextmanager
def preserve_torch_threads() -> Iterator[None]:
    """Undo ultralytics' global ``torch.set_num_threads(min(8, cpus - 1))``, which its CPU device selection
    does on every predict and train: left alone it halves the speed of everything else in the process on a
    2-core machine (GeMKR training included) and caps a large machine at 8 threads.

    Holds the process-wide ultralytics lock for the whole call, so concurrent callers (retrievers in
    worker threads) run one ultralytics call at a time and each restores the count it found."""
    import torch

    with _ULTRALYTICS_LOCK:
        threads = torch.get_num_threads()
        try:
            yield
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------
# Model files: data only
# ----------------------------------------------------------------------------------------------------

#: YOLO files that carry no code: an architecture (YAML, read as data) or our safetensors export.
ARCHITECTURE_SUFFIXES = (".yaml", ".yml")
SAFETENSORS_SUFFIX = ".safetensors"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*$")


class UntrustedModelFileError(ValueError):
    """A model file in a format that can run code when loaded (pickle), or an architecture that would."""


def yolo_weights_format(spec: str | Path) -> str:
    """``"architecture"`` (a ``.yaml``/``.yml``), ``"safetensors"``, or ``"pickle"``: anything else, since
    ultralytics reads ``.pt`` (and a bare name, to which it adds ``.pt``) with pickle. The suffix is read
    after normalising the path and its case (``x.PT``, ``x.pt/.`` are pickles)."""
    suffix = Path(os.path.normpath(str(spec))).suffix.lower()
    if suffix in ARCHITECTURE_SUFFIXES:
        return "architecture"
    return "safetensors" if suffix == SAFETENSORS_SUFFIX else "pickle"


def require_trusted(spec: str | Path, trust_pickle: bool) -> None:
    """Raise :class:`UntrustedModelFileError` for a pickle-based YOLO file the caller did not say it trusts."""
    if yolo_weights_format(spec) == "pickle" and not trust_pickle:
        raise UntrustedModelFileError(
            f"YOLO weights {str(spec)!r} are a pickle-based file: loading one can run any code it holds. Pass "
            "trust_pickle=True (trust_detector_pickle=True for a GeMKR model) only for a file you trust, or load it "
            "once that way and save it as safetensors (YOLODetector.save_safetensors), which needs no trust"
        )


def _nn_module_class(name: str, where: str, source: str) -> None:
    """Raise unless ``name`` (``nn.X``, ``torch.nn.X`` or an ultralytics layer) is a ``torch.nn.Module`` class."""
    import torch

    import_ultralytics()
    from ultralytics.nn import tasks

    owner, attr = (torch.nn, name.split(".", 1)[1]) if name.startswith("nn.") else (tasks, name)
    obj = getattr(owner, attr, None) if _SAFE_NAME.match(attr) and "." not in attr else None
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise UntrustedModelFileError(f"{source}: {where} names {name!r}, which is not a torch.nn.Module layer; "
                                      "a YOLO architecture may only name layers")


def _check_activation(spec: Any, source: str) -> None:
    """Accept only ``nn.<Module>(literal, ..., key=literal)`` (``torch.nn.`` also): what ultralytics would
    ``eval()``. Raise for anything else, without evaluating it."""
    try:
        call = ast.parse(str(spec).strip(), mode="eval").body
        func = call.func if isinstance(call, ast.Call) else None
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        ok = isinstance(func, ast.Name) and [func.id, *reversed(parts)][:-1] in (["nn"], ["torch", "nn"])
        if ok:
            for node in [*call.args, *(k.value for k in call.keywords)]:
                ast.literal_eval(node)
            ok = all(k.arg is not None for k in call.keywords) and not any(isinstance(a, ast.Starred) for a in call.args)
    except (SyntaxError, ValueError, TypeError):
        ok = False
    if not ok:
        raise UntrustedModelFileError(
            f"{source}: activation {str(spec)!r} is not a plain nn.<Activation>(literal arguments) call; "
            "ultralytics would eval() it, so it is refused"
        )
    _nn_module_class("nn." + parts[0], "activation", source)


def check_architecture(arch: Any, source: str) -> dict[str, Any]:
    """``arch`` (a parsed YOLO model YAML) if ultralytics can build it without running code from it.

    Raises:
        UntrustedModelFileError: an ``activation`` that is not a literal ``nn.<Module>(...)`` call, or a
            layer that is not a ``torch.nn.Module`` class (ultralytics calls whatever a layer names).
        ValueError: not a YOLO architecture (no ``backbone``/``head`` lists of ``[from, n, module, args]``).
    """
    if not isinstance(arch, dict) or not isinstance(arch.get("backbone"), list) or not isinstance(arch.get("head"), list):
        raise ValueError(f"{source}: not a YOLO architecture (expected a mapping with 'backbone' and 'head' lists)")
    if arch.get("activation") is not None:
        _check_activation(arch["activation"], source)
    for part in ("backbone", "head"):
        for i, row in enumerate(arch[part]):
            if not (isinstance(row, list) and len(row) == 4 and isinstance(row[2], str) and isinstance(row[3], list)):
                raise ValueError(f"{source}: {part}[{i}] is not [from, repeats, module, args]")
            _nn_module_class(row[2], f"{part}[{i}]", source)
    return arch


def _architecture_file(spec: str | Path) -> Path:
    """The YAML file of ``spec``: a path, or the name of an architecture that ships with ultralytics."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if len(path.parts) == 1:
        from ultralytics.utils.checks import check_yaml

        unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", path.name)  # yolov8n.yaml -> yolov8.yaml (scale n)
        with contextlib.suppress(FileNotFoundError):
            found = check_yaml(path.name, hard=False) or check_yaml(unified, hard=False)
            if found:
                return Path(found)
    raise FileNotFoundError(f"YOLO architecture {str(spec)!r} not found: give a .yaml file or the name of one that "
                            "ships with ultralytics (yolov8n.yaml, yolo11s.yaml, ...)")


def _build(arch: dict[str, Any], name: str) -> Any:
    """``ultralytics.YOLO`` built from a checked architecture. It gets a fresh YAML written from the checked
    data (never the original file), named like the original: ultralytics reads the scale from the name."""
    ultralytics = import_ultralytics()
    name = name if _SAFE_NAME.match(name) and name.lower().endswith(ARCHITECTURE_SUFFIXES) else "detector.yaml"
    data = {k: v for k, v in arch.items() if k not in ("yaml_file", "scale")}
    with tempfile.TemporaryDirectory(prefix="gemkr-yolo-") as tmp:
        import yaml

        path = Path(tmp) / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        with preserve_torch_threads():
            return ultralytics.YOLO(str(path))


def load_yolo(spec: str | Path, *, trust_pickle: bool = False) -> Any:
    """An ``ultralytics.YOLO`` from a file that cannot run code: an architecture YAML (random weights) or a
    :func:`yolo_safetensors` file; other formats (``.pt``) only with ``trust_pickle=True``.

    Raises:
        UntrustedModelFileError: a pickle-based file without ``trust_pickle``, or an architecture that would
            run code (see :func:`check_architecture`).
        FileNotFoundError: the file does not exist (nothing is ever downloaded).
        ValueError: a safetensors file that is not a YOLO export, or whose tensors do not fit its architecture.
    """
    import_ultralytics()  # configured (offline, safe loading on) before any part of it is imported
    kind = yolo_weights_format(spec)
    if kind == "architecture":
        import yaml

        path = _architecture_file(spec)
        try:
            arch = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a readable YAML file ({exc})") from None
        return _build(check_architecture(arch, str(path)), Path(str(spec)).name)
    path = Path(os.path.normpath(str(spec))).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"YOLO weights {spec} not found; give a local file (no download happens) or an "
                                "architecture yaml such as 'yolov8n.yaml' for a random-init detector")
    if kind == "safetensors":
        return _load_safetensors(path)
    require_trusted(spec, trust_pickle)
    ultralytics = import_ultralytics()
    with preserve_torch_threads():
        return ultralytics.YOLO(str(path))


def yolo_safetensors(yolo: Any) -> bytes:
    """A YOLO model as safetensors bytes: its tensors, with the architecture and class names as JSON metadata
    (what :func:`load_yolo` reads back). Call it before the first ``predict``, which fuses layers in place."""
    from safetensors.torch import save

    model = yolo.model
    if getattr(model, "is_fused", lambda: False)():
        raise ValueError("this YOLO model has fused layers (it has predicted); export a freshly loaded one")
    arch = check_architecture(dict(model.yaml), "the model's architecture")
    names = {int(k): str(v) for k, v in (getattr(model, "names", None) or {}).items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "gemkr-yolo", "architecture": json.dumps(arch), "names": json.dumps(names),
            "name": Path(str(arch.get("yaml_file") or "detector.yaml")).name}
    return save(tensors, metadata=meta)


def _load_safetensors(path: Path) -> Any:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != "gemkr-yolo":
        raise ValueError(f"{path}: not a YOLO export (its metadata lacks format=gemkr-yolo; see yolo_safetensors)")
    try:
        arch, names = json.loads(meta["architecture"]), json.loads(meta.get("names") or "{}")
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable YOLO metadata ({exc})") from None
    yolo = _build(check_architecture(arch, str(path)), str(meta.get("name", "detector.yaml")))
    try:
        yolo.model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the tensors do not fit the architecture they name ({exc})") from None
    if names:
        yolo.model.names = {int(k): v for k, v in names.items()}
    return yolo
