"""The ``gemkr`` command: a thin argparse layer over library calls.

Each area registers its own subcommand (``register(subparsers)``) so this file only lists them.
Errors of the library are printed to stderr with a non-zero exit code, not as tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that provide ``register(subparsers)``; imported when the command line is parsed.
SUBCOMMAND_MODULES = (
    "gemkr_llamaindex.kb_cli",
    "gemkr_llamaindex.tags.cli",
    "gemkr_llamaindex.training.cli",
    "gemkr_llamaindex.llamaindex.cli",
    "gemkr_llamaindex.distributed.cli",
)  # evaluation has its own console script, eval-vqa (eval_vqa builds on this library, not the reverse)


def build_parser() -> argparse.ArgumentParser:
    from gemkr_llamaindex import __version__

    parser = argparse.ArgumentParser(prog="gemkr", description="Generative multimodal knowledge retrieval tools")
    # subcommand modules import their heavy dependencies only when run
    parser.add_argument("--version", action="version", version=f"gemkr-llamaindex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (KeyboardInterrupt, BrokenPipeError):
        return 130
    except Exception as exc:  # library errors carry messages meant for users
        from gemkr_llamaindex.kb.errors import KBError

        if isinstance(exc, (KBError, FileNotFoundError, ValueError, KeyError)):
            print(f"gemkr: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):  # a read-only or full disk, a folder we may not write: no traceback
            where = f": {exc.filename}" if exc.filename else ""
            print(f"gemkr: error: {exc.strerror or exc}{where}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
