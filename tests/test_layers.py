"""The house's import rules, read from the source: no import runs up the layers.

kb (the FM-index) imports nothing of ours; decoding imports only the KB; the model, the generation room
and the LlamaIndex classes are stacked in that order; the library never imports ``reader`` or ``eval_vqa``
(they build on it), with one deliberate exception: ``GeMKRIndex.as_query_engine`` returns the reader's
query engine, imported when called.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gemkr_llamaindex"
ALLOWED_UPWARD = {("llamaindex/index.py", "reader")}  # as_query_engine's default engine (see the docstring)

# Modules shared by every room, themselves importing only kb or each other.
SHARED = {"assets", "config_fields", "transformers_compat", "_version", "ultralytics_env", "images", "query"}
# room -> the rooms and shared modules of ours it may import (a room not listed may import any of ours)
ALLOWED = {
    "kb": {"kb"},
    "decoding": {"kb", "decoding", "assets", "config_fields", "transformers_compat", "_version"},
    "model": {"kb", "decoding", "model"} | SHARED,
    "generation": {"kb", "decoding", "model", "generation"} | SHARED,
    "tags": {"tags"} | SHARED,
    "training": {"kb", "decoding", "model", "training"} | SHARED,
    "distributed": {"kb", "distributed", "kb_cli"} | SHARED,
}


def imports_of(path: Path) -> set[str]:
    """Every module name a file imports (at any depth: lazy imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gemkr_llamaindex":  # from gemkr_llamaindex import assets
                out.update(f"gemkr_llamaindex.{a.name}" for a in node.names)
            else:
                out.add(node.module)
    return out


def room_of(module: str) -> str | None:
    """``gemkr_llamaindex.kb.corpus`` -> ``kb``; ``reader.llm`` -> ``reader``; None for other packages."""
    parts = module.split(".")
    if parts[0] in ("reader", "eval_vqa"):
        return parts[0]
    if parts[0] != "gemkr_llamaindex":
        return None
    return parts[1] if len(parts) > 1 else "gemkr_llamaindex"


FILES = sorted(p for p in PACKAGE.rglob("*.py") if "checkpoints_data" not in p.parts)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_up_the_layers(path):
    rel = str(path.relative_to(PACKAGE))
    room = rel.split("/")[0] if "/" in rel else None
    for module in imports_of(path):
        target = room_of(module)
        if target is None or target == room:
            continue
        if target in ("reader", "eval_vqa"):
            assert (rel, target) in ALLOWED_UPWARD, f"{rel} imports {module}: the library never imports {target}"
            continue
        allowed = ALLOWED.get(room or "")
        assert allowed is None or target in allowed, f"{rel} ({room}) imports {module} ({target})"


def test_the_rooms_exist():
    assert {"kb", "decoding", "model", "generation", "llamaindex", "training"} <= {p.name for p in PACKAGE.iterdir()}
