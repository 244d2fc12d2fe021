"""``eval-vqa``: retrieval and end-to-end evaluation from the command line.

    eval-vqa retrieval --dataset mini --retrievers bm25,dense --k 1 5 10 --out runs/mini
    eval-vqa retrieval --dataset okvqa-gs112k --data-dir data/okvqa --retrievers bm25,dense,clip,li \\
        --clip-model ViT-L-14 --clip-pretrained /path/to/clip.bin --out runs/gs112k
    eval-vqa e2e --dataset mini --retrievers bm25,gemkr,gemkr+bm25,gold --answerer reader --reader-k 3 \\
        --out runs/mini-e2e
    eval-vqa retrieval --dataset mini --retrievers bm25,gemkr --out runs/mini-ray --ray --ray-workers 4
    eval-vqa retrieval ... --ray-address auto      # on a node of a running Ray cluster

With ``--ray`` each retriever's queries are scored on Ray Data workers (:mod:`eval_vqa.distributed`;
``pip install "gemkr-llamaindex[ray]"``): same ids and metrics, same resumable run folder.

Registered retrievers and answerers live in :mod:`eval_vqa.registry` (``gold`` is an oracle: it reads
the gold documents, an upper bound); a module named with ``--plugin`` is imported first so that it
can register more.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

DEFAULT_KS = (1, 5, 10)


def _key_values(pairs: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"eval-vqa: {flag} expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    from .loaders import DATASETS

    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset format/name")
    p.add_argument("--data-dir", help="folder with the dataset files (not needed for 'mini', 'mini-text')")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="loader argument, e.g. queries=val.json, corpus=psgs.tsv, task=OKVQA (repeatable)")
    p.add_argument("--retrievers", default="bm25,dense", help="comma-separated registered retriever names")
    p.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS), help="cut-offs K (default 1 5 10)")
    p.add_argument("--out", required=True, help="run folder (resumable: finished queries are skipped)")
    p.add_argument("--relevance", choices=("substring", "word"), default="substring",
                   help="pseudo-relevance variant shown in the table (JSON has both)")
    p.add_argument("--limit", type=int, help="first N queries only")
    p.add_argument("--max-docs", type=int, help="corpus subset: all gold docs + a seeded sample up to N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tags", help="visual tag backends for text retrievers, e.g. classifier,ocr (default: none)")
    p.add_argument("--text-model", help="sentence-transformers model path (default: packaged MiniLM)")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture for 'clip'")
    p.add_argument("--clip-pretrained", help="open_clip pretrained tag or local checkpoint (none: random!)")
    p.add_argument("--li-clip-model", help="open_clip architecture for image tokens in 'li' (default: text only)")
    p.add_argument("--li-mapping", help="trained vision->text mapping weights for 'li' (torch file)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 is fastest on a busy small CPU)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra option passed to retriever/answerer factories (repeatable)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may call register_retriever/register_answerer)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g = p.add_argument_group("distributed (Ray Data; pip install \"gemkr-llamaindex[ray]\")")
    g.add_argument("--ray", action="store_true", help="score the queries on Ray workers (a local cluster unless --ray-address)")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="connect to this Ray cluster (ray.init(address=ADDR): auto, ray://head:10001, ...); implies --ray")
    g.add_argument("--ray-workers", type=int, default=2, metavar="N",
                   help="Ray actors per retriever, each building its own retriever (default 2)")
    g.add_argument("--ray-batch-size", type=int, default=4, metavar="N", help="queries per Ray batch (default 4)")


def _add_commands(sub) -> None:
    r = sub.add_parser("retrieval", help="retrieval metrics (PRP/PRR@K, gold P/R/Hit@K, MRR@K) per retriever")
    _add_common(r)
    e = sub.add_parser("e2e", help="retrieve, answer with an answerer, score VQA accuracy")
    _add_common(e)
    e.add_argument("--answerer", default="top-title", help="registered answerer name (reader, top-title, ...)")
    e.add_argument("--reader-k", type=int, default=5, help="passages given to the answerer")
    e.add_argument("--reader-context", choices=("passage", "clue_window", "evidence_window"),
                   help="what the reader reads of each passage: all of it (default), the sentences around "
                        "GeMKR's clues, or around its clues and strongest evidence n-grams (--option "
                        "reader_window=N sentences each side, default 1)")
    e.add_argument("--vqa-normalize", choices=("official", "always"), default="official",
                   help="VQA accuracy normalisation: the official evaluator's (only when the references "
                        "disagree; default) or always")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval-vqa", description="Evaluate multimodal knowledge retrieval and VQA.")
    _add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def register(subparsers) -> None:
    """Add ``gemkr eval retrieval|e2e`` (same options as ``eval-vqa``) to the ``gemkr`` CLI."""
    p = subparsers.add_parser("eval", help="evaluate retrievers and VQA (same as the eval-vqa command)")
    _add_commands(p.add_subparsers(dest="command", required=True))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .loaders import DatasetFormatError, load_dataset
    from .registry import ANSWERERS, RETRIEVERS
    from .runner import RunConfig, run_e2e, run_retrieval

    for module in args.plugin:
        importlib.import_module(module)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    retrievers = [r.strip() for r in args.retrievers.split(",") if r.strip()]
    unknown = [r for r in retrievers if r not in RETRIEVERS]
    if unknown:
        print(f"eval-vqa: unknown retriever(s) {unknown}; registered: {', '.join(RETRIEVERS)}", file=sys.stderr)
        return 2
    if args.command == "e2e" and args.answerer not in ANSWERERS:
        print(f"eval-vqa: unknown answerer {args.answerer!r}; registered: {', '.join(ANSWERERS)}", file=sys.stderr)
        return 2
    if any(k < 1 for k in args.k):
        print("eval-vqa: --k values must be >= 1", file=sys.stderr)
        return 2
    if args.ray_workers < 1 or args.ray_batch_size < 1:
        print("eval-vqa: --ray-workers and --ray-batch-size must be >= 1", file=sys.stderr)
        return 2
    options = {
        key: value for key, value in {
            "text_model": args.text_model, "clip_model": args.clip_model, "clip_pretrained": args.clip_pretrained,
            "li_clip_model": args.li_clip_model, "li_mapping": args.li_mapping, "device": args.device,
        }.items() if value is not None
    }
    options.update(_key_values(args.option, "--option"))
    if getattr(args, "reader_context", None):
        options["reader_context"] = args.reader_context
    config = RunConfig(
        dataset=args.dataset, retrievers=retrievers, ks=sorted(set(args.k)), relevance=args.relevance,
        limit=args.limit, max_docs=args.max_docs, seed=args.seed, tags=args.tags, options=options,
        answerer=getattr(args, "answerer", None), reader_k=getattr(args, "reader_k", None),
        vqa_normalize=getattr(args, "vqa_normalize", "official"),
    )
    from .distributed import RayOptions, RayUnavailableError, ray_session

    ray = None
    if args.ray or args.ray_address:
        ray = RayOptions(address=args.ray_address, workers=args.ray_workers, batch_size=args.ray_batch_size)
    try:
        dataset = load_dataset(args.dataset, args.data_dir, **_key_values(args.dataset_option, "--dataset-option"))
        runner = run_e2e if args.command == "e2e" else run_retrieval
        if ray is None:
            runner(dataset, config, args.out, progress=not args.no_progress)
        else:
            with ray_session(ray):  # a local cluster started here is shut down after; one reached by address is not
                runner(dataset, config, args.out, progress=not args.no_progress, ray=ray)
    except (DatasetFormatError, FileNotFoundError, ValueError, RayUnavailableError) as exc:
        print(f"eval-vqa: error: {exc}", file=sys.stderr)
        return 1
    from pathlib import Path

    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md, recall_at_k.png, latency.png, per_query.jsonl")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
