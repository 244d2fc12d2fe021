"""Training loop: schedule, data format, checkpoints + resume, and ``gemkr train`` end to end (tiny models)."""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import itertools

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gemkr_llamaindex.kb import KnowledgeBase
from gemkr_llamaindex.model.gemkr import GeMKRModel
from gemkr_llamaindex.model.tiny import TINY_CLIP_CFG, TINY_CLIP_NAME, build_tiny_llm
from gemkr_llamaindex.training import cli
from gemkr_llamaindex.training.data import TrainingDataError, read_training_jsonl
from gemkr_llamaindex.training.trainer import STATE_FILE, TrainConfig, batches, latest_checkpoint, lr_at

DOCS = [
    ("Red square", "A red square has four equal sides. Red squares appear on many flags and warning signs."),
    ("Blue circle", "A blue circle is perfectly round. Blue circles mark mandatory road instructions in Europe."),
    ("Green triangle", "A green triangle has three corners. Green triangles often point the way on hiking trails."),
]


def test_lr_schedule_is_a_pure_function_of_the_step():
    assert lr_at(0, 6e-5, 10, 100) == pytest.approx(6e-6)
    assert lr_at(9, 6e-5, 10, 100) == pytest.approx(6e-5)
    assert lr_at(10, 6e-5, 10, 100) == pytest.approx(6e-5)
    assert lr_at(100, 6e-5, 10, 100, min_ratio=0.1) == pytest.approx(6e-6)
    lrs = [lr_at(s, 6e-5, 10, 100) for s in range(100)]
    assert lrs == [lr_at(s, 6e-5, 10, 100) for s in range(100)]
    warmup, decay = lrs[:11], lrs[10:]
    assert all(a <= b for a, b in itertools.pairwise(warmup)) and all(a >= b for a, b in itertools.pairwise(decay))


def test_batches_resume_where_they_stopped():
    fresh = batches(10, 3, seed=4)
    seq = [next(fresh) for _ in range(8)]
    resumed = batches(10, 3, seed=4, start=5)
    assert [next(resumed) for _ in range(3)] == seq[5:]
    assert sorted(i for b in seq[:3] for i in b) == sorted({i for b in seq[:3] for i in b})  # no repeats in an epoch


