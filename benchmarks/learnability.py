"""Learnability check: does GeMKR use the image? (issue 3)

Task: easy-vqa's 64-px images each show one shape (circle, rectangle, triangle) in one of 8 colours.
The KB holds one short document per (shape, colour) pair made of invented facts that occur in no other
document. Every query has the same text, "What do you know about this?", so only the image can tell
which document is relevant. We train the full model (frozen random-init small ViT with object-aware
prefixes and dual-flow attention, alignment, LoRA LLM) on training images, then rank all documents for
held-out images by the model's clue likelihood (sum of log-probs of each document's clues, max over the
document's clues; the constrained decoder comes in a later issue) and report R@1 / R@5 with the image
and with the image blanked (a uniform grey picture).

No detector is used here (object features are empty), so the signal measured is the prefix-tuned CLS path.

Measured so far (2-core shared CPU, --threads 1, 24 documents, chance R@1 = 1/24 = 0.042): the pipeline
trains (SmolLM2-135M, 200 steps of batch 8, lr 2e-3, --vision-lr-scale 30: loss 6.4 -> 1.0) but the image
does NOT yet lift retrieval: R@1 0.042 / R@5 0.21 with the image and with it blanked. The model learns the
documents' text, not which one the picture shows. The frozen random ViT's CLS varies little across images
(class-dependent part ~9% of its norm, though a nearest-centroid probe on it separates the 24 pairs 35% of
the time), so a pretrained CLIP tower, or far more steps (GPU), is needed to show the lift.

    PYTHONPATH=. python benchmarks/learnability.py --llm tiny --steps 300
    PYTHONPATH=. python benchmarks/learnability.py --llm smollm2 --steps 200 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QUESTION = "What do you know about this?"
SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")
_SHAPE_RE = re.compile(r"\b(" + "|".join(SHAPES) + r")\b")


def image_labels(split: str) -> dict[int, tuple[str, str]]:
    """(shape, colour) per easy-vqa image id, read off its questions and answers."""
    import easy_vqa

    questions, answers, ids = easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    shape, colour = {}, {}
    for q, a, i in zip(questions, answers, ids):
        if a in SHAPES and q.startswith("what"):
            shape[i] = a
            m = _COLOUR_RE.search(q)
            if m:
                colour[i] = m.group(1)
        elif a in COLOURS:
            colour[i] = a
            m = _SHAPE_RE.search(q)
            if m:
                shape[i] = m.group(1)
    return {i: (shape[i], colour[i]) for i in shape if i in colour}


def invented_documents(seed: int = 0) -> dict[tuple[str, str], tuple[str, str]]:
    """One document per (shape, colour): made-up names and places, so no fact is shared across docs."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mer", "tu", "vin", "sa", "dor", "pel", "qua", "rin", "zo", "bex", "fal", "gri", "hu", "ny"]

    def word() -> str:
        return "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize()

    docs, used = {}, set()
    for shape in SHAPES:
        for colour in COLOURS:
            while True:
                a, b, c = word(), word(), word()
                if not {a, b, c} & used and len({a, b, c}) == 3:
                    break
            used |= {a, b, c}
            doc_id = f"{colour} {shape}"
            text = (f"{a} {b} founded the guild of {c} in the year {rng.randint(1100, 1900)}. "
                    f"Its seal shows the {colour} {shape} above the harbour of {c}.")
            docs[(shape, colour)] = (doc_id, text)
    return docs


