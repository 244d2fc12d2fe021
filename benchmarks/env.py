"""Where a benchmark ran: hardware, versions, commit and command, recorded the same way by every script.

Every script calls :func:`print_environment` once its arguments are parsed; it prints a few ``# ``
lines and returns the same facts as a dict, which scripts that write JSON store under ``"environment"``.
Nothing here imports torch: a framework's version is read from its installed metadata, and the GPU is
named only when torch is already imported (else by ``nvidia-smi``, when there is one).
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gemkr-llamaindex", "torch", "transformers", "llama-index-core", "numpy", "ray")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[str]:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - a broken CUDA set-up is recorded as no GPU, never fatal here
            return []
        return []
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _command() -> str:
    """The command as it was typed, as far as Python knows it (``python -m benchmarks.NAME ...``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["-m", spec.name] if spec is not None and spec.name else [sys.argv[0]]
    return shlex.join(["python", *head, *sys.argv[1:]])


def environment() -> dict[str, Any]:
    """Hardware, versions, commit, command and time of this run (module docstring)."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(),
        "commit": None if commit is None else commit + ("-dirty" if dirty else ""),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "versions": {p: v for p in PACKAGES if (v := _version(p)) is not None},
    }


def print_environment(file: TextIO | None = None) -> dict[str, Any]:
    """Print :func:`environment` as ``# `` lines (to stdout unless ``file``) and return it."""
    env = environment()
    out = file or sys.stdout
    gpus = ", ".join(env["gpus"]) or "none"
    mem = f"{env['memory_gib']} GiB" if env["memory_gib"] is not None else "memory unknown"
    print(f"# {env['command']}", file=out)
    print(f"# commit {env['commit'] or 'unknown'}, {env['time_utc']}", file=out)
    print(f"# {env['cpu']}, {env['cpus_usable']}/{env['cpus']} CPUs usable, {mem}, GPU: {gpus}; {env['platform']}",
          file=out)
    print("# " + ", ".join(f"{k} {v}" for k, v in {"python": env["python"], **env["versions"]}.items()), file=out)
    out.flush()
    return env
