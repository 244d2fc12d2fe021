"""Per-query latency of GeMKR retrieval, split into its parts, for both KB-constraint modes.

Runs SmolLM2-135M-Instruct (packaged) zero-shot over the KB of the 10,033 packaged Wikipedia summaries
with the paper's decoding settings (20 beams in 4 groups, clues of 10-15 tokens) and reports per query:
LLM forward (prefill + one batched step per token), KB constraint (GetNext / extend / ValidDistinct
calls), bookkeeping (the search loop in Python), at batch size 1 and batched, for constraint mode
(a) "mask" (list every continuation) and (b) "topk" (check the model's best tokens).

With ``--gemkr`` it also times the full multimodal GeMKR path on the mini benchmark's packaged photos:
detector (a yolov8n: YOLO forward + NMS, then the frozen CLIP on the crops), vision (the object-aware
CLIP tower + alignment + the template), then decoding by the LoRA-wrapped SmolLM2. No pretrained CLIP or
YOLO weights exist offline, so both are random-init towers of the real architectures (``--clip-model``,
default ViT-B-16; the paper's ViT-L-14 also works): the compute, hence the latency, is the real one. The
detector runs with a near-zero confidence threshold so every image yields the full 5 objects (worst case).
Random weights make the clues meaningless; only the timings are the point.

Measured on the 2-core CPU (``--queries 8 --batch 4 --gemkr``; ms per query, batch 1 / batch 4):
zero-shot SmolLM2, topk: 905 / 507 (LLM 867 / 479, KB 7.4 / 4.4, KB share 0.8-0.9%; mask: 887 / 509,
identical clues). GeMKR path, ViT-B-16 + yolov8n with 5 objects: 1,915 / 1,450 = detector + 5 crops
708 / 692, vision 189 / 158, LLM 977 / 571, KB 8.5 / 5.3 (0.8-0.9% of decoding), bookkeeping 32 / 24.

Usage: python benchmarks/retrieval_latency.py [--queries 8] [--batch 4] [--device cpu] [--gemkr]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

QUESTIONS = [
    "What is the capital of France?",
    "Who painted the Mona Lisa?",
    "What does a bee make?",
    "Which planet is known as the red planet?",
    "What is the largest ocean on Earth?",
    "Who wrote Romeo and Juliet?",
    "What gas do plants absorb?",
    "What is the tallest mountain in the world?",
    "What animal is known as the king of the jungle?",
    "Which instrument has 88 keys?",
    "What is the currency of Japan?",
    "Who developed the theory of relativity?",
]


def run(generator, questions, batch: int) -> dict:
    from gemkr_llamaindex.llamaindex import ClueQuery

    generator.batch_size = batch
    search = generator.search
    search.timings.clear()
    t = time.perf_counter()
    results = generator.generate([ClueQuery(question=q) for q in questions])
    wall = time.perf_counter() - t
    n = len(questions)
    tm = search.timings
    return {
        "wall_ms": wall / n * 1e3,
        "model_ms": tm["model"] / n * 1e3,
        "kb_ms": tm["kb"] / n * 1e3,
        "bookkeeping_ms": (tm["total"] - tm["model"] - tm["kb"]) / n * 1e3,
        "prompt_ms": (wall - tm["total"]) / n * 1e3,
        "clues": statistics.mean(len(r.clues) for r in results),
        "docs": statistics.mean(len(r.docs) for r in results),
        "results": results,
    }


def run_gemkr(generator, queries, batch: int) -> dict:
    """Per-query ms of detector / vision / LLM forward / KB / bookkeeping for the multimodal GeMKR path."""
    import torch

    from gemkr_llamaindex.decoding import HFBackend, Prompts

    model, search = generator.model, generator.search
    parts = dict.fromkeys(("detector", "vision", "model", "kb", "bookkeeping"), 0.0)
    objects = 0
    backend = HFBackend(model.llm)
    t_all = time.perf_counter()
    for i in range(0, len(queries), batch):
        chunk = queries[i : i + batch]
        t = time.perf_counter()
        visual = model.visual_inputs([im for _, im in chunk])
        objects += int(visual.object_mask.sum())
        parts["detector"] += time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode():
            p = model.prompt_embeds([q for q, _ in chunk], visual=visual)
        parts["vision"] += time.perf_counter() - t
        search.timings.clear()
        search(backend, Prompts(attention_mask=p.attention_mask, inputs_embeds=p.inputs_embeds), len(chunk))
        tm = search.timings
        parts["model"] += tm["model"]
        parts["kb"] += tm["kb"]
        parts["bookkeeping"] += tm["total"] - tm["model"] - tm["kb"]
    n = len(queries)
    out = {k: v / n * 1e3 for k, v in parts.items()}
    out["wall"] = (time.perf_counter() - t_all) / n * 1e3
    out["objects"] = objects / n
    return out


def gemkr_table(args, kb, cfg) -> None:
    """Build a GeMKR model of the real architectures (random CLIP and YOLO) and print its latency split."""
    from gemkr_llamaindex.images import load_packaged_image
    from eval_vqa.mini import load_mini_benchmark
    from gemkr_llamaindex.llamaindex import ClueGenerator
    from gemkr_llamaindex.model.gemkr import GeMKRConfig, GeMKRModel

    config = GeMKRConfig(llm="smollm2", clip_model=args.clip_model, clip_pretrained=None, detector="yolov8n.yaml",
                         detector_conf=1e-6)  # a random head scores ~1e-5
    model = GeMKRModel(config, device=args.device).eval()
    gen = ClueGenerator(kb, model=model, config=cfg)
    rows = load_mini_benchmark()[: args.queries]
    queries = [(r["question"], load_packaged_image(r["image"]["package"], r["image"]["name"])) for r in rows]
    run_gemkr(gen, queries[:1], 1)  # warm-up
    print(f"\n## GeMKR multimodal path: {args.clip_model} (random) + yolov8n (random, 5 objects) + SmolLM2-135M "
          f"with LoRA, constraint {cfg.constraint}, {len(queries)} mini-benchmark photos\n")
    print("| batch | ms/query | detector + crops | vision | LLM forward | KB constraint | bookkeeping | KB share of decoding | objects |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in (1, args.batch):
        r = run_gemkr(gen, queries, batch)
        share = r["kb"] / max(r["model"] + r["kb"] + r["bookkeeping"], 1e-9)
        print(f"| {batch} | {r['wall']:.0f} | {r['detector']:.0f} | {r['vision']:.0f} | {r['model']:.0f} | "
              f"{r['kb']:.1f} | {r['bookkeeping']:.0f} | {share:.1%} | {r['objects']:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--min-length", type=int, default=10)
    p.add_argument("--max-length", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gemkr", action="store_true", help="also time the multimodal GeMKR path (detector, vision)")
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip architecture of the --gemkr vision tower")
    args = p.parse_args()

    import torch

    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.kb.packaged import wiki_summaries_kb
    from gemkr_llamaindex.llamaindex import ClueGenerator

    torch.manual_seed(0)
    kb = wiki_summaries_kb()
    questions = (QUESTIONS * 4)[: args.queries]
    rows = []
    gens = {}
    for mode in ("mask", "topk"):
        cfg = DecodingConfig(num_beams=args.beams, num_groups=args.groups, min_length=args.min_length,
                             max_length=args.max_length, constraint=mode)
        gen = gens.get("base") or ClueGenerator.zero_shot_from(kb, "smollm2", config=cfg)
        gens["base"] = gen
        gen.search.config = cfg
        gen.llm.to(args.device)
        run(gen, questions[:1], 1)  # warm-up
        for batch in (1, args.batch):
            r = run(gen, questions, batch)
            rows.append((mode, batch, r))
    same = all(
        [c.token_ids for c in a.clues] == [c.token_ids for c in b.clues]
        for a, b in zip(rows[0][2]["results"], rows[2][2]["results"])
    )
    print(f"# Retrieval latency ({platform.machine()}, device {args.device}, torch {torch.__version__})")
    print(f"command: {' '.join(sys.argv)}")
    print(f"SmolLM2-135M zero-shot, KB {kb.num_docs:,} docs / {kb.num_tokens:,} tokens, {args.beams} beams in "
          f"{args.groups} groups, clues {args.min_length}-{args.max_length} tokens, {len(questions)} queries\n")
    print("| constraint | batch | ms/query | prompt | LLM forward | KB constraint | bookkeeping | KB share | clues | docs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, batch, r in rows:
        share = r["kb_ms"] / max(r["model_ms"] + r["kb_ms"] + r["bookkeeping_ms"], 1e-9)
        print(f"| {mode} | {batch} | {r['wall_ms']:.0f} | {r['prompt_ms']:.0f} | {r['model_ms']:.0f} | {r['kb_ms']:.1f} | "
              f"{r['bookkeeping_ms']:.0f} | {share:.1%} | {r['clues']:.1f} | {r['docs']:.1f} |")
    print(f"\n(a) mask and (b) topk returned identical clues for every query: {same}")
    ex = rows[-1][2]["results"][0]
    print(f"\nexample: {questions[0]!r}")
    for c in ex.clues[:5]:
        print(f"  {c.score:7.3f}  {c.doc_id!r:40}  {c.text!r}")
    if args.gemkr:
        gemkr_table(args, kb, gens["base"].search.config)


if __name__ == "__main__":
    main()
