"""Using ultralytics inside a library: offline, configured under our cache, and polite to torch.

Both the GeMKR object detector (``model.detector``) and the YOLO tagger (``tags.yolo``) go through here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def offline_ultralytics_env() -> None:
    """Point ultralytics away from the network and from ``~/.config`` before it is first imported:
    no online checks or auto-installs, settings under ``<cache>/ultralytics``, quiet by default."""
    from gemkr_llamaindex import assets

    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if "YOLO_CONFIG_DIR" not in os.environ:
        config_dir = assets.cache_dir() / "ultralytics"
        config_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)


@contextlib.contextmanager
def preserve_torch_threads() -> Iterator[None]:
    """Undo ultralytics' global ``torch.set_num_threads(min(8, cpus - 1))``, which its CPU device selection
    does on every predict and train: left alone it halves the speed of everything else in the process on a
    2-core machine (GeMKR training included) and caps a large machine at 8 threads."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
