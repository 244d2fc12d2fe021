"""GeMKR model: tiny real base models (2-layer LLaMA with SmolLM2's tokenizer, small random open_clip ViT)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from gemkr_llamaindex.model.gemkr import GeMKRModel, VisualBatch
from gemkr_llamaindex.model.template import InstructionTemplate
from gemkr_llamaindex.model.tiny import build_tiny_llm, tiny_config


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(scope="module")
def model(llm_dir):
    return GeMKRModel(tiny_config(llm_dir)).eval()


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (70 + 5 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


def _visual(model: GeMKRModel, n: int, n_objects: list[int], seed: int = 0) -> VisualBatch:
    pixels = torch.stack([model.preprocess(im) for im in _images(n, seed)])
    g = torch.Generator().manual_seed(seed)
    feats = torch.zeros(n, model.config.max_objects, model.tower.clip_dim)
    mask = torch.zeros(n, model.config.max_objects, dtype=torch.bool)
    for i, k in enumerate(n_objects):
        feats[i, :k] = torch.randn(k, model.tower.clip_dim, generator=g)
        mask[i, :k] = True
    return VisualBatch(pixels, feats, mask)


def _clues(model: GeMKRModel, texts: list[str]) -> list[list[int]]:
    return [model.tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def test_forward_shapes_and_masks(model):
    visual = _visual(model, 2, [3, 0])
    prompt = model.prompt_embeds(["What is this?", "Which city has this bus?"], visual=visual, tags=[None, "bus, EMT"])
    hidden = model.llm.config.hidden_size
    assert prompt.inputs_embeds.shape[0] == 2 and prompt.inputs_embeds.shape[2] == hidden
    assert prompt.attention_mask.shape == prompt.inputs_embeds.shape[:2]
    # Row 0: shorter prompt (no tags) is left-padded; row 1 hides its 5 empty object slots.
    assert prompt.attention_mask[0, 0] == 0 and prompt.attention_mask[:, -1].tolist() == [1, 1]
    hidden_slots = (prompt.attention_mask == 0).sum(1)
    assert hidden_slots[1] == model.config.max_objects
    out = model(["What is this?", "Which city?"], _clues(model, [" a red bus", " in Madrid since 1947"]), visual=visual)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.num_tokens == sum(len(c) for c in _clues(model, [" a red bus", " in Madrid since 1947"]))


def test_exactly_intended_parameters_train(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    kinds = {
        "prefix": {n for n in trainable if n == "tower.prefix.prefixes"},
        "gates": {n for n in trainable if n.endswith("dual_attn.gate")},
        "object_proj": {n for n in trainable if n.startswith("tower.object_proj.")},
        "alignment": {n for n in trainable if n.startswith("alignment.")},
        "lora": {n for n in trainable if ".lora_A." in n or ".lora_B." in n},
    }
    assert set().union(*kinds.values()) == trainable
    assert len(kinds["gates"]) == len(model.tower.blocks) == 2
    assert len(kinds["lora"]) == 2 * 2 * 2  # layers x (q, v) x (A, B)
    assert all(("q_proj" in n or "v_proj" in n) for n in kinds["lora"])
    assert not any(p.requires_grad for p in model.tower.visual.parameters())
    assert model.tower.prefix.prefixes.shape == (2, 6, model.tower.width)  # one prefix per layer, not shared


def test_gate_at_init_equals_frozen_backbone_bit_for_bit(model):
    visual = _visual(model, 2, [5, 2])
    with torch.no_grad():
        out = model.tower(visual.pixel_values, visual.object_features, visual.object_mask)
        pooled, hidden = model.tower.frozen_reference(visual.pixel_values)
    assert torch.equal(out.hidden_states, hidden) and torch.equal(out.h_cls, pooled)
    # ... and the prefix path is live: opening one gate changes the output.
    gate = model.tower.blocks[0].dual_attn.gate
    with torch.no_grad():
        gate.fill_(0.5)
        opened = model.tower(visual.pixel_values, visual.object_features, visual.object_mask)
        gate.zero_()
    assert not torch.allclose(opened.h_cls, pooled)


def test_prefix_flow_matches_multihead_attention_oracle(model):
    """Eq. 5 with gate 1 is torch's own attention of hidden queries over prefix keys/values (minus out bias)."""
    flow = model.tower.blocks[1].dual_attn
    g = torch.Generator().manual_seed(3)
    hidden, prefix = torch.randn(2, 7, model.tower.width, generator=g), torch.randn(2, 4, model.tower.width, generator=g)
    with torch.no_grad():
        flow.gate.fill_(1.0)
        ours = flow.prefix_flow(hidden, prefix) + flow.attn.out_proj.bias
        flow.gate.zero_()
        ref = flow.attn(hidden, prefix, prefix, need_weights=False)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_object_features_reach_prefix_zero_padded(model):
    visual = _visual(model, 1, [2])
    h_r = model.tower.object_proj(visual.object_features, visual.object_mask)
    assert torch.equal(h_r[0, 2:], torch.zeros_like(h_r[0, 2:]))
    layer0 = model.tower.prefix(0, h_r, 1)
    assert torch.equal(layer0[0, 5:], model.tower.prefix.prefixes[0, 5:])  # l=6 > r=5: padding adds zeros
    assert torch.allclose(layer0[0, :2], model.tower.prefix.prefixes[0, :2] + h_r[0, :2])


