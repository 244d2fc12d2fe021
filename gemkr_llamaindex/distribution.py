"""Which installed distributions claim a top-level import name, and a clear error when two do.

The gemkr-llamaindex wheel installs three top-level packages side by side: ``gemkr_llamaindex``,
``reader`` and ``eval_vqa``. PyPI has an unrelated distribution named ``reader`` (a feed reader) that
installs a top-level ``reader`` too; pip puts both in one ``site-packages`` folder, and whichever was
installed last silently overwrites the other's files. ``reader`` and ``eval_vqa`` call
:func:`check_top_level` when they are imported (about 10 ms: one read of each distribution's
``top_level.txt`` or ``RECORD``), so the clash is an error that names both distributions.
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "gemkr-llamaindex"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def claims(dist: metadata.Distribution, name: str) -> bool:
    """Whether ``dist`` installs the top-level module or package ``name`` (its ``top_level.txt``, else its
    ``RECORD``)."""
    declared = dist.read_text("top_level.txt")
    if declared is not None:
        return name in declared.split()
    record = "\n" + (dist.read_text("RECORD") or "")
    return f"\n{name}/" in record or f"\n{name}.py," in record


def owners(name: str) -> list[str]:
    """The names of the installed distributions that install top-level ``name`` (sorted, distinct)."""
    found = {dist.metadata["Name"] for dist in metadata.distributions() if dist.metadata["Name"] and claims(dist, name)}
    return sorted(found, key=_canonical)


def check_top_level(name: str) -> None:
    """Raise ``ImportError`` if a distribution other than gemkr-llamaindex installs top-level ``name``."""
    others = [d for d in owners(name) if _canonical(d) != DISTRIBUTION]
    if others:
        raise ImportError(
            f"the top-level package `{name}` is installed both by {DISTRIBUTION} and by {', '.join(others)}: they "
            f"write the same files, so one silently replaced the other. Install them in separate virtual "
            f"environments, or `pip uninstall {' '.join(others)}` and then reinstall {DISTRIBUTION}."
        )
