"""The one prepared device check: GeMKR training and retrieval at the paper's scale on one GPU, in < 8 min.

Prints one table with three parts (``docs/gpu.md`` lists what travels to the device and the command):

1. **Training**: GeMKR steps with a LLaMA-7B-shaped LLM (random init, bf16, LoRA r=8 on q/v), a
   ViT-L/14-shaped open_clip tower (random) and a detector (``yolov8n.yaml`` when ultralytics is there,
   else a random RT-DETR by transformers): step time, samples/s, peak GPU memory, trainable parameters
   (paper: about 14M of 7.3B).
2. **Retrieval**: constrained decoding with 20 beams in 4 groups, clues of 10-15 tokens, over a KB of
   ``--kb-tokens`` (default 1.2M) Zipf-distributed tokens: p50/p99 ms/query at batch 1 and queries/s at
   batch 8/32/64, for a SmolLM2-135M-shaped and the 7B-shaped model, with the KB's share of decoding time.
   Random weights: the compute is the real one, the clues mean nothing.
3. **bf16 vs fp32**: share of queries whose top clue is identical and mean overlap of the top-5 documents,
   for the same model run in fp32 and under bf16 autocast (the real SmolLM2 when its weights are on the
   machine, else the SmolLM2-shaped random model; say which).

Targets on an H200: 7B batch-1 retrieval <= 150 ms/query, >= 50 queries/s batched, KB share <= 10%.
``--tiny`` runs the same code at toy sizes on a CPU (what ``tests`` and a machine without a GPU can check).

Usage: python -m benchmarks.gpu_check [--tiny] [--device cuda] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.env import print_environment

SIZES = {  # name: (hidden, layers, heads, kv heads, intermediate)
    "llama-7b": (4096, 32, 32, 32, 11008),
    "smollm2-135m": (576, 30, 9, 3, 1536),
    "tiny": (64, 2, 4, 2, 128),
}
QUESTIONS = ["What is the capital of France?", "Which animal is shown here?", "Who painted this picture?",
             "What is this building made of?", "When was this vehicle built?", "What does this device measure?"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tokenizer():
    """The packaged SmolLM2 tokenizer when installed, else a tiny word-level one (vocab 5000)."""
    try:
        from gemkr_llamaindex.assets import load_tokenizer

        return load_tokenizer("smollm2")
    except Exception:  # the device may lack the packaged model: a real tokenizer of our own
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        words = {f"w{i}": i for i in range(5000)}
        core = Tokenizer(models.WordLevel(vocab=words, unk_token="w0"))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="w1", pad_token="w2", bos_token="w3")
        return tok


def random_llama(size: str, vocab: int, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter = SIZES[size]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048,
                      bos_token_id=3, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def zipf_kb(out: Path, tokens: int, vocab: int, tok):
    from gemkr_llamaindex.kb import KnowledgeBase

    rng = np.random.default_rng(0)
    ranks = np.arange(1, vocab - 10)
    p = 1.0 / ranks**1.05
    p /= p.sum()
    ids = rng.choice(ranks + 9, size=tokens, p=p)
    docs = ((f"d{i}", ids[i * 100 : (i + 1) * 100]) for i in range(tokens // 100))
    return KnowledgeBase.build_from_token_ids(docs, out, vocab_size=vocab, tokenizer=tok, overwrite=True)


# ---------------------------------------------------------------------------------------------- 1. training
def training_part(args, tok) -> dict:
    from gemkr_llamaindex.model.config import GeMKRConfig
    from gemkr_llamaindex.model.gemkr import GeMKRModel
    from gemkr_llamaindex.model.tiny import TINY_CLIP_CFG, TINY_CLIP_NAME

    device, tiny = args.device, args.tiny
    llm = random_llama("tiny" if tiny else "llama-7b", len(tok), device, torch.float32 if tiny else torch.bfloat16)
    detector = "yolov8n.yaml"
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        from gemkr_llamaindex.model.detectors.tiny import build_tiny_rtdetr

        detector = "hf:" + str(build_tiny_rtdetr(Path(args.work) / "rtdetr", image_size=64 if tiny else 640))
    clip = dict(clip_model=TINY_CLIP_NAME, clip_model_cfg=TINY_CLIP_CFG) if tiny else dict(clip_model="ViT-L-14")
    cfg = GeMKRConfig(llm="(random)", clip_pretrained=None, detector=detector, detector_conf=1e-6, **clip)
    model = GeMKRModel(cfg, device=device, base_llm=(llm, tok)).train()
    trainable, total = model.num_parameters()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=6e-5)
    bs = 2 if tiny else 12  # the paper's batch
    rng = np.random.default_rng(0)
    from PIL import Image

    size = 64 if tiny else 480
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(bs)]
    clue = tok(" knowledge clue of ten tokens or so for the", add_special_tokens=False).input_ids[:12]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.train_steps + 2):
        sync(device)
        t = time.perf_counter()
        with autocast:
            visual = model.visual_inputs(images, cache_dir=None)
            out = model([QUESTIONS[i % len(QUESTIONS)] for i in range(bs)], [clue] * bs, visual=visual)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    step_s = statistics.median(times)
    return {"llm": "tiny" if tiny else "llama-7b (random, bf16)", "vision": cfg.clip_model, "detector": detector,
            "batch": bs, "step_s": step_s, "samples_per_s": bs / step_s, "peak_gib": peak,
            "trainable": trainable, "total": total}


# ---------------------------------------------------------------------------------------------- 2. retrieval
def retrieval_part(args, tok, kb, size: str, batches: list[int]) -> dict:
    from gemkr_llamaindex.decoding import ConstrainedBeamSearch, DecodingConfig, HFBackend, Prompts, SearchStats

    dtype = torch.float32 if args.tiny else torch.bfloat16
    llm = random_llama(size, len(tok), args.device, dtype)
    cfg = DecodingConfig(num_beams=20, num_groups=4, min_length=10, max_length=15)
    search = ConstrainedBeamSearch(cfg)

    def prompts(n: int, offset: int) -> Prompts:
        rows = [tok(QUESTIONS[(offset + i) % len(QUESTIONS)]).input_ids for i in range(n)]
        width = max(map(len, rows))
        ids = torch.full((n, width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return Prompts(attention_mask=mask, input_ids=ids)

    def once(n: int, offset: int, stats: SearchStats) -> float:
        sync(args.device)
        t = time.perf_counter()
        search(HFBackend(llm), prompts(n, offset), n, kb, end_token_id=tok.eos_token_id, stats=stats)
        sync(args.device)
        return time.perf_counter() - t

    once(1, 0, SearchStats())  # warm-up
    stats = SearchStats()
    single = [once(1, i, stats) * 1e3 for i in range(args.queries)]
    out = {"model": size, "p50_ms": statistics.median(single), "p99_ms": float(np.percentile(single, 99)),
           "kb_share": stats.kb / max(stats.total, 1e-9)}
    for b in batches:
        st = SearchStats()
        dt = once(b, 0, st)
        out[f"qps_{b}"] = b / dt
    return out  # the model goes with this frame; the next part's fits in the freed memory


# ---------------------------------------------------------------------------------------------- 3. bf16 vs fp32
def precision_part(args, tok, kb) -> dict:
    from gemkr_llamaindex.decoding import ConstrainedBeamSearch, DecodingConfig, HFBackend, Prompts

    try:
        from gemkr_llamaindex.model.llm import load_llm

        if args.tiny:
            raise RuntimeError("tiny run")
        llm, tok2 = load_llm("smollm2", device=args.device, dtype=torch.float32)
        if tok2.get_vocab() != tok.get_vocab():
            raise RuntimeError("tokenizer differs from the KB's")
        which = "SmolLM2-135M-Instruct (real weights)"
    except Exception:
        llm = random_llama("tiny" if args.tiny else "smollm2-135m", len(tok), args.device, torch.float32)
        which = "SmolLM2-135M-shaped (random weights)"
    cfg = DecodingConfig(num_beams=20, num_groups=4, min_length=10, max_length=15)
    rows = [tok(q).input_ids for q in QUESTIONS]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    prompts = Prompts(attention_mask=mask, input_ids=ids)
    runs = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        backend = HFBackend(llm, autocast_dtype=dtype or torch.float32)
        runs[name] = ConstrainedBeamSearch(cfg)(backend, prompts, len(rows), kb, end_token_id=tok.eos_token_id)
    same_top = [bool(a.clues and b.clues and a.clues[0].token_ids == b.clues[0].token_ids)
                for a, b in zip(runs["fp32"], runs["bf16"])]
    overlap = [len({d.doc_id for d in a.docs[:5]} & {d.doc_id for d in b.docs[:5]}) / 5
               for a, b in zip(runs["fp32"], runs["bf16"])]
    return {"model": which, "same_top_clue": sum(same_top) / len(same_top), "top5_overlap": statistics.mean(overlap)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (checks the script itself)")
    p.add_argument("--device", default=None)
    p.add_argument("--kb-tokens", type=int, default=None)
    p.add_argument("--queries", type=int, default=None, help="batch-1 queries for p50/p99")
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/gemkr-gpu-check")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    env = print_environment()
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.kb_tokens = args.kb_tokens or (20_000 if args.tiny else 1_200_000)
    args.queries = args.queries or (3 if args.tiny else 30)
    args.train_steps = args.train_steps or (2 if args.tiny else 10)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok = tokenizer()
    kb = zipf_kb(Path(args.work) / "kb", args.kb_tokens, len(tok), tok)
    print(f"# GeMKR device check: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}, "
          f"torch {torch.__version__}, KB {kb.num_tokens:,} tokens / {kb.num_docs:,} docs", flush=True)
    results: dict = {"device": args.device, "kb_tokens": kb.num_tokens, "environment": env}
    results["training"] = training_part(args, tok)
    tr = results["training"]
    print("\n| part | setting | figure |\n|---|---|---|")
    print(f"| training | {tr['llm']} + {tr['vision']} (random) + {tr['detector']}, batch {tr['batch']} | "
          f"{tr['step_s'] * 1e3:.0f} ms/step, {tr['samples_per_s']:.1f} samples/s, peak {tr['peak_gib']:.1f} GiB, "
          f"trainable {tr['trainable'] / 1e6:.1f}M of {tr['total'] / 1e9:.2f}B |", flush=True)
    batches = [8] if args.tiny else [8, 32, 64]
    results["retrieval"] = [retrieval_part(args, tok, kb, s, batches)
                            for s in (["tiny"] if args.tiny else ["smollm2-135m", "llama-7b"])]
    for r in results["retrieval"]:
        qps = ", ".join(f"b{b} {r[f'qps_{b}']:.1f} q/s" for b in batches)
        print(f"| retrieval | {r['model']}, 20 beams / 4 groups, 10-15 tokens | p50 {r['p50_ms']:.0f} ms, "
              f"p99 {r['p99_ms']:.0f} ms at batch 1; {qps}; KB share {r['kb_share']:.1%} |", flush=True)
    results["precision"] = precision_part(args, tok, kb)
    pr = results["precision"]
    print(f"| bf16 vs fp32 | {pr['model']} | same top clue {pr['same_top_clue']:.0%}, top-5 doc overlap "
          f"{pr['top5_overlap']:.0%} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
