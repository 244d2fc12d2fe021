"""The image must matter: a minute-long version of ``benchmarks/learnability.py``.

Three documents of invented facts, one per colour; every query asks the same question, so only the picture
(a noisy patch of that colour) tells which document is meant. The full model (frozen random tiny ViT with
object-aware prefixes, alignment, the packaged SmolLM2-135M with LoRA) is trained for 60 steps through the
real Trainer; then held-out pictures must rank their own document first by clue likelihood, while a grey
picture cannot do better than one document for every query (chance).
"""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from gemkr_llamaindex.assets import load_tokenizer
from gemkr_llamaindex.kb import KnowledgeBase
from gemkr_llamaindex.model.gemkr import GeMKRConfig, GeMKRModel
from gemkr_llamaindex.model.tiny import TINY_CLIP_CFG, TINY_CLIP_NAME
from gemkr_llamaindex.training.clues import ClueSampler
from gemkr_llamaindex.training.data import QueryRecord, build_examples
from gemkr_llamaindex.training.trainer import TrainConfig, Trainer

DOCS = [
    ("red", "Kalomer Tuvin founded the guild of Sador in 1204."),
    ("green", "Pelqua Rinzo built the bridge of Gribex in 1630."),
    ("blue", "Falhuny Dorka wrote the songs of Vinsa in 1877."),
]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
QUESTION = "What do you know about this?"


def picture(colour: str, rng: random.Random) -> Image.Image:
    jitter = [max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[colour]]
    return Image.new("RGB", (32, 32), tuple(jitter))


def test_training_makes_the_image_select_the_document(tmp_path):
    torch.manual_seed(0)
    rng = random.Random(0)
    kb = KnowledgeBase.build(DOCS, load_tokenizer("smollm2"), tmp_path / "kb", show_progress=False)
    records = []
    for colour, _ in DOCS:
        for i in range(4):
            path = tmp_path / f"{colour}{i}.png"
            picture(colour, rng).save(path)
            records.append(QueryRecord(str(path), QUESTION, (colour,)))
    examples = build_examples(records, ClueSampler(kb, m=2, length=6, seed=0))
    config = GeMKRConfig(llm="smollm2", clip_model=TINY_CLIP_NAME, clip_pretrained=None,
                         clip_model_cfg=TINY_CLIP_CFG, prefix_length=5, task_description="Quote the knowledge base.")
    model = GeMKRModel(config)
    train = TrainConfig(train_file="", kb_dir="", output_dir=str(tmp_path / "run"), lr=2e-3, vision_lr_scale=30,
                        batch_size=6, warmup_steps=2, max_steps=60, save_every=0,
                        object_cache_dir=str(tmp_path / "objects"))
    losses = Trainer(model, examples, train).train(progress=False)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 3

    clues = {doc: [kb.doc_tokens(doc)[:6].tolist()] for doc, _ in DOCS}

    def top(image: Image.Image) -> str:
        with torch.no_grad():
            prompt = model.prompt_embeds([QUESTION], images=[image])
            ll = model.clue_log_likelihood(prompt, [c for doc in clues for c in clues[doc]])
        return max(zip(ll.tolist(), clues))[1]

    held_out = [(picture(colour, rng), colour) for colour, _ in DOCS for _ in range(3)]
    with_image = sum(top(image) == gold for image, gold in held_out) / len(held_out)
    grey = top(Image.new("RGB", (32, 32), (128, 128, 128)))
    blanked = sum(grey == gold for _, gold in held_out) / len(held_out)
    assert blanked == pytest.approx(1 / 3)  # one answer for every query: chance
    assert with_image >= 0.8, f"held-out R@1 {with_image:.2f} with the image (blanked: {blanked:.2f})"
