"""``make demo`` (``python examples/demo.py``): retrieve and answer on what ships in packages, end to end.

1. The knowledge base over the 10,033 packaged Wikipedia summaries, tokenized with SmolLM2 (built once,
   then cached).
2. The GeMKR retriever: the checkpoint that ships for this KB (SmolLM2-135M + LoRA trained on
   pseudo-queries made from the summaries alone; it reads the question and the photo's visual tags,
   ImageNet labels + OCR), with knowledge-guided constrained decoding and its own settings: documents are
   ranked by evidence, the LM-scored n-grams they contain (the clues it generated, the question's words),
   see docs/scoring.md. ``--zero-shot`` runs the untrained SmolLM2-135M-Instruct instead (the paper's
   scoring); ``--checkpoint DIR`` any other checkpoint.
3. The VQA reader (SmolLM2-135M-Instruct) answers from the sentences around the top passage's evidence.
4. A few image + question queries of the shipped mini benchmark, then the retrieval table of the
   retrievers on the whole mini benchmark (per-query results are cached and resumed; ``--fresh`` reruns).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gemkr_llamaindex.assets import cache_dir
from gemkr_llamaindex.kb_cache import wiki_summaries_kb

DEMO_ITEMS = ("mini-003", "mini-001", "mini-012")


def hint_tagger():
    """image -> hint string (ImageNet labels and OCR text), or None if the [tags] extra is missing."""
    try:
        from gemkr_llamaindex.tags import hint_tagger as make

        return make()
    except ImportError as exc:
        print(f"(visual tags unavailable: {exc})")
        return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="a trained GeMKR checkpoint (default: the one that ships for the packaged KB)")
    p.add_argument("--zero-shot", action="store_true", help="zero-shot SmolLM2 instead of a trained checkpoint")
    p.add_argument("--fresh", action="store_true", help="recompute the retrieval table instead of resuming it")
    p.add_argument("--no-table", action="store_true", help="skip the retrieval table")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    kb = wiki_summaries_kb()
    print(f"{kb}  (ready in {time.perf_counter() - t0:.1f} s)\n")

    from eval_vqa.mini import load_mini_benchmark
    from gemkr_llamaindex.checkpoints import packaged_checkpoint
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.images import packaged_image_path
    from gemkr_llamaindex.llamaindex import ClueGenerator, GeMKRRetriever, VQAQueryBundle
    from reader import VQAQueryEngine, VQAReader

    checkpoint = None if args.zero_shot else (args.checkpoint or packaged_checkpoint())
    if checkpoint:
        print(f"GeMKR retriever: trained checkpoint {checkpoint}")
        print("  SmolLM2-135M + LoRA trained on pseudo-queries made from this KB alone; it reads the question and")
        print("  the photo's visual tags, and constrained decoding keeps every clue inside the KB.")
        gen = ClueGenerator.from_checkpoint(checkpoint)
    else:
        print("GeMKR retriever: ZERO-SHOT SmolLM2-135M-Instruct (no trained checkpoint).")
        print("  The photo reaches the LLM only through its visual tags; constrained decoding keeps every clue in the KB.")
        gen = ClueGenerator.zero_shot_llm(config=DecodingConfig())
    tagger = hint_tagger()
    retriever = GeMKRRetriever(gen, kb, similarity_top_k=5, tagger=tagger)
    # The reader gets no tag hints (they cost the 135M reader exact match, while the retriever gains from
    # them) and reads the sentences around the top passage's evidence, the passage alone: the reading mode
    # with the most exact matches on the development questions (benchmarks/reader_evidence.py).
    engine = VQAQueryEngine(retriever, VQAReader(), top_k=1, context="evidence_window")

    items = {it["id"]: it for it in load_mini_benchmark()}
    for item_id in DEMO_ITEMS:
        it = items[item_id]
        image = packaged_image_path(it["image"]["package"], it["image"]["name"])
        t = time.perf_counter()
        bundle = VQAQueryBundle(query_str=it["question"], image_path=str(image))
        hits = retriever.retrieve(bundle)
        response = engine.synthesize(bundle, hits[:1], tags="")  # the top passage, no hints
        took = time.perf_counter() - t
        print(f"\n=== {it['image']['package']}:{it['image']['name']}  Q: {it['question']}")
        print(f"    visual tags (the retriever's; the reader gets none): {tagger(str(image)) if tagger else '-'}")
        for rank, hit in enumerate(hits[:3], start=1):
            print(f"    {rank}. {hit.node.node_id:<28} score {hit.score:7.1f}  {why(hit.node.metadata)}")
        print(f"    answer (from passage 1): {str(response).strip()!r}   (gold: {it['answers']}; {took:.1f} s)")

    if not args.no_table:
        retrieval_table(args.fresh, checkpoint)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")


def why(metadata: dict) -> str:
    """What ranked a node: its strongest evidence n-grams (evidence scoring), else its best clue."""
    evidence = metadata.get("evidence") or []
    if evidence:
        return "evidence: " + ", ".join(f"{e['text']!r} ({e['source']})" for e in evidence[:3])
    clues = metadata.get("clues") or []
    return f"clue: {clues[0]['text']!r}" if clues else ""


def run_key(dataset, checkpoint: str | Path | None) -> str:
    """The cached table's folder name: the mode plus a digest of the corpus and the checkpoint's weights and
    decoding settings (other settings give other rows, so they never resume these)."""
    import hashlib

    from gemkr_llamaindex.checkpoints import corpus_fingerprint
    from gemkr_llamaindex.model.checkpoint import DECODING_FILE

    h = hashlib.sha256(corpus_fingerprint(dataset.corpus())["sha256"].encode())
    if checkpoint:
        h.update((Path(checkpoint) / "trainable.safetensors").read_bytes())
        decoding = Path(checkpoint) / DECODING_FILE
        if decoding.is_file():
            h.update(decoding.read_bytes())
    return f"{'trained' if checkpoint else 'zero_shot'}-{h.hexdigest()[:12]}"


def table_runs(checkpoint: str | Path | None) -> list[tuple[str, object]]:
    """The table's two runs (sub-folder, RunConfig): question only (the baselines), question + visual tags
    (GeMKR beside them). The GeMKR options go only to the run with a GeMKR row: a run rejects an option
    none of its retrievers reads."""
    from eval_vqa.runner import RunConfig

    gemkr_options = {"checkpoint": str(checkpoint)} if checkpoint else {"zero_shot": "1"}
    return [
        ("question", RunConfig("mini", ["bm25", "dense"], [1, 5, 10])),
        ("question+tags", RunConfig("mini", ["gemkr", "gemkr-fast", "bm25", "dense"], [1, 5, 10],
                                    tags="classifier,ocr", options=gemkr_options)),
    ]


def retrieval_table(fresh: bool, checkpoint: str | Path | None) -> None:
    """GeMKR, BM25 and dense retrieval on the whole mini benchmark, with and without visual tags."""
    import shutil

    from eval_vqa.loaders import load_dataset
    from eval_vqa.report import markdown_table
    from eval_vqa.runner import run_retrieval

    dataset = load_dataset("mini")
    out = cache_dir() / "demo_runs" / run_key(dataset, checkpoint)  # never resume another model's or corpus's run
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    print(f"\nretrieval on the mini benchmark ({len(dataset.queries)} image+question items, corpus = the "
          f"10,033 summaries); per-query results resume from {out}")
    (plain_dir, plain_config), (tagged_dir, tagged_config) = table_runs(checkpoint)
    plain = run_retrieval(dataset, plain_config, out / plain_dir, progress=True)
    tagged = run_retrieval(dataset, tagged_config, out / tagged_dir, progress=True)
    print("\n## question only\n")
    print(markdown_table(plain))
    print("\n## question + visual tags (GeMKR reads them in its instruction's tags slot)\n")
    print(markdown_table(tagged))
    print("\nCLIP and late-interaction baselines need real CLIP weights (none ship offline): "
          "eval-vqa retrieval --retrievers clip,li --clip-pretrained PATH")
    print(f"reports and plots: {Path(out)} (ms/query as measured when each row was computed; --fresh re-times)")

if __name__ == "__main__":
    main()
