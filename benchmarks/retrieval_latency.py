"""Per-query latency of GeMKR retrieval, split into its parts, before/after the fused KB interface.

Runs SmolLM2-135M-Instruct (packaged) zero-shot over the KB of the 10,033 packaged Wikipedia summaries
with the paper's decoding settings (20 beams in 4 groups, clues of 10-15 tokens) and reports per query:
LLM forward (prefill + one batched step per token), KB constraint (time and number of KB calls),
bookkeeping (the search loop), at batch sizes 1, 8 and 32, for constraint mode (a) "mask" (list every
continuation) and (b) "topk" (check the model's best tokens). Each row runs two searches on the same
queries in the same process:

* **new**: the library's search: candidate selection as tensor ops where the log-probs are (only
  beams x m candidates reach the host) and the KB asked through the constraint interface, one fused
  ``step`` (extend + counts + unique document) per group step plus ``children`` for rare prefixes;
* **old**: ``tests/host_search.py`` (a test oracle), the search before that change (full log-prob rows to the host,
  separate ``extend`` / ``counts`` / ``unique_docs`` / ``next_tokens_of`` calls);

and asserts that both return identical clues (``anchor="any"``, ``allow_doc_end=False``: the old search
knows neither).

With ``--gemkr`` it also times the full multimodal GeMKR path on the mini benchmark's packaged photos:
detector (a yolov8n: YOLO forward + NMS, then the frozen CLIP on the crops), vision (the object-aware
CLIP tower + alignment + the template), then decoding by the LoRA-wrapped SmolLM2. No pretrained CLIP or
YOLO weights exist offline, so both are random-init towers of the real architectures (``--clip-model``,
default ViT-B-16; the paper's ViT-L-14 also works): the compute, hence the latency, is the real one. The
detector runs with a near-zero confidence threshold so every image yields the full 5 objects (worst case).
Random weights make the clues meaningless; only the timings are the point.

Usage: python -m benchmarks.retrieval_latency [--queries 8] [--batches 1 8 32] [--device cpu] [--gemkr]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time

from benchmarks.env import ROOT, print_environment

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


def host_search():
    """The search as it was before device-side candidate selection: the frozen test oracle kept beside the
    tests' other references (``tests/host_search.py``), loaded from its file (``tests`` is no package)."""
    spec = importlib.util.spec_from_file_location("host_search", ROOT / "tests" / "host_search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are defined
    spec.loader.exec_module(module)
    return module.HostSideBeamSearch


def run(generator, kb, questions, batch: int, search=None) -> dict:
    """ms/query of one search over ``questions`` (``search``: another search object, e.g. the old one)."""
    import torch

    from gemkr_llamaindex.decoding import HFBackend, SearchStats

    stats = SearchStats()
    results = []
    t = time.perf_counter()
    for i in range(0, len(questions), batch):
        chunk = questions[i : i + batch]
        prompts = generator.build_prompts(generator.prepare(chunk))
        if search is None:
            results += generator.search(HFBackend(generator.llm), prompts, len(chunk), kb, decode=kb.decode,
                                        stats=stats)
        else:
            search.timings.clear()
            with torch.inference_mode():
                results += search(HFBackend(generator.llm), prompts, len(chunk), kb, decode=kb.decode)
            stats.model += search.timings["model"]
            stats.kb += search.timings["kb"]
            stats.total += search.timings["total"]
    wall = time.perf_counter() - t
    n = len(questions)
    return {
        "wall_ms": wall / n * 1e3,
        "model_ms": stats.model / n * 1e3,
        "kb_ms": stats.kb / n * 1e3,
        "kb_calls": stats.kb_calls / n if search is None else float("nan"),
        "bookkeeping_ms": (stats.total - stats.model - stats.kb) / n * 1e3,
        "clues": statistics.mean(len(r.clues) for r in results),
        "results": results,
    }


def same_clues(a: list, b: list) -> bool:
    return all([(c.token_ids, c.doc_id) for c in x.clues] == [(c.token_ids, c.doc_id) for c in y.clues]
               for x, y in zip(a, b))


def run_gemkr(generator, kb, queries, batch: int) -> dict:
    """Per-query ms of detector / vision / LLM forward / KB / bookkeeping for the multimodal GeMKR path."""
    import torch

    from gemkr_llamaindex.decoding import HFBackend, Prompts, SearchStats

    model, search = generator.model, generator.search
    parts = dict.fromkeys(("detector", "vision", "model", "kb", "bookkeeping"), 0.0)
    objects = 0
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
        st = SearchStats()
        search(HFBackend(model.llm), Prompts(attention_mask=p.attention_mask, inputs_embeds=p.inputs_embeds),
               len(chunk), kb, stats=st)
        parts["model"] += st.model
        parts["kb"] += st.kb
        parts["bookkeeping"] += st.total - st.model - st.kb
    n = len(queries)
    out = {k: v / n * 1e3 for k, v in parts.items()}
    out["wall"] = (time.perf_counter() - t_all) / n * 1e3
    out["objects"] = objects / n
    return out


def gemkr_table(args, kb, cfg) -> None:
    """Build a GeMKR model of the real architectures (random CLIP and YOLO) and print its latency split."""
    from eval_vqa.mini import load_mini_benchmark
    from gemkr_llamaindex.images import load_packaged_image
    from gemkr_llamaindex.llamaindex import ClueGenerator
    from gemkr_llamaindex.model.gemkr import GeMKRConfig, GeMKRModel

    config = GeMKRConfig(llm="smollm2", clip_model=args.clip_model, clip_pretrained=None, detector="yolov8n.yaml",
                         detector_conf=1e-6)  # a random head scores ~1e-5
    model = GeMKRModel(config, device=args.device).eval()
    gen = ClueGenerator(model=model, config=cfg)
    rows = load_mini_benchmark()[: args.queries]
    queries = [(r["question"], load_packaged_image(r["image"]["package"], r["image"]["name"])) for r in rows]
    run_gemkr(gen, kb, queries[:1], 1)  # warm-up
    print(f"\n## GeMKR multimodal path: {args.clip_model} (random) + yolov8n (random, 5 objects) + SmolLM2-135M "
          f"with LoRA, constraint {cfg.constraint}, {len(queries)} mini-benchmark photos\n")
    print("| batch | ms/query | detector + crops | vision | LLM forward | KB constraint | bookkeeping | KB share of decoding | objects |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        r = run_gemkr(gen, kb, queries, batch)
        share = r["kb"] / max(r["model"] + r["kb"] + r["bookkeeping"], 1e-9)
        print(f"| {batch} | {r['wall']:.0f} | {r['detector']:.0f} | {r['vision']:.0f} | {r['model']:.0f} | "
              f"{r['kb']:.1f} | {r['bookkeeping']:.0f} | {share:.1%} | {r['objects']:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--min-length", type=int, default=10)
    p.add_argument("--max-length", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-old", action="store_true", help="skip the old (host-side) search")
    p.add_argument("--gemkr", action="store_true", help="also time the multimodal GeMKR path (detector, vision)")
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip architecture of the --gemkr vision tower")
    args = p.parse_args()
    print_environment()
    HostSideBeamSearch = host_search()

    import torch

    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.kb_cache import wiki_summaries_kb
    from gemkr_llamaindex.llamaindex import ClueGenerator

    torch.manual_seed(0)
    kb = wiki_summaries_kb()
    questions = (QUESTIONS * 8)[: args.queries]
    gen = ClueGenerator.zero_shot_llm("smollm2")
    gen.llm.to(args.device)
    rows = []
    for mode in ("mask", "topk"):
        cfg = DecodingConfig(num_beams=args.beams, num_groups=args.groups, min_length=args.min_length,
                             max_length=args.max_length, constraint=mode, anchor="any", allow_doc_end=False)
        gen.search.config = cfg
        run(gen, kb, questions[:1], 1)  # warm-up
        for batch in args.batches:
            new = run(gen, kb, questions, batch)
            old = None if args.no_old else run(gen, kb, questions, batch, HostSideBeamSearch(cfg))
            rows.append((mode, batch, new, old))
    print(f"# Retrieval latency ({platform.machine()}, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"command: {' '.join(sys.argv)}")
    print(f"SmolLM2-135M zero-shot, KB {kb.num_docs:,} docs / {kb.num_tokens:,} tokens, {args.beams} beams in "
          f"{args.groups} groups, clues {args.min_length}-{args.max_length} tokens, {len(questions)} queries\n")
    print("| constraint | batch | search | ms/query | LLM forward | KB constraint | KB calls/query | bookkeeping "
          "| KB share | clues | identical clues |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, batch, new, old in rows:
        for name, r in (("new", new), ("old", old)):
            if r is None:
                continue
            share = r["kb_ms"] / max(r["model_ms"] + r["kb_ms"] + r["bookkeeping_ms"], 1e-9)
            same = "-" if old is None else str(same_clues(new["results"], old["results"]))
            calls = "-" if r["kb_calls"] != r["kb_calls"] else f"{r['kb_calls']:.0f}"
            print(f"| {mode} | {batch} | {name} | {r['wall_ms']:.0f} | {r['model_ms']:.0f} | {r['kb_ms']:.1f} | {calls} | "
                  f"{r['bookkeeping_ms']:.0f} | {share:.1%} | {r['clues']:.1f} | {same} |")
    if old is not None:
        kb_new = statistics.mean(n["kb_ms"] for _, _, n, _ in rows)
        kb_old = statistics.mean(o["kb_ms"] for _, _, _, o in rows)
        print(f"\nKB constraint time per query, mean over rows: new {kb_new:.1f} ms, old {kb_old:.1f} ms "
              f"(new/old {kb_new / kb_old:.2f})")
    if args.gemkr:
        gemkr_table(args, kb, gen.search.config)


if __name__ == "__main__":
    main()