def test_length_bucketed_batches_keep_epochs_whole_and_resume_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 200, size=300).tolist()
    fresh = batches(300, 8, seed=2, lengths=lengths, pool=8)
    epoch = [next(fresh) for _ in range(300 // 8)]
    flat = [i for b in epoch for i in b]
    assert len(flat) == len(set(flat)) == 296  # every example at most once per epoch, as without buckets
    resumed = batches(300, 8, seed=2, start=30, lengths=lengths, pool=8)
    assert [next(resumed) for _ in range(10)] == (epoch + [next(fresh) for _ in range(3)])[30:40]

    def padded(bs):  # tokens a batch computes: its size times its longest row
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    plain = batches(300, 8, seed=2)
    assert padded(epoch) < 0.75 * padded([next(plain) for _ in range(37)])


def test_mixed_targets_draw_openings_at_the_asked_share(tmp_path, smollm2_tokenizer):
    from gemkr_llamaindex.training.clues import ClueSampler
    from gemkr_llamaindex.training.data import QueryRecord, build_examples

    kb = KnowledgeBase.build(DOCS, smollm2_tokenizer, tmp_path / "kb", show_progress=False)
    records = [QueryRecord(None, f"Which shape has {w} sides?", (d,)) for w in ("four", "three", "no")
               for d, _ in DOCS] * 40
    openings = {}
    for share in (0.0, 0.7, 1.0):
        ex = build_examples(records, ClueSampler(kb, m=1, length=5, seed=3), "mixed", opening_share=share)
        openings[share] = sum(list(e.clue_ids) == kb.doc_tokens(e.doc_id)[:5].tolist() for e in ex) / len(ex)
    assert openings[1.0] == 1.0 and openings[0.0] < 0.2 and 0.6 < openings[0.7] < 0.8  # sampled clues may open too
    again = build_examples(records, ClueSampler(kb, m=1, length=5, seed=3), "mixed", opening_share=0.7)
    assert again == build_examples(records, ClueSampler(kb, m=1, length=5, seed=3), "mixed", opening_share=0.7)
    with pytest.raises(ValueError, match="opening_share"):
        build_examples(records, ClueSampler(kb, m=1, length=5), "mixed", opening_share=1.5)


def test_tag_keywords_steer_sampled_clues_to_the_sentence_that_holds_the_tags(tmp_path, smollm2_tokenizer):
    from gemkr_llamaindex.training.clues import ClueSampler
    from gemkr_llamaindex.training.data import QueryRecord, build_examples

    kb = KnowledgeBase.build(DOCS, smollm2_tokenizer, tmp_path / "kb", show_progress=False)
    second = DOCS[0][1].split(". ")[1]  # "Red squares appear on many flags and warning signs."
    records = [QueryRecord(None, "What is this?", ("Red square",), "warning sign, street sign")] * 60

    def in_second(keywords: str) -> float:
        ex = build_examples(records, ClueSampler(kb, m=1, length=4, seed=1), "sampled", clue_keywords=keywords)
        return sum(smollm2_tokenizer.decode(list(e.clue_ids)).strip() in second for e in ex) / len(ex)

    assert in_second("question+tags") == 1.0  # only the sentence with the tags' words is kept
    assert in_second("question") < 0.9  # no keyword in "What is this?": any sentence
    untagged = [QueryRecord(None, "What is this?", ("Red square",))] * 5  # no tags: the question alone
    assert build_examples(untagged, ClueSampler(kb, m=1, length=4, seed=1), "sampled", clue_keywords="question+tags") \
        == build_examples(untagged, ClueSampler(kb, m=1, length=4, seed=1), "sampled")
    with pytest.raises(ValueError, match="clue_keywords"):
        build_examples(records, ClueSampler(kb, m=1, length=4), "sampled", clue_keywords="tags")


def test_training_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"image": "a.png", "question": "q", "positive_doc_ids": ["x"]}\n{"image": "b.png", "question": "q"}\n')
    with pytest.raises(TrainingDataError, match=r"train.jsonl:2: missing field\(s\) \['positive_doc_ids'\]"):
        read_training_jsonl(path)
    path.write_text('{"image": "a.png", "question": "q", "positive_doc_ids": "x"}\n')
    with pytest.raises(TrainingDataError, match="train.jsonl:1: 'positive_doc_ids' must be a non-empty list"):
        read_training_jsonl(path)
    path.write_text('{"image": "a.png", "question": "q", "positive_doc_ids": ["x"]}\n')
    assert read_training_jsonl(path)[0].image == str(tmp_path / "a.png")  # relative to the file


def test_unknown_config_keys_are_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_file: t.jsonl\nkb_dir: kb\noutput_dir: out\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown training config keys \\['learning_rate'\\]"):
        TrainConfig.from_yaml(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    llm = build_tiny_llm(root / "llm")
    KnowledgeBase.build(DOCS, str(llm), root / "kb", show_progress=False)
    rng = np.random.default_rng(0)
    rows = []
    for i, (doc_id, _) in enumerate(DOCS * 2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "question": "What do you know about this shape?", "positive_doc_ids": [doc_id]})
    with open(root / "train.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    model = {"llm": str(llm), "clip_model": TINY_CLIP_NAME, "clip_pretrained": None, "clip_model_cfg": TINY_CLIP_CFG,
             "prefix_length": 6, "detector": "yolov8n.yaml", "detector_conf": 0.0}
    return root, model


def _yaml(root, model, name, **extra):
    cfg = {"train_file": "train.jsonl", "kb_dir": "kb", "output_dir": name, "model": model, "batch_size": 2,
           "grad_accum": 2, "lr": 1e-3, "warmup_steps": 2, "max_steps": 4, "save_every": 2,
           "object_cache_dir": str(root / "objects"), **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gemkr")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_gemkr_train_checkpoints_and_resumes_identically(setup, capsys):
    root, model = setup
    assert _run_cli("train", "--config", str(_yaml(root, model, "straight"))) == 0
    out = capsys.readouterr().out
    assert "trainable params:" in out and "of sampled clues map to a single document" in out

    # Interrupted run: 2 steps, then resume from checkpoint-2 up to step 4.
    interrupted = _yaml(root, model, "interrupted")
    assert _run_cli("train", "--config", str(interrupted), "--max-steps", "2") == 0
    assert latest_checkpoint(root / "interrupted").name == "checkpoint-2"
    assert _run_cli("train", "--config", str(interrupted)) == 0
    assert "resumed from" in capsys.readouterr().out

    ckpt = root / "straight" / "checkpoint-4"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["decoding.json", "gemkr_config.json", STATE_FILE, "trainable.safetensors"])
    state_a = torch.load(ckpt / STATE_FILE, weights_only=True)
    state_b = torch.load(root / "interrupted" / "checkpoint-4" / STATE_FILE, weights_only=True)
    assert state_a["step"] == state_b["step"] == 4
    assert state_a["losses"] == state_b["losses"]  # same data order, same updates after resuming
    assert all(np.isfinite(state_a["losses"]))
    a = GeMKRModel.from_pretrained(root / "straight" / "final").trainable_state_dict()
    b = GeMKRModel.from_pretrained(root / "interrupted" / "final").trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # only trainable weights are stored: far fewer than the model has
    saved = torch.load(ckpt / STATE_FILE, weights_only=True)["optimizer"]["state"]
    assert len(saved) == len(a) - 1  # every trainable weight but "no image", which only text-only rows train
    # the object features were computed once per image and cached
    assert len(list((root / "objects").rglob("*.safetensors"))) == 6


def test_benchmark_rows_convert_to_training_rows(tmp_path):
    from eval_vqa.mini import load_mini_benchmark
    from gemkr_llamaindex.images import load_image
    from gemkr_llamaindex.training.data import rows_from_benchmark, write_training_jsonl

    rows = load_mini_benchmark()[:2]
    path = write_training_jsonl(rows_from_benchmark(rows), tmp_path / "mini_train.jsonl")
    records = read_training_jsonl(path)
    assert [r.positive_doc_ids for r in records] == [tuple(r["gold_doc_ids"]) for r in rows]
    assert isinstance(records[0].image, dict) and load_image(records[0].image).image.mode == "RGB"


def test_vision_side_can_use_a_scaled_learning_rate(setup):
    from gemkr_llamaindex.model.gemkr import GeMKRConfig
    from gemkr_llamaindex.training.data import InstructionExample, QueryRecord
    from gemkr_llamaindex.training.trainer import Trainer

    root, model_cfg = setup
    model = GeMKRModel(GeMKRConfig.from_dict({**model_cfg, "detector": None}))
    rec = QueryRecord(str(root / "img0.png"), "What is this?", ("Red square",))
    examples = [InstructionExample(rec, "Red square", (330, 3321, 314))]
    cfg = TrainConfig(train_file="", kb_dir="", output_dir=str(root / "scaled"), lr=1e-3, vision_lr_scale=10.0,
                      warmup_steps=0, max_steps=1, batch_size=1, save_every=0)
    trainer = Trainer(model, examples, cfg)
    trainer.train(progress=False)
    llm_group, vision_group = trainer.optimizer.param_groups
    assert vision_group["lr"] == pytest.approx(10 * llm_group["lr"])
    assert {id(p) for p in llm_group["params"]} == {id(p) for p in model.llm.parameters() if p.requires_grad}
    assert len(llm_group["params"]) + len(vision_group["params"]) == len(model.trainable_state_dict())
