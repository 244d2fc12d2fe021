"""Distributed evaluation over Ray Data: one retriever's queries scored by a pool of Ray workers.

``eval-vqa retrieval ... --ray`` (``run_retrieval(..., ray=RayOptions())``; ``e2e`` alike) sends the
queries a run still has to do for one retriever to Ray as a ``ray.data.from_items`` dataset of plain
records (qid, question, gold ids, answers, image path, tags; images travel as paths, so every worker
must be able to read them: one machine, or a shared file system). ``map_batches`` runs
:class:`BatchScorer` on an actor pool of ``workers`` actors. Each actor builds the scorer once,
``build_retriever(name, docs, options)`` (and, end to end, the answerer) with docs and options fetched
from the object store, where the driver put them once; GeMKR's KB is opened by mmap in every worker
(built once under the cache when it is missing). The actors score their batches with the very scorer
the local loop uses (:class:`eval_vqa.runner.RetrievalScorer`, :class:`~eval_vqa.runner.E2EScorer`)
and return each record as a JSON string. The driver streams them (``iter_rows``) and appends each to
the run's ``per_query.jsonl`` as it arrives, so an interrupted run resumes like a local one: finished
(label, qid) pairs are not sent again. Retrieved ids and metrics are those of a single-process run;
latencies are per query, measured on the worker, and ``build_s`` is the worker's own build time.

Ray is an optional extra: ``pip install "gemkr-llamaindex[ray]"``. Retrievers and answerers registered
in the driver (plug-ins, tests) are shipped to the workers with the job, so they need not be importable
there; :mod:`eval_vqa` itself must be installed on every node.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

RAY_EXTRA = 'pip install "gemkr-llamaindex[ray]"'

#: Record fields that are sent to the workers as JSON text (free-form dicts make poor Arrow columns).
_JSON_FIELDS = ("meta",)


class RayUnavailableError(RuntimeError):
    """Ray (with Ray Data) is not installed."""


def import_ray():
    """The ``ray`` module with ``ray.data`` loaded; :class:`RayUnavailableError` naming the extra if missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailableError(f"distributed evaluation needs Ray Data: {RAY_EXTRA} ({exc})") from exc
    return ray


@dataclass
class RayOptions:
    """Where and how wide to run.

    ``address``: a running cluster to connect to (``ray.init(address=...)``, e.g. ``auto`` or
    ``ray://head:10001``); None starts a local one, unless Ray is already initialised in this process
    (then that cluster is used). ``workers``: actors in the ``map_batches`` pool (each builds its own
    retriever); ``batch_size``: queries per batch; ``num_cpus``/``num_gpus``: reserved per actor.
    """

    address: str | None = None
    workers: int = 2
    batch_size: int = 4
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_size < 1:
            raise ValueError(f"Ray workers and batch size must be >= 1, got {self.workers} and {self.batch_size}")


def connect(options: RayOptions) -> bool:
    """Connect to ``options.address`` or start a local cluster, unless Ray is up already.

    Returns True only when this call started a local cluster (the caller's to shut down); a cluster
    reached by address, or one initialised before, is left running.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if options.address:
        ray.init(address=options.address)
        return False
    ray.init()
    return True


@contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """``with ray_session(opts) as ray:`` Ray for the block; shut down after only if the block started it."""
    started = connect(options)
    ray = import_ray()
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _registry_entries(kwargs: dict) -> dict:
    """The driver's registry entries a scorer built from ``kwargs`` looks up (by name, on the worker)."""
    from .registry import ANSWERERS, RETRIEVERS

    out: dict[str, dict] = {"retrievers": {}, "answerers": {}}
    if kwargs.get("name") in RETRIEVERS:
        out["retrievers"][kwargs["name"]] = RETRIEVERS[kwargs["name"]]
    if kwargs.get("answerer_name") in ANSWERERS:
        out["answerers"][kwargs["answerer_name"]] = ANSWERERS[kwargs["answerer_name"]]
    return out


def _to_row(item: dict) -> dict:
    return {k: json.dumps(v, ensure_ascii=False) if k in _JSON_FIELDS else v for k, v in item.items()}


def _from_row(row: dict) -> dict:
    item = {k: json.loads(v) if k in _JSON_FIELDS else v for k, v in row.items()}
    for key in ("gold_doc_ids", "answers"):  # an all-empty Arrow list column may come back as None
        if item.get(key) is None:
            item[key] = []
    return item


class BatchScorer:
    """The ``map_batches`` callable class: ``__init__`` builds the scorer once per worker, ``__call__`` scores a
    batch of query records (an Arrow table) and returns their ``per_query.jsonl`` records as JSON strings."""

    def __init__(self, scorer_cls: type, shared: Any, registry: dict) -> None:
        ray = import_ray()
        from .registry import ANSWERERS, RETRIEVERS

        RETRIEVERS.update(registry["retrievers"])  # the driver's entries: plug-ins need not be importable here
        ANSWERERS.update(registry["answerers"])
        kwargs = ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared
        self.scorer = scorer_cls(**kwargs)

    def __call__(self, batch):
        import pyarrow as pa

        records = [self.scorer(_from_row(row)) for row in batch.to_pylist()]
        return pa.table({"record": pa.array([json.dumps(r, ensure_ascii=False) for r in records], type=pa.string())})


def score_on_ray(scorer_cls: type, kwargs: dict, items: list[dict], options: RayOptions) -> Iterator[dict]:
    """Score ``items`` on Ray Data workers that each build ``scorer_cls(**kwargs)``; yields each record as it
    arrives (in completion order, not query order). Connects first if Ray is not up (see :func:`connect`)."""
    if not items:
        return
    ray = import_ray()
    connect(options)
    shared = ray.put(kwargs)  # docs and options: once in the object store, fetched by every worker
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # the runner shows its own bar, record by record
    try:
        ds = ray.data.from_items([_to_row(item) for item in items],
                                 override_num_blocks=math.ceil(len(items) / options.batch_size))
        ds = ds.map_batches(
            BatchScorer, batch_size=options.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            fn_constructor_kwargs={"scorer_cls": scorer_cls, "shared": shared, "registry": _registry_entries(kwargs)},
            num_cpus=options.num_cpus, num_gpus=options.num_gpus or None, udf_modifying_row_count=False,
        )
        for row in ds.iter_rows():
            yield json.loads(row["record"])
    finally:
        ctx.enable_progress_bars = bars


__all__ = ["RAY_EXTRA", "BatchScorer", "RayOptions", "RayUnavailableError", "connect", "import_ray", "ray_session",
           "score_on_ray"]
