"""Train the checkpoint that ships for the packaged Wikipedia KB (``gemkr_llamaindex/checkpoints_data/wiki-smollm2``).

What it is: SmolLM2-135M-Instruct (packaged) + LoRA, no vision tower: the query reaches the LLM as question +
visual tags (the paper's caption-only ablation), so the checkpoint carries no random ViT. The KB holds the
summaries as titled passages (``"Cat. The cat, also called ..."``, DPR's layout). Training data is made from
the KB alone (``training.corpus_queries``): for each of the 10,033 summaries one named question and two
pictured ones (six for the 383 documents the ImageNet classifier has classes for), whose tags slot holds
what the library's tagger would say about a photo of the entity (the ImageNet classes WordNet files under
it, classes its text names, wrong classes, OCR text that names it less than half of the time). Targets
(``clue_mode="mixed"``): 60% of the queries' clues are the document's opening, i.e. its title and first
words, which anchored decoding groups generate (GENRE-style entity generation inside the FM-index); the
others are sampled by the paper's clue sampler from the sentences that hold the question's keywords, which
the free groups generate (``anchor="mixed"``). ``--clue-mode doc_start`` trains on openings only. No
benchmark question is used anywhere; the mini benchmark is an evaluation set only, and the decoding
defaults come from the development questions (``benchmarks/data``).

Usage (about an hour on 2 CPU cores: 3,000 steps of 8, bf16 autocast where the CPU has bf16 instructions;
WordNet from Debian's ``wordnet-base`` if installed)::

    python scripts/train_wiki_checkpoint.py --out runs/wiki-smollm2
    python scripts/train_wiki_checkpoint.py --install runs/wiki-smollm2/final
    python scripts/train_wiki_checkpoint.py --llm /path/qwen.gguf --out runs/wiki-qwen

``--llm`` trains another LLM the same way (a name, a Hugging Face folder or a GGUF file; see
``benchmarks/llm_scaling.py``) over a KB of the same summaries in that LLM's tokenizer (built once under the
cache); such a checkpoint is for benchmarks, ``--install`` ships only the SmolLM2 one.

``--install`` copies a finished checkpoint into the package (weights, config, decoding settings, the corpus
fingerprint) and the loss curve next to it.
"""

from __future__ import annotations

import os

# Sleeping (not spinning) OpenMP threads: on a 2-core machine shared with any other process, spinning
# threads slow torch several-fold. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shutil
import time
from pathlib import Path

TASK = ""  # no task line: the fine-tuned model needs none, and every prompt token costs CPU time
# picked on the development questions (benchmarks/data; benchmarks/evidence_sweep.py): documents ranked by the
# evidence of the search's clues (at half weight) and of the query's own words and their inflections;
# prior_weight and doc_score rank the clues under the paper's scoring (DecodingConfig.with_scoring("paper"))
DECODING = {"num_beams": 20, "num_groups": 4, "min_length": 3, "max_length": 8, "anchor": "mixed", "prior_weight": 0.25,
            "doc_score": "logsumexp", "evidence": "clues,query,inflections", "evidence_alpha": 1.5, "evidence_beta": 0.0,
            "evidence_generated_weight": 0.5}


def summaries_kb(llm: str):
    """The KB of the packaged summaries in ``llm``'s tokenizer (the packaged one for SmolLM2)."""
    from gemkr_llamaindex.kb_cache import wiki_summaries_kb

    if llm == "smollm2":
        return wiki_summaries_kb()
    from eval_vqa.gemkr import corpus_kb
    from gemkr_llamaindex.assets import load_tokenizer, wiki_summaries

    return corpus_kb(list(wiki_summaries()), load_tokenizer(llm), progress=True)  # the KB eval-vqa uses too


