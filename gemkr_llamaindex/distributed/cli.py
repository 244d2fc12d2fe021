"""``gemkr ray build``: a KB whose shards are indexed by Ray tasks (the options of ``gemkr kb build``)."""

from __future__ import annotations

import argparse
from typing import Any

from gemkr_llamaindex.kb_cli import add_build_arguments, build_inputs


def register(subparsers: Any) -> None:
    r = subparsers.add_parser("ray", help="scale-out on Ray (extra [ray]): build a KB's shards in parallel")
    sub = r.add_subparsers(dest="ray_command", required=True)
    b = sub.add_parser("build", help="like 'gemkr kb build', one Ray task per shard (set --shard-tokens)")
    add_build_arguments(b)
    b.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. ray://head:10001 or 'auto'); default: a local cluster")
    b.add_argument("--max-in-flight", type=int, default=None,
                   help="shards submitted but not finished (default: the cluster's CPUs)")
    b.add_argument("--task-cpus", type=float, default=1.0, help="CPUs reserved per shard task")
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from gemkr_llamaindex.distributed.remote_kb import import_ray
    from gemkr_llamaindex.distributed.shard_build import build_kb_on_ray

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.address, log_to_driver=False)
    try:
        docs, tokenizer, options = build_inputs(args)
        kb = build_kb_on_ray(docs, tokenizer, args.out, max_in_flight=args.max_in_flight,
                             task_options={"num_cpus": args.task_cpus}, **options)
    finally:
        if started:
            ray.shutdown()  # ours to end; joined via --address, this only disconnects
    print(f"built {kb.path} on Ray: {kb.num_docs} documents, {kb.num_tokens} tokens, {kb.num_shards} shard(s) "
          f"in {kb.manifest['build']['seconds']:.1f} s")
    return 0
