"""Recall of every retriever of one ``eval-vqa retrieval`` run, split by whether the query names its gold document.

A query can name the entity whose document answers it, or leave a retriever to infer it. This splits a
run's items by one mechanical rule (no judgement per item), so a table says how much of a retriever's
recall rests on being told the entity and how much on inferring it (the rules: ``eval_vqa.analysis``):

* ``--by tags`` (photo questions): the visual tags the run recorded (``tags.jsonl``) are on target when
  one is a gold title or WordNet files it under one within ``--depth`` hypernym levels. Needs WordNet
  (Debian's ``wordnet-base``, or ``$WORDNET_DIR``); without it only exact titles count, and it says so.
* ``--by question`` (text questions): the question names a gold title as whole words (plural allowed).

Usage::

    python -m benchmarks.recall_split runs/mini [--by tags]
    python -m benchmarks.recall_split runs/mini-text --by question --queries eval_vqa/data/mini_vqa_text.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.env import print_environment
from eval_vqa.analysis import split_table
from eval_vqa.mini import MINI_PATH
from gemkr_llamaindex.training.wordnet import find_wordnet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the --out folder of an eval-vqa retrieval run")
    p.add_argument("--by", choices=["tags", "question"], default="tags", help="the rule (module docstring)")
    p.add_argument("--queries", type=Path, default=MINI_PATH, help="the run's query file (default: the mini benchmark)")
    p.add_argument("--depth", type=int, default=4, help="WordNet hypernym levels searched above a tag")
    p.add_argument("--wordnet", default=None, help="a WordNet database folder (default: the installed one)")
    args = p.parse_args()
    print_environment()
    wordnet = find_wordnet(args.wordnet) if args.by == "tags" else None
    if wordnet is None and args.by == "tags":
        print("no WordNet found (apt install wordnet-base, or --wordnet DIR): exact title matches only")
    print(split_table(args.run, args.queries, wordnet, args.depth, args.by))


if __name__ == "__main__":
    main()