def build(args, work: Path):

    from gemkr_llamaindex.kb import KnowledgeBase
    from gemkr_llamaindex.model.gemkr import GeMKRConfig, GeMKRModel
    from gemkr_llamaindex.model.tiny import build_tiny_llm
    from gemkr_llamaindex.training.clues import ClueSampler
    from gemkr_llamaindex.training.data import QueryRecord, build_examples

    llm = "smollm2" if args.llm == "smollm2" else str(
        build_tiny_llm(work / "tiny_llm", hidden=args.tiny_hidden, layers=args.tiny_layers))
    docs = invented_documents(args.seed)
    kb = KnowledgeBase.build(list(docs.values()), llm if llm != "smollm2" else "smollm2", work / "kb",
                             show_progress=False, overwrite=True)
    import easy_vqa

    train_labels, test_labels = image_labels("train"), image_labels("test")
    train_paths, test_paths = easy_vqa.get_train_image_paths(), easy_vqa.get_test_image_paths()
    rng = random.Random(args.seed)

    def pick(labels, per_class):
        by = defaultdict(list)
        for i, lab in sorted(labels.items()):
            by[lab].append(i)
        return {lab: rng.sample(ids, min(per_class, len(ids))) for lab, ids in by.items() if lab in docs}

    train_sel, test_sel = pick(train_labels, args.train_per_class), pick(test_labels, args.test_per_class)
    records = [QueryRecord(train_paths[i], QUESTION, (docs[lab][0],)) for lab, ids in train_sel.items() for i in ids]
    sampler = ClueSampler(kb, m=args.clues_per_doc, length=args.clue_length, seed=args.seed)
    examples = build_examples(records, sampler)
    width = args.vit_width
    clip_cfg = {"embed_dim": width, "vision_cfg": {"image_size": 64, "layers": args.vit_layers, "width": width,
                                                   "patch_size": 8, "head_width": 64},
                "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    config = GeMKRConfig(llm=llm, clip_model=f"gemkr-learnability-vit-{width}x{args.vit_layers}",
                         clip_pretrained=None, clip_model_cfg=clip_cfg, prefix_length=8, seed=args.seed,
                         lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                         lora_target_modules=args.lora_targets.split(","),
                         **({"task_description": args.task} if args.task else {}))
    model = GeMKRModel(config, device=args.device)
    # Evaluation clues: per document, a fixed set sampled once with the same sampler settings.
    eval_sampler = ClueSampler(kb, m=args.eval_clues, length=args.clue_length, seed=args.seed + 1)
    eval_clues = {d[0]: [c.token_ids for c in eval_sampler.sample(QUESTION, d[0])] for d in docs.values()}
    tests = [(test_paths[i], docs[lab][0]) for lab, ids in test_sel.items() for i in ids]
    return model, examples, sampler, eval_clues, tests


def evaluate(model, eval_clues, tests, blank: bool) -> dict[str, float]:
    import torch
    from PIL import Image

    doc_ids = list(eval_clues)
    flat = [(d, c) for d in doc_ids for c in eval_clues[d]]
    hits1 = hits5 = 0
    model.eval()
    for path, gold in tests:
        image = Image.open(path).convert("RGB")
        if blank:
            image = Image.new("RGB", image.size, (128, 128, 128))
        with torch.no_grad():
            prompt = model.prompt_embeds([QUESTION], images=[image])
            ll = model.clue_log_likelihood(prompt, [c for _, c in flat], batch_size=64)
        best: dict[str, float] = {}
        for (d, _), s in zip(flat, ll.tolist()):
            best[d] = max(best.get(d, float("-inf")), s)
        ranking = sorted(doc_ids, key=lambda d: -best[d])
        hits1 += ranking[0] == gold
        hits5 += gold in ranking[:5]
    n = len(tests)
    return {"R@1": hits1 / n, "R@5": hits5 / n, "queries": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="higher than the paper's 6e-5: tiny models, few steps")
    parser.add_argument("--vision-lr-scale", type=float, default=1.0, help="lr multiplier: prefixes, gates, alignment")
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--test-per-class", type=int, default=2)
    parser.add_argument("--clue-length", type=int, default=8)
    parser.add_argument("--clues-per-doc", type=int, default=2)
    parser.add_argument("--tiny-hidden", type=int, default=128, help="hidden size of the random tiny LLaMA")
    parser.add_argument("--tiny-layers", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-targets", default="q_proj,v_proj")
    parser.add_argument("--task", default=None, help="shorter task description (shorter prompts, faster CPU runs)")
    parser.add_argument("--eval-clues", type=int, default=2, help="clues per document used for ranking")
    parser.add_argument("--skip-untrained", action="store_true", help="skip evaluating before training")
    parser.add_argument("--vit-width", type=int, default=128)
    parser.add_argument("--vit-layers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import torch

    from gemkr_llamaindex.training.trainer import TrainConfig, Trainer

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        model, examples, sampler, eval_clues, tests = build(args, work)
        print(model.parameter_summary())
        print(f"{len(examples)} training pairs, {len(tests)} held-out queries, "
              f"{sampler.stats.unique_share:.0%} unique clues")
        before = None if args.skip_untrained else {"image": evaluate(model, eval_clues, tests, blank=False)}
        cfg = TrainConfig(train_file="", kb_dir="", output_dir=str(work / "run"), lr=args.lr, batch_size=args.batch_size,
                          vision_lr_scale=args.vision_lr_scale,
                          warmup_steps=max(args.steps // 10, 1), max_steps=args.steps, save_every=0, seed=args.seed,
                          object_cache_dir=str(work / "objects"))
        trainer = Trainer(model, examples, cfg)
        t1 = time.perf_counter()
        losses = trainer.train()
        train_s = time.perf_counter() - t1
        result = {
            "args": vars(args),
            "untrained": before,
            "image": evaluate(model, eval_clues, tests, blank=False),
            "blanked": evaluate(model, eval_clues, tests, blank=True),
            "loss_first_last": [sum(losses[:10]) / len(losses[:10]), sum(losses[-10:]) / len(losses[-10:])],
            "train_seconds": round(train_s, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
            "chance_R@1": 1 / len(eval_clues),
        }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
