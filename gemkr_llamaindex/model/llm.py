"""The textual backbone: any Hugging Face causal LM, frozen, adapted with LoRA through peft.

Paper §Model Training: the LLM is frozen and adapted with low-rank adaptation. Defaults follow common
LLaMA practice (r=8, alpha=16 on the query and value projections); all are configurable. Weights load in
bf16 on GPU and fp32 on CPU (CPU bf16 matmuls are slow and imprecise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def default_dtype(device: str | torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_llm(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             *, allow_download: bool = False):
    """``(model, tokenizer)`` for a local folder, a ``.gguf`` file or ``"smollm2"``, frozen and in eval mode.
    A hub id is refused unless ``allow_download=True``: loading never reaches the network by itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gemkr_llamaindex.assets import resolve_model

    path = resolve_model(name_or_path)  # "smollm2", a .gguf file (converted once), a folder or a hub id
    if not allow_download and not Path(path).is_dir():
        path = _cached_hub_folder(path)
    dtype = dtype or default_dtype(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:
        raise OSError(
            f"cannot load the LLM {name_or_path!r}: {exc}. Give a local folder with config, weights and "
            "tokenizer (this library never downloads at run time unless the Hugging Face cache has it)."
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def _cached_hub_folder(hub_id: str) -> str:
    """The local Hugging Face cache's folder of ``hub_id`` (looked up without the network), else ValueError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError):
        raise ValueError(f"the LLM {hub_id!r} is a Hugging Face hub id that is not in the local cache, and loading "
                         "never reaches the network: pass the path of a local model folder (or a .gguf file), or "
                         "allow_download=True") from None


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters; the base weights stay frozen, adapters stay fp32."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in present]
    if missing:
        raise ValueError(
            f"LoRA target modules {missing} are not in {type(model).__name__}; "
            f"set `lora_target_modules` to names such as {sorted(n for n in present if 'proj' in n)[:8]}"
        )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)
