"""Training settings are checked when they are read, a resumed run keeps its settings, and a damaged
checkpoint is named (tiny text-only models: no vision tower, a few optimizer steps)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from gemkr_llamaindex.kb import KnowledgeBase
from gemkr_llamaindex.model.tiny import build_tiny_llm
from gemkr_llamaindex.training.trainer import STATE_FILE, TrainConfig, train

DOCS = [("Red square", "A red square has four equal sides. Red squares appear on many flags."),
        ("Blue circle", "A blue circle is perfectly round. Blue circles mark road instructions.")]


def _config_file(tmp_path, **values):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"train_file": "t.jsonl", "kb_dir": "kb", "output_dir": "out", **values}))
    return path


@pytest.mark.parametrize(
    ("values", "match"),
    [({"grad_accum": 0}, "grad_accum must be >= 1, got 0"),  # once: optimizer steps with no forward pass, loss 0.0
     ({"lr": 0}, "lr must be > 0, got 0"),  # once: an untrained 'final'
     ({"max_steps": 0}, "max_steps must be >= 1"), ({"max_steps": -3}, "max_steps must be >= 1"),
     ({"batch_size": 0}, "batch_size must be >= 1"),  # once: ZeroDivisionError
     ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),  # once: gradient ascent
     ({"lr": "fast"}, "lr must be a finite number, got 'fast'"), ({"lr": float("nan")}, "lr must be a finite number"),
     ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"), ({"seed": True}, "seed must be an integer"),
     ({"min_lr_ratio": 2}, "min_lr_ratio must be >= 0 and <= 1"), ({"resume": "no"}, "resume must be true or false"),
     ({"clue_mode": "random"}, "clue_mode must be one of"), ({"device": "gpu0"}, "device must be auto"),
     ({"model": {"lora_target_modules": "q_proj"}}, "model: lora_target_modules must be a list of strings"),
     ({"model": {"lora_r": 0}}, "model: lora_r must be >= 1"),
     ({"decoding": {"num_beams": 4.5}}, "decoding: num_beams must be an integer"),
     ({"corpus_queries": {"pictures": 2}}, r"corpus_queries: unknown option\(s\) \['pictures'\]")],
)
def test_every_training_value_is_checked_when_the_config_is_read(values, match, tmp_path):
    path = _config_file(tmp_path, **values)
    with pytest.raises(ValueError, match=rf"train\.yaml: {match}"):
        TrainConfig.from_yaml(path)


def test_null_max_grad_norm_turns_clipping_off(tmp_path):
    assert TrainConfig.from_yaml(_config_file(tmp_path, max_grad_norm=None)).max_grad_norm is None


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    llm = build_tiny_llm(root / "llm")
    KnowledgeBase.build(DOCS, str(llm), root / "kb", show_progress=False)
    rows = [{"image": None, "question": f"What has {w}?", "positive_doc_ids": [d]}
            for w, d in (("four sides", "Red square"), ("no corners", "Blue circle"))] * 2
    (root / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _train_config(root, out, **values):
    base = {"train_file": str(root / "t.jsonl"), "kb_dir": str(root / "kb"), "output_dir": str(root / out),
            "model": {"llm": str(root / "llm"), "clip_model": None, "lora_r": 2, "lora_alpha": 4}, "batch_size": 2, "lr": 1e-3,
            "warmup_steps": 0, "max_steps": 2, "save_every": 1, "clue_length": 4}
    return TrainConfig.from_dict({**base, **values})


def test_resume_refuses_changed_settings_naming_them(run_root):
    train(_train_config(run_root, "run"), verbose=False)
    for changed in ({"batch_size": 4}, {"lr": 2e-3}, {"seed": 7}):
        with pytest.raises(ValueError, match=f"{next(iter(changed))}: .* -> "):
            train(_train_config(run_root, "run", max_steps=3, **changed), verbose=False)
    with pytest.raises(ValueError, match=r"\(batch_size: 2 -> 4, lr: 0.001 -> 0.002\)"):
        train(_train_config(run_root, "run", max_steps=3, batch_size=4, lr=2e-3), verbose=False)
    # where things are, how many steps in all and how often to save may change
    train(_train_config(run_root, "run", max_steps=3, save_every=3, device="cpu"), verbose=False)
    state = torch.load(run_root / "run" / "checkpoint-3" / STATE_FILE, weights_only=True)
    assert state["step"] == 3
    # and with an explicit override, anything
    train(_train_config(run_root, "run", max_steps=4, lr=2e-3), verbose=False, allow_config_change=True)
    assert (run_root / "run" / "checkpoint-4").is_dir()


def test_every_training_checkpoint_carries_its_decoding_settings(run_root):
    from gemkr_llamaindex.model.checkpoint import read_decoding

    train(_train_config(run_root, "decoding", decoding={"anchor": "doc_start", "min_length": 2}), verbose=False)
    for folder in ("checkpoint-1", "checkpoint-2", "final"):
        tuned = read_decoding(run_root / "decoding" / folder)
        assert (tuned.anchor, tuned.min_length) == ("doc_start", 2)


def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_offered(run_root):
    train(_train_config(run_root, "damaged"), verbose=False)
    latest = run_root / "damaged" / "checkpoint-2"
    (latest / STATE_FILE).write_bytes((latest / STATE_FILE).read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-2.*trainer_state\.pt.*resume from checkpoint-1"):
        train(_train_config(run_root, "damaged", max_steps=3), verbose=False)
    weights = latest / "trainable.safetensors"
    shutil.copy(run_root / "damaged" / "checkpoint-1" / STATE_FILE, latest / STATE_FILE)
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-2.*trainable\.safetensors"):
        train(_train_config(run_root, "damaged", max_steps=3), verbose=False)
    shutil.rmtree(latest)  # moved aside as the message says: the run resumes from checkpoint-1
    train(_train_config(run_root, "damaged", max_steps=3), verbose=False)
    assert torch.load(run_root / "damaged" / "checkpoint-3" / STATE_FILE, weights_only=True)["step"] == 3
