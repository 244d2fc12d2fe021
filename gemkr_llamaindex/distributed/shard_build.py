"""Building one KB's shards in parallel as Ray tasks.

The driver reads and tokenizes the corpus, writes the document stores and plans the shards exactly as a
local build does (same ``shard_tokens``, same boundaries); each full shard's tokens go to the object
store and one Ray task indexes it (one shard per worker), writing the shard file under a temporary name
and renaming it when complete. The manifest (sizes, checksums) is assembled and the KB published only
after every task has finished; if any fails, or the driver is interrupted, nothing is published and the
old KB (if any) stays. The result is the same files as the local build of the same corpus: it opens with
the ordinary ``KnowledgeBase.open`` and answers identically.

On a multi-node cluster the output folder must be on a filesystem every worker can write (the tasks write
into the build's temporary folder next to ``out_dir``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from gemkr_llamaindex.distributed.remote_kb import import_ray
from gemkr_llamaindex.kb.build import TokenBuffer
from gemkr_llamaindex.kb.knowledge_base import KnowledgeBase


def build_shard_file(tokens: np.ndarray, offsets: np.ndarray, path: str, params: dict[str, int]) -> None:
    """Index one shard and write it to ``path`` atomically (temporary name, then rename); runs on a worker."""
    from gemkr_llamaindex.kb import _fmindex

    builder = _fmindex.ShardBuilder(tokens, offsets)
    del tokens
    part = f"{path}.part-{uuid.uuid4().hex[:8]}"
    try:
        builder.write(part, **params)
        os.replace(part, path)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise


class RayShardWriter:
    """A :class:`~gemkr_llamaindex.kb.build.ShardWriter` that indexes each shard in a Ray task.

    ``max_in_flight`` bounds the shards submitted but not finished (each holds its tokens in the object
    store: about 4 bytes per token; a worker's build peak is about 10.5 bytes per token of its shard).
    ``task_options`` go to ``.options()`` of each task (default ``num_cpus=1``; e.g. ``memory=...``).
    """

    def __init__(self, max_in_flight: int | None = None, task_options: dict[str, Any] | None = None) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            ray.init()
        self._ray = ray
        self._task = ray.remote(build_shard_file).options(**{"num_cpus": 1, **(task_options or {})})
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_in_flight = max(1, max_in_flight or cpus)
        self._pending: list[Any] = []

    def submit(self, buffer: TokenBuffer, offsets: np.ndarray, path: Path, params: dict[str, int]) -> None:
        while len(self._pending) >= self.max_in_flight:
            done, self._pending = self._ray.wait(self._pending, num_returns=1)
            self._ray.get(done)  # raises the task's error at once
        ref = self._ray.put(buffer.tokens())  # copied into the object store; ours is freed now
        buffer.clear()
        self._pending.append(self._task.remote(ref, offsets, str(path), dict(params)))

    def finish(self) -> None:
        pending, self._pending = self._pending, []
        self._ray.get(pending)

    def abort(self) -> None:
        pending, self._pending = self._pending, []
        for ref in pending:
            self._ray.cancel(ref, force=True)
        if pending:
            self._ray.wait(pending, num_returns=len(pending), timeout=30)


def build_kb_on_ray(docs: Any, tokenizer: Any, out_dir: str | Path, *, shard_tokens: int | None = None,
                    max_in_flight: int | None = None, task_options: dict[str, Any] | None = None,
                    **build_options: Any) -> KnowledgeBase:
    """``KnowledgeBase.build`` with the shards indexed by Ray tasks in parallel (see the module docstring).

    ``shard_tokens`` (or ``max_ram_gb``) sets the shard size, hence the parallelism: a corpus of N tokens
    gives ceil(N / shard_tokens) tasks. Other options are those of :meth:`KnowledgeBase.build`.
    """
    if isinstance(tokenizer, str):  # a name of the package's own models ("smollm2") or a folder
        from gemkr_llamaindex.assets import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    writer = RayShardWriter(max_in_flight, task_options)
    return KnowledgeBase.build(docs, tokenizer, out_dir, shard_tokens=shard_tokens, shard_writer=writer,
                               **build_options)
