"""Train GeMKR on your own images, questions and documents (runs offline, end to end).

1. Build a knowledge base from your documents with the LLM's tokenizer (clues are KB token ids).
2. Write the training JSONL: {"image": path, "question": str, "positive_doc_ids": [doc ids]} per line.
3. Train with the Python API (or: ``gemkr train --config train.yaml`` with the same keys).
4. Load the result and rank documents for a new query by clue likelihood.

By default it uses tiny random base models so it finishes in about a minute on a laptop CPU; pass
``--real`` to use SmolLM2-135M (packaged) with a ViT-B-16 CLIP checkpoint you have locally
(``--clip-checkpoint /path/to/open_clip_vit_b16.pt``) and a YOLO ``.pt`` (``--yolo yolov8n.pt``).

    PYTHONPATH=. python examples/train_own_data.py --work-dir /tmp/gemkr-demo
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DOCS = [
    ("Tiger", "The tiger is the largest living cat species. Tigers have orange fur with dark stripes."),
    ("Zebra", "Zebras are African equines with black and white stripes. They live in herds on the savanna."),
    ("Flamingo", "Flamingos are wading birds. Their pink colour comes from the shrimp and algae they eat."),
]


def make_images(folder: Path) -> dict[str, Path]:
    """Stand-in pictures (one colour each); replace with your own image files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colours = {"Tiger": (230, 120, 20), "Zebra": (240, 240, 240), "Flamingo": (250, 120, 170)}
    paths = {}
    for name, rgb in colours.items():
        paths[name] = folder / f"{name.lower()}.png"
        Image.new("RGB", (96, 96), rgb).save(paths[name])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="gemkr-demo")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M + a local CLIP checkpoint")
    parser.add_argument("--clip-checkpoint", default=None)
    parser.add_argument("--yolo", default=None, help="YOLO weights (.pt) or architecture (.yaml)")
    args = parser.parse_args()
    work = Path(args.work_dir)

    from gemkr_llamaindex.images import load_image
    from gemkr_llamaindex.kb import KnowledgeBase
    from gemkr_llamaindex.model.gemkr import GeMKRModel
    from gemkr_llamaindex.model.tiny import TINY_CLIP_CFG, TINY_CLIP_NAME, build_tiny_llm
    from gemkr_llamaindex.training.trainer import TrainConfig, train

    if args.real:
        model_cfg = {"llm": "smollm2", "clip_model": "ViT-B-16", "clip_pretrained": args.clip_checkpoint}
    else:
        llm = build_tiny_llm(work / "tiny-llm")
        model_cfg = {"llm": str(llm), "clip_model": TINY_CLIP_NAME, "clip_pretrained": None,
                     "clip_model_cfg": TINY_CLIP_CFG, "prefix_length": 6}
    if args.yolo:
        model_cfg["detector"] = args.yolo

    # 1. the knowledge base, tokenized like the LLM
    kb_dir = work / "kb"
    if not kb_dir.exists():
        KnowledgeBase.build(DOCS, model_cfg["llm"], kb_dir)

    # 2. training data
    images = make_images(work / "images")
    with open(work / "train.jsonl", "w") as fh:
        for doc_id, _ in DOCS:
            row = {"image": str(images[doc_id]), "question": "Which animal is this and what is it known for?",
                   "positive_doc_ids": [doc_id]}
            fh.write(json.dumps(row) + "\n")

    # 3. training (resumes automatically from the latest checkpoint in output_dir)
    config = TrainConfig(train_file=str(work / "train.jsonl"), kb_dir=str(kb_dir), output_dir=str(work / "run"),
                         model=model_cfg, max_steps=args.steps, batch_size=3, lr=1e-3, warmup_steps=2,
                         save_every=10, trust_detector_pickle=True)  # --yolo names a file you chose: trusted
    final = train(config)

    # 4. rank the documents for a query by the likelihood of their clues
    model = GeMKRModel.from_pretrained(final).eval()
    kb = KnowledgeBase.open(kb_dir)
    prompt = model.prompt_embeds(["Which animal is this and what is it known for?"],
                                 images=[load_image(str(images["Zebra"])).image])
    clues = [kb.doc_tokens(d)[:8].tolist() for d, _ in DOCS]
    scores = model.clue_log_likelihood(prompt, clues)
    for (doc_id, _), s in sorted(zip(DOCS, scores.tolist()), key=lambda x: -x[1]):
        print(f"{s:9.2f}  {doc_id}")


if __name__ == "__main__":
    main()
