"""Recall of every retriever of one ``eval-vqa retrieval`` run, split by whether the visual tags point at the answer.

A photo question reaches the retrievers as question + tags. When the tagger names the pictured entity
(or something WordNet files under it: "tabby" for *Cat*, "espresso" for *Coffee*), the tags carry the
entity; when it does not ("nematode, bubble" for the Moon), only the question's words can. This splits a
run's items by that rule, so a table says how much of a retriever's recall rests on the tagger and how
much on the question:

* **tags on target**: a tag equals a gold document's title (case-insensitive), or a WordNet noun sense of
  a tag has a gold title among its own lemmas or those of its hypernyms up to ``--depth`` levels;
* **tags off target**: every other item (no tags at all included).

The rule is mechanical (no judgement per item) and reads the tags the run itself recorded
(``tags.jsonl`` in the run folder). It needs WordNet (Debian's ``wordnet-base``, or ``$WORDNET_DIR``);
without it only exact title matches count as on target, and the script says so.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/tag_split.py runs/mini [--queries eval_vqa/data/mini_vqa.jsonl]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from eval_vqa.mini import MINI_PATH, load_mini_benchmark
from gemkr_llamaindex.training.wordnet import WordNet, find_wordnet


def tags_on_target(tags: str | None, gold: list[str], wordnet: WordNet | None, depth: int = 4) -> bool:
    """Whether a tag names a gold document or something WordNet files under one (module docstring)."""
    titles = {g.lower() for g in gold}
    for tag in (t.strip().lower() for t in (tags or "").split(",")):
        if not tag:
            continue
        if tag in titles:
            return True
        for sense in wordnet.lookup(tag) if wordnet is not None else []:
            for s in (sense, *wordnet.hypernym_closure(sense, depth)):
                if any(lemma.lower() in titles for lemma in s.lemmas):
                    return True
    return False


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pass the --out folder of an eval-vqa retrieval run")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_table(run: Path, queries: Path, wordnet: WordNet | None, depth: int = 4) -> str:
    """The markdown table: R@1 / R@10 (gold) per retriever for the on-target and off-target items."""
    gold = {item["id"]: list(item["gold_doc_ids"]) for item in load_mini_benchmark(queries)}
    tags = {r["qid"]: r.get("tags") for r in read_jsonl(run / "tags.jsonl")}
    rows = read_jsonl(run / "per_query.jsonl")
    unknown = sorted({r["qid"] for r in rows} - gold.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} items of {run} are not in {queries} (e.g. {unknown[0]}): pass --queries")
    on = {qid: tags_on_target(tags.get(qid), gold[qid], wordnet, depth) for qid in {r["qid"] for r in rows}}
    cells: dict[str, dict[bool, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        m = r["metrics"]
        cells[r["retriever"]][on[r["qid"]]].append((m["R@1 (gold)"], m["R@10 (gold)"]))
    n_on = sum(on.values())
    lines = [f"| retriever | tags on target ({n_on}) R@1 / R@10 | tags off target ({len(on) - n_on}) R@1 / R@10 |",
             "|---|---:|---:|"]
    for name, groups in cells.items():
        out = []
        for flag in (True, False):
            vals = groups.get(flag, [])
            out.append(" / ".join(f"{100 * sum(v[i] for v in vals) / len(vals):.1f}" for i in (0, 1)) if vals else "-")
        lines.append(f"| {name} | {out[0]} | {out[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the --out folder of an eval-vqa retrieval run with --tags")
    p.add_argument("--queries", type=Path, default=MINI_PATH, help="the run's query file (default: the mini benchmark)")
    p.add_argument("--depth", type=int, default=4, help="WordNet hypernym levels searched above a tag")
    p.add_argument("--wordnet", default=None, help="a WordNet database folder (default: the installed one)")
    args = p.parse_args()
    wordnet = find_wordnet(args.wordnet)
    if wordnet is None:
        print("no WordNet found (apt install wordnet-base, or --wordnet DIR): exact title matches only")
    print(split_table(args.run, args.queries, wordnet, args.depth))


if __name__ == "__main__":
    main()
