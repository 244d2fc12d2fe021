"""Using ultralytics inside a library: offline, configured under our cache, and polite to torch.

Both the GeMKR YOLO detector (``model.detectors.yolo``) and the YOLO tagger (``tags.yolo``) go through
here. ultralytics is AGPL-3.0 and lives in the optional ``[yolo]`` extra: nothing in the core imports it,
and :func:`import_ultralytics` says which extra to install when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
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
