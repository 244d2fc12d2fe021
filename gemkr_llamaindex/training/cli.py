"""``gemkr train --config FILE.yaml``: instruction-tune GeMKR (see ``training.trainer.TrainConfig``).

Example YAML (paths relative to the file)::

    train_file: train.jsonl          # {"image", "question", "positive_doc_ids"} per line
    kb_dir: kb/                      # built with `gemkr kb build` using the LLM's tokenizer
    output_dir: runs/gemkr
    model: {llm: smollm2, clip_model: ViT-L-14, clip_pretrained: /models/vit-l-14.pt, detector: yolov8n.yaml}
    max_steps: 1000
    batch_size: 12
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="instruction-tune a GeMKR model from a YAML config")
    parser.add_argument("--config", required=True, help="YAML file with TrainConfig keys")
    parser.add_argument("--max-steps", type=int, default=None, help="override max_steps from the config")
    parser.add_argument("--device", default=None, help="override device (auto, cpu, cuda, cuda:1)")
    parser.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even if the run's saved settings differ from the config's (lr, batch size, seed ...)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gemkr_llamaindex.training.trainer import TrainConfig, train

    config = TrainConfig.from_yaml(args.config)
    if args.max_steps is not None:
        config.max_steps = args.max_steps
    if args.device is not None:
        config.device = args.device
    if args.no_resume:
        config.resume = False
    out = train(config, allow_config_change=args.allow_config_change)
    print(f"saved {out}")
    return 0
