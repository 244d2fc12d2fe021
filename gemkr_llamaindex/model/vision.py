"""Frozen open_clip vision tower with object-aware prefix tuning and dual-flow attention.

Paper, §Object-aware Prefix Tuning:

* Eq. 3  ``H_v = F_visual(X_P, X_I; Θ_v)`` -- the CLIP tower Θ_v stays frozen; only the prefixes learn.
* Eq. 4  ``X_P^i = X_Pr^i + H_R`` -- a learnable prefix per layer (not shared) plus the projected object
  features ``H_R = Linear(X_R)``, zero-padded to the prefix length.
* Eq. 5-6 ``H_O^i = Att(Q_h, K_p, V_p) * σ + Att(Q_h, K_h, V_h)`` -- queries come from the visual tokens
  only; keys/values for the prefix and the hidden states are computed separately with the layer's own
  frozen projections; the prefix flow is scaled by a gate σ initialised at zero, so at step 0 the tower
  computes exactly what the frozen backbone computes.

The open_clip modules are wrapped by reference: their weights are never copied, re-initialised or
re-implemented. The hidden-state flow is the block's own ``attention`` call, so with σ = 0 the output is
bit-for-bit the backbone's.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

VISION_EXTRA_HINT = 'pip install "gemkr-llamaindex[vision]"'


def import_open_clip():
    """open_clip, or an ImportError that names the extra to install (also used by eval's CLIP baseline)."""
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError(f"the GeMKR vision tower needs open_clip ({exc}); install the vision extra: "
                          f"{VISION_EXTRA_HINT}") from exc
    return open_clip


def register_clip_model_config(name: str, model_cfg: dict[str, Any]) -> None:
    """Make an open_clip architecture ``name`` available from a config dict (e.g. a tiny test ViT).

    open_clip reads architectures from JSON files; we write one under the cache directory.
    """
    open_clip = import_open_clip()

    from gemkr_llamaindex import assets

    if name in open_clip.list_models():
        return
    if not _ARCH_NAME.match(name):  # it names a file under the cache: no separators, no "..", no hidden files
        raise ValueError(f"open_clip architecture name {name!r} must be letters, digits, '-', '_' and '.'")
    folder = assets.cache_dir() / "open_clip_configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(model_cfg, indent=1))
    tmp.replace(path)
    open_clip.add_model_config(path)


_ARCH_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*$")
#: open_clip config keys that make it fetch weights or configs from a hub while building the model.
_REMOTE_CFG_KEYS = (("vision_cfg", "timm_model_pretrained"), ("text_cfg", "hf_model_name"), ("text_cfg", "hf_tokenizer_name"))


def check_clip_is_local(model_name: str, pretrained: str | None, model_cfg: dict[str, Any] | None) -> None:
    """Raise ``ValueError`` if building this tower would reach the network: an ``hf-hub:`` architecture, a
    ``pretrained`` that is not a local file (an open_clip tag such as ``"openai"``), or a config that names
    hub weights. Building never downloads unless the caller says ``allow_download=True``."""
    remote = None
    if model_name.startswith("hf-hub:"):
        remote = f"clip_model {model_name!r} is a Hugging Face hub name"
    elif pretrained is not None and not Path(pretrained).expanduser().is_file():
        remote = f"clip_pretrained {pretrained!r} is not a local file (as an open_clip tag it is downloaded)"
    else:
        for part, key in _REMOTE_CFG_KEYS:
            if ((model_cfg or {}).get(part) or {}).get(key):
                remote = f"clip_model_cfg {part}.{key} names hub weights"
    if remote:
        raise ValueError(f"{remote}, and loading never reaches the network: give the path of a local checkpoint "
                         "file as clip_pretrained (or None for a random tower), or pass allow_download=True")


def load_clip(
    model_name: str, pretrained: str | None = None, model_cfg: dict[str, Any] | None = None, seed: int = 0,
    *, allow_download: bool = False,
) -> tuple[nn.Module, Any, int]:
    """Build an open_clip model, return ``(visual tower, eval preprocess, image size)``.

    ``pretrained`` is a local checkpoint path (an open_clip tag only with ``allow_download=True``); ``None``
    gives a random tower, seeded with ``seed`` so the same config always builds the same frozen weights.
    The text tower is dropped: GeMKR only needs the image encoder.
    """
    open_clip = import_open_clip()

    if pretrained is not None and Path(pretrained).suffix and not Path(pretrained).expanduser().is_file():
        raise FileNotFoundError(f"CLIP checkpoint {pretrained} does not exist; give an existing file or a tag")
    if not allow_download:
        check_clip_is_local(model_name, pretrained, model_cfg)
    if model_cfg is not None:
        register_clip_model_config(model_name, model_cfg)
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(
            f"unknown open_clip architecture {model_name!r}; pass one of open_clip.list_models() "
            "or give its config in `clip_model_cfg`"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        except (OSError, RuntimeError, ValueError) as exc:
            raise RuntimeError(
                f"cannot load CLIP {model_name!r} with pretrained={pretrained!r}: {exc}. Without network access, "
                "give a local checkpoint file as `clip_pretrained` (or None for a random tower)"
            ) from exc
    visual = model.visual
    del model
    visual.eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    return visual, preprocess, size


class ObjectProjection(nn.Module):
    """``H_R = Linear(X_R)`` (Eq. 4 input): CLIP embeddings of object crops into the tower's width.

    Padded object slots (mask False) come out as exact zeros, which is the paper's zero padding.
    """

    def __init__(self, clip_dim: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(clip_dim, width)

    def forward(self, x_r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x_r: (B, r, clip_dim), mask: (B, r) bool -> (B, r, width)
        return self.linear(x_r) * mask.unsqueeze(-1).to(x_r.dtype)


class ObjectAwarePrefix(nn.Module):
    """Eq. 4: ``X_P^i = X_Pr^i + H_R`` with one learnable ``l x d`` prefix per layer (not shared)."""

    def __init__(self, num_layers: int, length: int, width: int, max_objects: int) -> None:
        super().__init__()
        if max_objects > length:
            raise ValueError(f"prefix length {length} must be >= max objects {max_objects} (H_R is padded to l)")
        self.length = length
        self.prefixes = nn.Parameter(torch.randn(num_layers, length, width) * 0.02)

    def forward(self, layer: int, h_r: torch.Tensor | None, batch: int) -> torch.Tensor:
        prefix = self.prefixes[layer].unsqueeze(0).expand(batch, -1, -1)  # (B, l, d)
        if h_r is None or h_r.shape[1] == 0:
            return prefix
        padded = F.pad(h_r, (0, 0, 0, self.length - h_r.shape[1]))  # zero-pad r -> l
        return prefix + padded.to(prefix.dtype)


class DualFlowAttention(nn.Module):
    """Eq. 5-6 for one frozen ``nn.MultiheadAttention`` (held by reference).

    ``hidden flow``: the frozen module itself on the hidden states (exactly the backbone's call).
    ``prefix flow``: queries from the hidden states, keys/values from the prefix, both via the same
    frozen in-projection; its own softmax (Eq. 5); then the frozen output projection *without* bias, since
    the bias is already in the hidden flow (out_proj is linear, so this equals applying it to the sum of
    Eq. 6). The prefix flow is scaled per head by a gate σ initialised to zero.
    """

    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
            raise TypeError("dual-flow attention needs an nn.MultiheadAttention with a packed in_proj_weight")
        self.attn = attn  # frozen, shared with the backbone
        self.gate = nn.Parameter(torch.zeros(attn.num_heads))

    def _project(self, x: torch.Tensor, index: int) -> torch.Tensor:
        d = self.attn.embed_dim
        w = self.attn.in_proj_weight[index * d : (index + 1) * d]
        b = self.attn.in_proj_bias[index * d : (index + 1) * d] if self.attn.in_proj_bias is not None else None
        out = F.linear(x, w, b)  # (B, T, d)
        bsz, t, _ = out.shape
        h = self.attn.num_heads
        return out.view(bsz, t, h, d // h).transpose(1, 2)  # (B, heads, T, d_head)

    def prefix_flow(self, hidden: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """``Att(Q_h, K_p, V_p)`` through the frozen output weight, gated: (B, T, d)."""
        q = self._project(hidden, 0)
        k = self._project(prefix, 1)
        v = self._project(prefix, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v  # Eq. 5
        att = att * self.gate.to(att.dtype).view(1, -1, 1, 1)  # σ per head
        bsz, h, t, dh = att.shape
        att = att.transpose(1, 2).reshape(bsz, t, h * dh)
        return F.linear(att, self.attn.out_proj.weight)

    def forward(self, hidden: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Eq. 6 on batch-first tensors: hidden (B, T, d), prefix (B, l, d)."""
        if self.attn.batch_first:
            h_flow = self.attn(hidden, hidden, hidden, need_weights=False)[0]
        else:
            x = hidden.transpose(0, 1)
            h_flow = self.attn(x, x, x, need_weights=False)[0].transpose(0, 1)
        return h_flow + self.prefix_flow(hidden, prefix)


class PrefixResidualBlock(nn.Module):
    """One open_clip ``ResidualAttentionBlock`` (by reference) with its attention made dual-flow.

    The block's pre-norm ``ln_1`` is applied to the prefix as well, as it would be to any token entering
    the block's self-attention (Eq. 3 feeds ``[X_P; H_I]`` to the block).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
            raise TypeError(
                f"{type(block).__name__} is not a standard open_clip ResidualAttentionBlock; "
                "choose a CLIP ViT without custom attention blocks"
            )
        self.block = block
        self.dual_attn = DualFlowAttention(block.attn)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        b = self.block
        x = x + b.ls_1(self.dual_attn(b.ln_1(x), b.ln_1(prefix)))
        x = x + b.ls_2(b.mlp(b.ln_2(x)))
        return x


@dataclass
class VisionOutput:
    """``h_cls`` (B, d) pooled before CLIP's projection, ``h_r`` (B, r, d) projected objects, their mask."""

    h_cls: torch.Tensor
    h_r: torch.Tensor
    object_mask: torch.Tensor
    hidden_states: torch.Tensor


class ObjectAwareVisionTower(nn.Module):
    """Eq. 3: the frozen CLIP ViT fed with object-aware prefixes through dual-flow attention.

    Trainable: per-layer prefixes, the object projection and the per-layer gates. Everything from
    open_clip stays frozen and in eval mode (no patch dropout) whatever ``train()`` is called with.
    """

    def __init__(self, visual: nn.Module, prefix_length: int = 10, max_objects: int = 5) -> None:
        super().__init__()
        if not hasattr(visual, "transformer") or not hasattr(visual, "_embeds"):
            raise TypeError("only open_clip VisionTransformer towers are supported (not ResNet/timm towers)")
        self.visual = visual
        self.visual.requires_grad_(False)
        width = visual.transformer.width
        self.width = width
        self.clip_dim = visual.output_dim
        self.max_objects = max_objects
        self.blocks = nn.ModuleList(PrefixResidualBlock(b) for b in visual.transformer.resblocks)
        self.prefix = ObjectAwarePrefix(len(self.blocks), prefix_length, width, max_objects)
        self.object_proj = ObjectProjection(self.clip_dim, width)

    def train(self, mode: bool = True) -> ObjectAwareVisionTower:
        super().train(mode)
        self.visual.eval()
        return self

    @torch.no_grad()
    def encode_crops(self, pixels: torch.Tensor) -> torch.Tensor:
        """``X_R``: the plain frozen CLIP image embedding of object crops, (n, 3, S, S) -> (n, clip_dim)."""
        ref = next(self.visual.parameters())
        return self.visual(pixels.to(ref.device, ref.dtype))

    def forward(
        self,
        pixels: torch.Tensor,
        object_features: torch.Tensor | None = None,
        object_mask: torch.Tensor | None = None,
    ) -> VisionOutput:
        """pixels (B, 3, S, S); object_features ``X_R`` (B, r, clip_dim) with mask (B, r), r <= max_objects."""
        bsz = pixels.shape[0]
        if object_features is None:
            object_features = pixels.new_zeros(bsz, 0, self.clip_dim)
            object_mask = torch.zeros(bsz, 0, dtype=torch.bool, device=pixels.device)
        if object_mask is None:
            object_mask = torch.ones(object_features.shape[:2], dtype=torch.bool, device=pixels.device)
        if object_features.shape[1] > self.max_objects:
            raise ValueError(f"{object_features.shape[1]} objects given; at most {self.max_objects} are supported")
        h_r = self.object_proj(object_features.to(pixels.dtype), object_mask)  # (B, r, d)
        x = self.visual._embeds(pixels)  # (B, 1 + patches, d), frozen patch/pos embedding
        for i, block in enumerate(self.blocks):
            x = block(x, self.prefix(i, h_r, bsz))  # Eq. 4 then Eq. 6
        pooled, _ = self.visual._pool(x)
        return VisionOutput(h_cls=pooled, h_r=h_r, object_mask=object_mask, hidden_states=x)

    @torch.no_grad()
    def frozen_reference(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The untouched backbone's ``(pooled, hidden_states)``, for checking the gate-at-zero identity."""
        x = self.visual.transformer(self.visual._embeds(pixels))
        return self.visual._pool(x)[0], x
