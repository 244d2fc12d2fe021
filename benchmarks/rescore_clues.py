"""Compare clue scoring rules offline on one search's clues: R@1 / R@10 per prior weight and document score.

The beam search does not depend on how finished clues are scored, so one ``clue_report --dump`` per
query file (run with a prior weight > 0, so every clue carries its empty-query log-likelihood) is enough to
rank the documents again under any ``prior_weight`` and ``doc_score`` of the paper's scoring: the same
ranking the generator would return with those settings (``prior_weight`` 0 is the paper's score), through
the library's own code (``eval_vqa.analysis.rerank``). Choose settings on the development questions only.

Usage::

    python -m benchmarks.clue_report benchmarks/data/dev_text.jsonl --quiet --option prior_weight=0.5 --dump dev_text.json
    python -m benchmarks.rescore_clues dev_text.json dev_photo.json [--weights 0 0.25 0.5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.env import print_environment
from eval_vqa.analysis import recalls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dumps", type=Path, nargs="+", help="clue_report --dump files")
    p.add_argument("--weights", type=float, nargs="+", default=[0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0])
    p.add_argument("--length-penalty", type=float, default=1.0)
    args = p.parse_args()
    print_environment()
    dumps = {path.stem: json.loads(path.read_text()) for path in args.dumps}
    print("| doc_score | prior_weight | " + " | ".join(f"{name} ({len(d)}) R@1 / R@10" for name, d in dumps.items()) + " |")
    print("|---|---:|" + "---:|" * len(dumps))
    for doc_score in ("logsumexp", "max"):
        for w in args.weights:
            cells = [recalls(d, w, doc_score, args.length_penalty) for d in dumps.values()]
            print(f"| {doc_score} | {w:g} | " + " | ".join(f"{r1:.1f} / {r10:.1f}" for r1, r10 in cells) + " |")


if __name__ == "__main__":
    main()