def test_batched_clue_likelihood_matches_single(model):
    visual = _visual(model, 2, [1, 4])
    questions = ["what animal is this?", "where was this photo taken, roughly?"]
    clues = _clues(model, [" the tiger is the largest cat", " Madrid"])
    both = model.clue_log_likelihood(model.prompt_embeds(questions, visual=visual), clues)
    for i in range(2):
        one = VisualBatch(visual.pixel_values[i : i + 1], visual.object_features[i : i + 1], visual.object_mask[i : i + 1])
        single = model.clue_log_likelihood(model.prompt_embeds(questions[i : i + 1], visual=one), clues[i : i + 1])
        torch.testing.assert_close(both[i : i + 1], single, rtol=1e-4, atol=1e-4)
    # one prompt against many clues (prompt encoded once, its cache reused): same as scoring each alone
    first = model.prompt_embeds(questions[:1], visual=VisualBatch(
        visual.pixel_values[:1], visual.object_features[:1], visual.object_mask[:1]))
    many_clues = [*clues, clues[1][:1], _clues(model, [" it eats meat"])[0]]
    alone = torch.cat([model.clue_log_likelihood(first, [c]) for c in many_clues])
    for bs in (1, 3):
        torch.testing.assert_close(model.clue_log_likelihood(first, many_clues, batch_size=bs), alone,
                                   rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone[:1], both[:1], rtol=1e-4, atol=1e-4)
    assert (alone < 0).all()


def test_tree_scoring_of_shared_prefixes_matches_teacher_forcing(model):
    """Clues that share prefixes, repeat, nest and differ in length (as beams of one search do) score
    exactly as each scored alone in its own teacher-forced pass, whatever the number of clues per pass."""
    first = model.prompt_embeds(["what animal is this?"], visual=_visual(model, 1, [3]))
    g = torch.Generator().manual_seed(5)
    stems = [torch.randint(5, 60, (5,), generator=g).tolist() for _ in range(3)]
    many = [stem[:k] + torch.randint(5, 60, (j,), generator=g).tolist()
            for stem in stems for k in (1, 3, 5) for j in (0, 1, 2)]
    many += [many[4], stems[0][:2], [7]]  # a repeat, a prefix of others, a one-token clue
    alone = torch.cat([model.clue_log_likelihood(first, [c]) for c in many])
    for bs in (2, 7, 64):
        torch.testing.assert_close(model.clue_log_likelihood(first, many, batch_size=bs), alone, rtol=1e-4, atol=1e-4)