def config(out: Path, steps: int, batch: int, lr: float, named: int, pictured: int, clue_length: int,
           clue_mode: str = "mixed", llm: str = "smollm2", opening_share: float = 0.6, pictured_extra: int = 4,
           init_from: str | None = None, seed: int = 0, clue_keywords: str = "question", described: int = 0):
    from gemkr_llamaindex.training.trainer import TrainConfig

    kb = summaries_kb(llm)
    return TrainConfig(
        kb_dir=str(kb.path), output_dir=str(out),
        corpus_queries={"named": named, "pictured": pictured, "metadata": "wiki-summaries", "wordnet": "auto",
                        "imagenet": True, "pictured_extra": pictured_extra, "described": described},
        init_from=init_from,
        clue_mode=clue_mode, opening_share=opening_share, clue_keywords=clue_keywords, clue_length=clue_length,
        clues_per_doc=1,
        decoding=DECODING,  # one clue per query
        model={"llm": llm, "clip_model": None, "clip_pretrained": None, "task_description": TASK,
               "lora_r": 16, "lora_alpha": 32,
               "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        lr=lr, warmup_steps=min(max(steps // 20, 10), 50), max_steps=steps, min_lr_ratio=0.1, batch_size=batch,
        save_every=max(steps // 6, 50), seed=seed, device="cpu",
    )


def _half_copy(src: Path, dst: Path) -> None:
    """The trainable weights in float16 (half the package size; loading casts back to the model's dtype).

    LoRA weights are small numbers, well inside float16's range, and float16 keeps 11 bits of mantissa:
    measured on the shipped checkpoint, the same documents in the same order and clue scores within 6e-5
    of the float32 weights' for three questions."""
    import torch
    from safetensors.torch import load_file, safe_open, save_file

    state = load_file(str(src))
    big = max(float(t.abs().max()) for t in state.values())
    if big > 6e4:
        raise ValueError(f"{src}: a weight of magnitude {big:g} does not fit float16")
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata()
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(dst), metadata=metadata)
    dst.chmod(0o644)


def install(final: Path) -> Path:
    """Copy a trained checkpoint into the package, with the fingerprint of the corpus it was trained for and
    :data:`DECODING` as its decoding settings (picked on the development questions after training)."""
    from gemkr_llamaindex.assets import wiki_summaries
    from gemkr_llamaindex.checkpoints import CHECKPOINT_DIR, CORPUS_FILE, WIKI_SMOLLM2, corpus_fingerprint
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, file_sha256, swap_in, write_decoding

    target = CHECKPOINT_DIR / WIKI_SMOLLM2
    tmp = CHECKPOINT_DIR / f".{WIKI_SMOLLM2}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_decoding(tmp, DecodingConfig.from_options(DECODING))
    _half_copy(final / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
    meta = json.loads((final / CONFIG_FILE).read_text())
    meta["files"] = {WEIGHTS_FILE: file_sha256(tmp / WEIGHTS_FILE)}  # the float16 copy's checksum
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    for name in ("loss_curve.png", "losses.json"):
        if (final.parent / name).is_file():
            shutil.copy2(final.parent / name, tmp / name)
    (tmp / CORPUS_FILE).write_text(json.dumps(corpus_fingerprint(wiki_summaries()), indent=2))
    swap_in(tmp, target)
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/wiki-smollm2"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--named", type=int, default=1)
    p.add_argument("--pictured", type=int, default=2)
    p.add_argument("--clue-length", type=int, default=8)
    p.add_argument("--clue-mode", default="mixed", choices=["sampled", "doc_start", "mixed"])
    p.add_argument("--opening-share", type=float, default=0.6, help="mixed: share of targets that are openings")
    p.add_argument("--pictured-extra", type=int, default=4,
                   help="more pictured queries for documents the ImageNet classifier has classes for")
    p.add_argument("--init-from", default=None, help="start from this checkpoint's trainable weights")
    p.add_argument("--seed", type=int, default=0, help="data and order (another seed: other pseudo-queries)")
    p.add_argument("--clue-keywords", default="question", choices=["question", "question+tags"],
                   help="the text whose keywords steer the clue sampler")
    p.add_argument("--described", type=int, default=0,
                   help="described questions per document (the entity asked for by a fact of its text)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llm", default="smollm2", help="the LLM to train (name, folder or .gguf); default smollm2")
    p.add_argument("--install", type=Path, default=None, help="copy this finished checkpoint into the package")
    args = p.parse_args()
    if args.install is not None:
        print(f"installed {install(args.install)}")
        return

    import torch

    from gemkr_llamaindex.training.trainer import train

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    final = train(config(args.out, args.steps, args.batch, args.lr, args.named, args.pictured, args.clue_length,
                         args.clue_mode, args.llm, args.opening_share, args.pictured_extra, args.init_from, args.seed,
                         args.clue_keywords, args.described))
    print(f"trained in {time.perf_counter() - t0:.0f} s -> {final}")


if __name__ == "__main__":
    main()
