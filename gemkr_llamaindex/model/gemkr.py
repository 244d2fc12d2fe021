"""GeMKR: object-aware CLIP tower -> alignment (Eq. 7) -> template -> LoRA LLM, trained with Eq. 8.

``GeMKRModel`` owns the trainable parts (prefixes, object projection, gates, alignment, LoRA) and wraps the
frozen base models named in ``GeMKRConfig``. Besides the training loss it exposes the multimodal prompt as
input embeddings (for the constrained decoder) and the log-likelihood of given clue token ids (Eq. 1),
which lets one rank documents before any decoder exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemkr_llamaindex.model.alignment import VisualAlignment
from gemkr_llamaindex.model.template import DEFAULT_TASK, InstructionTemplate

CONFIG_FILE = "gemkr_config.json"
WEIGHTS_FILE = "trainable.safetensors"
FORMAT_VERSION = 1


@dataclass
class GeMKRConfig:
    """Names the frozen base models and sizes the trainable parts.

    ``clip_pretrained`` is an open_clip tag or a local checkpoint; ``None`` gives a random tower seeded by
    ``clip_seed`` (open_clip architectures not shipped with open_clip can be given in ``clip_model_cfg``).
    ``detector`` is a YOLO ``.pt`` path or architecture ``.yaml``; ``None`` means no object features.
    """

    llm: str = "smollm2"
    clip_model: str = "ViT-L-14"
    clip_pretrained: str | None = "openai"
    clip_model_cfg: dict[str, Any] | None = None
    clip_seed: int = 0
    detector: str | None = None
    detector_conf: float = 0.25
    prefix_length: int = 10
    max_objects: int = 5
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    task_description: str = DEFAULT_TASK
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeMKRConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GeMKRConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


@dataclass
class VisualBatch:
    """Preprocessed images and their object features ``X_R`` (zero rows where mask is False)."""

    pixel_values: torch.Tensor  # (B, 3, S, S)
    object_features: torch.Tensor  # (B, r, clip_dim)
    object_mask: torch.Tensor  # (B, r) bool

    def to(self, device: torch.device | str) -> VisualBatch:
        return VisualBatch(self.pixel_values.to(device), self.object_features.to(device), self.object_mask.to(device))

    def __len__(self) -> int:
        return self.pixel_values.shape[0]


@dataclass
class PromptEmbeds:
    """The left-padded multimodal prompt: feed ``inputs_embeds`` + ``attention_mask`` to the LLM."""

    inputs_embeds: torch.Tensor  # (B, P, H)
    attention_mask: torch.Tensor  # (B, P) long, 0 on padding and on empty object slots

    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(1) - 1).clamp(min=0)


@dataclass
class GeMKROutput:
    loss: torch.Tensor  # mean negative log-likelihood per response token (Eq. 8 / token count)
    num_tokens: int


def _fingerprint(module: nn.Module) -> str:
    """Cheap identity of frozen weights: names, shapes and a few values rounded to bf16 precision.

    Rounding to bf16 makes the fingerprint of a model loaded in fp32 (CPU) and in bf16 (GPU) agree.
    """
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            continue
        flat = p.detach().flatten()
        sample = torch.cat([flat[:8], flat[-8:]]).to("cpu", torch.bfloat16).float()
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


class GeMKRModel(nn.Module):
    """The GeMKR retriever's neural part. See the module docstring."""

    def __init__(self, config: GeMKRConfig, device: str | torch.device = "cpu", verbose: bool = False) -> None:
        super().__init__()
        from gemkr_llamaindex.model.llm import add_lora, load_llm
        from gemkr_llamaindex.model.vision import ObjectAwareVisionTower, load_clip

        self.config = config
        visual, self.preprocess, self.image_size = load_clip(
            config.clip_model, config.clip_pretrained, config.clip_model_cfg, config.clip_seed
        )
        llm, self.tokenizer = load_llm(config.llm, device=device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the trainable parts start identically for the same config
            self.tower = ObjectAwareVisionTower(visual, config.prefix_length, config.max_objects)
            self.llm = add_lora(llm, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
            self.alignment = VisualAlignment(self.tower.width, llm.config.hidden_size)
        self.template = InstructionTemplate(task=config.task_description)
        self.tower.to(device)
        self.alignment.to(device)
        self._extractor = None
        if verbose:
            print(self.parameter_summary())

    # ---- bookkeeping -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.alignment.proj.weight.device

    def train(self, mode: bool = True) -> GeMKRModel:
        super().train(mode)
        self.tower.visual.eval()  # frozen CLIP: no patch dropout, ever
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def num_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def parameter_summary(self) -> str:
        trainable, total = self.num_parameters()
        return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"

    def base_fingerprints(self) -> dict[str, str]:
        return {"llm": _fingerprint(self.llm), "clip": _fingerprint(self.tower.visual)}

    # ---- visual inputs -----------------------------------------------------------------------------------
    def object_extractor(self, cache_dir: str | Path | None = None):
        """The YOLO + frozen-CLIP ``X_R`` extractor (None when the config names no detector)."""
        if self.config.detector is None:
            return None
        if self._extractor is None or (cache_dir is not None and self._extractor.cache is None):
            from gemkr_llamaindex.model.detector import (
                ObjectDetector,
                ObjectFeatureCache,
                ObjectFeatureExtractor,
            )

            detector = ObjectDetector(self.config.detector, self.config.detector_conf, self.config.max_objects)
            cache = None
            if cache_dir is not None:
                namespace = json.dumps(
                    {"detector": self.config.detector, "conf": self.config.detector_conf,
                     "clip": self.config.clip_model, "pretrained": self.config.clip_pretrained,
                     "clip_fp": _fingerprint(self.tower.visual)}, sort_keys=True)
                cache = ObjectFeatureCache(cache_dir, namespace)
            self._extractor = ObjectFeatureExtractor(
                detector, self.tower.encode_crops, self.preprocess, self.image_size, self.tower.clip_dim, cache
            )
        return self._extractor

    def visual_inputs(self, images: Sequence[Any], cache_dir: str | Path | None = None) -> VisualBatch:
        """Preprocess images (any ``load_image`` input, decoded once) and detect + encode their objects
        (cached per image digest when cache_dir is set)."""
        from gemkr_llamaindex.images import load_image

        loaded = [load_image(im) for im in images]
        pixels = torch.stack([self.preprocess(li.image) for li in loaded])
        extractor = self.object_extractor(cache_dir)
        r = self.config.max_objects
        if extractor is None:
            feats = torch.zeros(len(loaded), r, self.tower.clip_dim)
            mask = torch.zeros(len(loaded), r, dtype=torch.bool)
        else:
            feats, mask = extractor.batch(loaded, r)
        return VisualBatch(pixels, feats, mask)

    def encode_visual(self, visual: VisualBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned visual tokens ``H'_v`` (B, 1 + r, H) in the LLM embedding dtype, and their mask."""
        visual = visual.to(self.device)
        out = self.tower(visual.pixel_values.float(), visual.object_features.float(), visual.object_mask)
        tokens, mask = self.alignment(out.h_cls, out.h_r, out.object_mask)  # Eq. 7
        return tokens.to(self._embed_dtype), mask

    @property
    def _embed_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    # ---- prompt ------------------------------------------------------------------------------------------
    def prompt_embeds(
        self,
        questions: Sequence[str],
        images: Sequence[Any] | None = None,
        visual: VisualBatch | None = None,
        tags: Sequence[str | None] | None = None,
    ) -> PromptEmbeds:
        """The template with the visual tokens spliced in, left-padded to a common length."""
        if (images is None) == (visual is None):
            raise ValueError("give exactly one of `images` (PIL) or `visual` (a VisualBatch)")
        if visual is None:
            visual = self.visual_inputs(images)
        if len(visual) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(visual)} images")
        tags = list(tags) if tags is not None else [None] * len(questions)
        vis_tokens, vis_mask = self.encode_visual(visual)  # (B, V, H), (B, V)
        n_vis = vis_tokens.shape[1]
        pieces = []
        for q, t in zip(questions, tags):
            before, after = self.template.split(q, t)
            pieces.append((
                self.tokenizer(before).input_ids,
                self.tokenizer(after, add_special_tokens=False).input_ids,
            ))
        length = max(len(b) + n_vis + len(a) for b, a in pieces)
        bsz = len(pieces)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((bsz, length), pad, dtype=torch.long)
        mask = torch.zeros(bsz, length, dtype=torch.bool)
        is_vis = torch.zeros(bsz, length, dtype=torch.bool)
        for i, (b, a) in enumerate(pieces):
            start = length - (len(b) + n_vis + len(a))
            ids[i, start : start + len(b)] = torch.tensor(b, dtype=torch.long)
            ids[i, start + len(b) + n_vis :] = torch.tensor(a, dtype=torch.long)
            mask[i, start:] = True
            is_vis[i, start + len(b) : start + len(b) + n_vis] = True
        ids, mask, is_vis = ids.to(self.device), mask.to(self.device), is_vis.to(self.device)
        mask[is_vis] = vis_mask.reshape(-1)  # hide empty object slots
        embeds = self.llm.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter(is_vis.unsqueeze(-1), vis_tokens)  # row-major: slot order preserved
        return PromptEmbeds(embeds, mask.long())

    # ---- scoring -----------------------------------------------------------------------------------------
    def _target_log_probs(self, prompt: PromptEmbeds, targets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``log F(c_j | c_<j, Q)`` of right-padded targets after the prompt: (B, L) and mask."""
        if any(len(t) == 0 for t in targets):
            raise ValueError("empty clue: every target needs at least one token")
        bsz, _plen, _ = prompt.inputs_embeds.shape
        if len(targets) != bsz:
            raise ValueError(f"{len(targets)} targets for a prompt batch of {bsz}")
        tlen = max(len(t) for t in targets)
        tgt = torch.full((bsz, tlen), self.tokenizer.pad_token_id, dtype=torch.long)
        tmask = torch.zeros(bsz, tlen, dtype=torch.long)
        for i, t in enumerate(targets):
            tgt[i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
            tmask[i, : len(t)] = 1
        tgt, tmask = tgt.to(self.device), tmask.to(self.device)
        embeds = torch.cat([prompt.inputs_embeds, self.llm.get_input_embeddings()(tgt)], dim=1)
        mask = torch.cat([prompt.attention_mask, tmask], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=tlen + 1)
        logits = out.logits[:, :tlen].float()  # position plen-1+j predicts target j
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        return logp * tmask, tmask

    def forward(
        self,
        questions: Sequence[str],
        clue_ids: Sequence[Sequence[int]],
        images: Sequence[Any] | None = None,
        visual: VisualBatch | None = None,
        tags: Sequence[str | None] | None = None,
    ) -> GeMKROutput:
        """Eq. 8: negative log-likelihood of the clue tokens after "### Response:" (prompt tokens carry no
        loss), averaged over the batch's clue tokens so the scale does not depend on clue length."""
        prompt = self.prompt_embeds(questions, images=images, visual=visual, tags=tags)
        logp, tmask = self._target_log_probs(prompt, clue_ids)
        n = int(tmask.sum())
        return GeMKROutput(loss=-logp.sum() / n, num_tokens=n)

    @torch.no_grad()
    def clue_log_likelihood(
        self, prompt: PromptEmbeds, clue_ids: Sequence[Sequence[int]], batch_size: int = 32
    ) -> torch.Tensor:
        """``sum_j log F(c_j | c_<j, Q)`` (log of Eq. 1) for each clue, as a float32 CPU tensor.

        ``prompt`` holds either one prompt (scored against every clue) or one prompt per clue.
        """
        n = len(clue_ids)
        if prompt.inputs_embeds.shape[0] not in (1, n):
            raise ValueError(f"prompt batch {prompt.inputs_embeds.shape[0]} must be 1 or the number of clues {n}")
        if prompt.inputs_embeds.shape[0] == 1 and n > 1:
            return self._shared_prompt_log_likelihood(prompt, clue_ids, batch_size)
        scores = []
        for s in range(0, n, batch_size):
            chunk = clue_ids[s : s + batch_size]
            if prompt.inputs_embeds.shape[0] == 1:
                part = PromptEmbeds(prompt.inputs_embeds.expand(len(chunk), -1, -1),
                                    prompt.attention_mask.expand(len(chunk), -1))
            else:
                part = PromptEmbeds(prompt.inputs_embeds[s : s + batch_size], prompt.attention_mask[s : s + batch_size])
            logp, _ = self._target_log_probs(part, chunk)
            scores.append(logp.sum(1).float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def _shared_prompt_log_likelihood(
        self, prompt: PromptEmbeds, clue_ids: Sequence[Sequence[int]], batch_size: int
    ) -> torch.Tensor:
        """One prompt, many clues: run the prompt once and reuse its key/value cache for every chunk."""
        import copy

        if any(len(c) == 0 for c in clue_ids):
            raise ValueError("empty clue: every target needs at least one token")
        out = self.llm(inputs_embeds=prompt.inputs_embeds, attention_mask=prompt.attention_mask,
                       position_ids=prompt.position_ids(), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts every clue's first token
        next_pos = int(prompt.attention_mask.sum())  # position id of the first clue token
        embed = self.llm.get_input_embeddings()
        scores = []
        for s in range(0, len(clue_ids), batch_size):
            chunk = clue_ids[s : s + batch_size]
            b, tlen = len(chunk), max(len(c) for c in chunk)
            tgt = torch.full((b, tlen), self.tokenizer.pad_token_id, dtype=torch.long)
            tmask = torch.zeros(b, tlen, dtype=torch.long)
            for i, c in enumerate(chunk):
                tgt[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
                tmask[i, : len(c)] = 1
            tgt, tmask = tgt.to(self.device), tmask.to(self.device)
            score = first[tgt[:, 0]]
            if tlen > 1:
                cache = copy.deepcopy(out.past_key_values)
                cache.batch_repeat_interleave(b)
                mask = torch.cat([prompt.attention_mask.expand(b, -1), tmask[:, :-1]], dim=1)
                positions = (next_pos + torch.arange(tlen - 1, device=self.device)).expand(b, -1)
                step = self.llm(inputs_embeds=embed(tgt[:, :-1]), attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True)
                logp = torch.log_softmax(step.logits.float(), dim=-1).gather(-1, tgt[:, 1:, None]).squeeze(-1)
                score = score + (logp * tmask[:, 1:]).sum(1)
            scores.append(score.float().cpu())
        return torch.cat(scores)

    # ---- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the trainable weights (safetensors) and a config naming the base models, atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            state = {k: v.contiguous().cpu() for k, v in self.trainable_state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "gemkr", "version": str(FORMAT_VERSION)})
            meta = {
                "format_version": FORMAT_VERSION,
                "config": self.config.to_dict(),
                "base_fingerprints": self.base_fingerprints(),
                "trainable_parameters": self.num_parameters()[0],
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
            old = None
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
                directory.rename(old)
            tmp.rename(directory)
            if old is not None:
                shutil.rmtree(old)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return directory

    @staticmethod
    def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {directory} is not a GeMKR checkpoint (save_pretrained writes it)")
        if not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{directory / WEIGHTS_FILE} is missing: the checkpoint is incomplete")
        return json.loads(path.read_text())

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", **overrides: Any
    ) -> GeMKRModel:
        """Rebuild from ``save_pretrained`` output. ``overrides`` may relocate base models (e.g. ``llm=`` a
        local copy); the base weights are checked against the fingerprints recorded at save time."""
        meta = cls.read_checkpoint_config(directory)
        config = GeMKRConfig.from_dict({**meta["config"], **overrides})
        model = cls(config, device=device)
        model.load_trainable(Path(directory) / WEIGHTS_FILE, expected_fingerprints=meta.get("base_fingerprints"))
        return model

    def load_trainable(self, path: str | Path, expected_fingerprints: dict[str, str] | None = None) -> None:
        """Load trainable weights saved by ``save_pretrained``, checking base models and keys."""
        from safetensors.torch import load_file

        if expected_fingerprints:
            actual = self.base_fingerprints()
            for part, fp in expected_fingerprints.items():
                if actual.get(part) != fp:
                    raise ValueError(
                        f"base {part} differs from the one this checkpoint was trained on "
                        f"(config: llm={self.config.llm!r}, clip={self.config.clip_model!r}/"
                        f"{self.config.clip_pretrained!r}); load it with the same base weights"
                    )
        state = load_file(str(path))
        own = dict(self.named_parameters())
        expected = {n for n, p in own.items() if p.requires_grad}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{path}: trainable weights do not match this model (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}); was it saved with another prefix_length / LoRA config?"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(own[name].shape)}")
                own[name].copy_(tensor.to(own[name].dtype))