def test_a_few_optimizer_steps_lower_the_loss(llm_dir):
    model = GeMKRModel(tiny_config(llm_dir, seed=1)).train()
    visual = _visual(model, 2, [2, 0], seed=5)
    questions = ["what is this?", "what is that?"]
    clues = _clues(model, [" The red square is famous", " blue circles in the sky"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(questions, clues, visual=visual).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.25 and losses[-1] == min(losses), losses
    assert any(float(b.dual_attn.gate.detach().abs().sum()) > 0 for b in model.tower.blocks)  # the gates learn


def test_save_load_round_trip_bit_exact(llm_dir, tmp_path):
    model = GeMKRModel(tiny_config(llm_dir, prefix_length=7, lora_r=4)).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    out_dir = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(f.name for f in out_dir.iterdir()) == ["decoding.json", "gemkr_config.json", "trainable.safetensors"]
    loaded = GeMKRModel.from_pretrained(out_dir).eval()
    a, b = model.trainable_state_dict(), loaded.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    visual = _visual(model, 1, [3])
    clue = _clues(model, [" a checkpoint"])
    with torch.no_grad():
        assert torch.equal(model(["q?"], clue, visual=visual).loss, loaded(["q?"], clue, visual=visual).loss)
    model.save_pretrained(out_dir)  # overwriting an existing checkpoint works
    assert not list(tmp_path.glob(".ckpt*"))


def test_load_errors_are_clear(llm_dir, tmp_path):
    model = GeMKRModel(tiny_config(llm_dir))
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    other_llm = build_tiny_llm(tmp_path / "other_llm", seed=123)
    with pytest.raises(ValueError, match="base llm differs"):
        GeMKRModel.from_pretrained(ckpt, llm=str(other_llm))
    with pytest.raises(ValueError, match="base clip differs"):
        GeMKRModel.from_pretrained(ckpt, clip_seed=7)
    (ckpt / "trainable.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="trainable.safetensors"):
        GeMKRModel.from_pretrained(ckpt)
    with pytest.raises(FileNotFoundError, match="not a GeMKR checkpoint"):
        GeMKRModel.from_pretrained(tmp_path / "nowhere")


def test_template_slots():
    t = InstructionTemplate()
    before, after = t.split("What is this?", tags="tiger cat, EMT")
    assert "What is this?" in before and "### Visual tags: tiger cat, EMT" in before
    assert after.endswith("### Response:")
    assert "Visual tags" not in t.split("What is this?")[0]
    assert "<image>" in t.render("q")


def test_clip_tower_loads_from_a_local_checkpoint(tmp_path):
    import open_clip

    from gemkr_llamaindex.model.tiny import TINY_CLIP_CFG, TINY_CLIP_NAME
    from gemkr_llamaindex.model.vision import load_clip

    load_clip(TINY_CLIP_NAME, None, TINY_CLIP_CFG)  # registers the architecture
    torch.manual_seed(42)
    full = open_clip.create_model(TINY_CLIP_NAME)
    torch.save(full.state_dict(), tmp_path / "tiny_clip.pt")
    visual, _, size = load_clip(TINY_CLIP_NAME, str(tmp_path / "tiny_clip.pt"))
    assert size == 64 and not any(p.requires_grad for p in visual.parameters())
    assert all(torch.equal(a, b) for a, b in zip(visual.state_dict().values(), full.visual.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip(TINY_CLIP_NAME, str(tmp_path / "missing.pt"))


def test_lora_merged_for_inference_scores_the_same_and_refuses_save_and_train(llm_dir, tmp_path):
    """``merge_lora`` (what ``ClueGenerator.from_checkpoint`` does) folds LoRA into the weights: same clue
    log-likelihoods; saving, loading weights into or training a merged model is refused."""
    m = GeMKRModel(tiny_config(llm_dir, clip_model=None, clip_pretrained=None)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:  # LoRA starts at zero: give it weight so merging changes something
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    ckpt = m.save_pretrained(tmp_path / "ckpt")
    prompt = m.prompt_embeds(["What is this?", "Where is it?"], tags=["cat", None])
    clues = [[5, 9, 11], [7, 3]]
    before = m.clue_log_likelihood(prompt, clues)
    m.merge_lora()
    assert m.lora_merged
    torch.testing.assert_close(m.clue_log_likelihood(prompt, clues), before, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        m.save_pretrained(tmp_path / "other")
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        m.load_trainable(ckpt / "trainable.safetensors")
    m.train()
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        m(["What is this?"], [[5, 9]], tags=["cat"])
    m.eval().unmerge_lora()
    assert not m.lora_merged
    torch.testing.assert_close(m.clue_log_likelihood(prompt, clues), before, rtol=1e-4, atol=1e-4)
