"""Recall of every retriever of one ``eval-vqa retrieval`` run, split by whether the query names its gold document.

A query can name the entity whose document answers it, or leave a retriever to infer it. This splits a
run's items by one mechanical rule (no judgement per item), so a table says how much of a retriever's
recall rests on being told the entity and how much on inferring it:

* ``--by tags`` (photo questions): a photo question reaches the retrievers as question + tags. The tags
  are **on target** when one equals a gold document's title (case-insensitive), or a WordNet noun sense of
  one has a gold title among its own lemmas or those of its hypernyms up to ``--depth`` levels ("tabby"
  for *Cat*, "espresso" for *Coffee*); **off target** otherwise ("nematode, bubble" for the Moon; no tags
  at all included). Reads the tags the run recorded (``tags.jsonl`` in the run folder). Needs WordNet
  (Debian's ``wordnet-base``, or ``$WORDNET_DIR``); without it only exact titles count, and it says so.
* ``--by question`` (text questions): the question **names** a gold document when that title (without a
  parenthesised qualifier) occurs in it as whole words, case-insensitively, its last word also in a
  plural form ("galaxies" for *Galaxy*); otherwise the question names something else (the pictured
  retina for *Human eye*) and the gold document has to be inferred.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/recall_split.py runs/mini [--by tags]
    PYTHONPATH=. .venv/bin/python benchmarks/recall_split.py runs/mini-text --by question \
        --queries eval_vqa/data/mini_vqa_text.jsonl
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from eval_vqa.mini import MINI_PATH, load_mini_benchmark
from eval_vqa.runner import read_appended_jsonl
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


def question_names_gold(question: str, gold: list[str]) -> bool:
    """Whether a gold title occurs in ``question`` as whole words, its last word possibly plural."""
    for title in gold:
        words = re.sub(r"\s*\([^)]*\)$", "", title).lower().split()
        if not words:
            continue
        last = re.escape(words[-1])
        plural = rf"(?:{last[:-1]}ies|{last}(?:s|es)?)" if words[-1].endswith("y") else rf"{last}(?:s|es)?"
        if re.search(r"\b" + r"\s+".join([*map(re.escape, words[:-1]), plural]) + r"\b", question.lower()):
            return True
    return False


def read_jsonl(path: Path) -> list[dict]:
    """A run's JSONL records, read as eval-vqa reads them (a line an interruption tore is dropped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pass the --out folder of an eval-vqa retrieval run")
    return read_appended_jsonl(path)


def split_table(run: Path, queries: Path, wordnet: WordNet | None = None, depth: int = 4, by: str = "tags") -> str:
    """The markdown table: R@1 / R@10 (gold) per retriever for the items on each side of the rule ``by``."""
    items = {item["id"]: item for item in load_mini_benchmark(queries)}
    rows = read_jsonl(run / "per_query.jsonl")
    unknown = sorted({r["qid"] for r in rows} - items.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} items of {run} are not in {queries} (e.g. {unknown[0]}): pass --queries")
    qids = {r["qid"] for r in rows}
    if by == "tags":
        tags = {r["qid"]: r.get("tags") for r in read_jsonl(run / "tags.jsonl")}
        on = {q: tags_on_target(tags.get(q), list(items[q]["gold_doc_ids"]), wordnet, depth) for q in qids}
        sides = ("tags on target", "tags off target")
    elif by == "question":
        on = {q: question_names_gold(items[q]["question"], list(items[q]["gold_doc_ids"])) for q in qids}
        sides = ("question names gold", "question names another")
    else:
        raise ValueError(f"by must be 'tags' or 'question', not {by!r}")
    cells: dict[str, dict[bool, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        m = r["metrics"]
        cells[r["retriever"]][on[r["qid"]]].append((m["R@1 (gold)"], m["R@10 (gold)"]))
    n_on = sum(on.values())
    lines = [f"| retriever | {sides[0]} ({n_on}) R@1 / R@10 | {sides[1]} ({len(on) - n_on}) R@1 / R@10 |",
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
    p.add_argument("run", type=Path, help="the --out folder of an eval-vqa retrieval run")
    p.add_argument("--by", choices=["tags", "question"], default="tags", help="the rule (module docstring)")
    p.add_argument("--queries", type=Path, default=MINI_PATH, help="the run's query file (default: the mini benchmark)")
    p.add_argument("--depth", type=int, default=4, help="WordNet hypernym levels searched above a tag")
    p.add_argument("--wordnet", default=None, help="a WordNet database folder (default: the installed one)")
    args = p.parse_args()
    wordnet = find_wordnet(args.wordnet) if args.by == "tags" else None
    if wordnet is None and args.by == "tags":
        print("no WordNet found (apt install wordnet-base, or --wordnet DIR): exact title matches only")
    print(split_table(args.run, args.queries, wordnet, args.depth, args.by))


if __name__ == "__main__":
    main()
