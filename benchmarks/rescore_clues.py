"""Compare clue scoring rules offline on one search's clues: R@1 / R@10 per prior weight and document score.

The beam search does not depend on how finished clues are scored, so one ``clue_report.py --dump`` per
query file (run with a prior weight > 0, so every clue carries its empty-query log-likelihood) is enough to
rank the documents again under any ``prior_weight`` and ``doc_score``: the same ranking the generator
would return with those settings (``prior_weight`` 0 reproduces the paper's score), through the library's
own :meth:`QueryResult.from_clues` (checked: the rows for weights 0 and 0.5 equal the decoding sweep's
measured ``prior_weight: 0`` and base rows). Choose settings on the development questions only.

Usage::

    PYTHONPATH=. python benchmarks/clue_report.py benchmarks/data/dev_text.jsonl --quiet --dump dev_text.json
    PYTHONPATH=. python benchmarks/rescore_clues.py dev_text.json dev_photo.json [--weights 0 0.25 0.5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gemkr_llamaindex.decoding import DecodingConfig
from gemkr_llamaindex.decoding.results import Clue, QueryResult


def rerank(clues: list[dict], prior_weight: float, doc_score: str, length_penalty: float = 1.0) -> list[str]:
    """Document ids, best first, for one query's dumped clues (``Clue.to_dict()``) under one scoring rule,
    scored and ranked by the generator's own code (:meth:`DecodingConfig.clue_score`, ``from_clues``)."""
    cfg = DecodingConfig(prior_weight=prior_weight, length_penalty=length_penalty, doc_score=doc_score)
    scored = []
    for c in clues:
        if "doc_index" not in c:
            raise ValueError("the dump predates clues carrying doc_index: run clue_report.py --dump again")
        try:
            score = cfg.clue_score(c["logprob"], len(c["token_ids"]), c["prior_logprob"])
        except ValueError as e:
            raise ValueError(f"{e}: dump a run with prior_weight > 0") from None
        scored.append(Clue(c["token_ids"], c["logprob"], score, c["doc_index"], c["doc_id"]))
    return [d.doc_id for d in QueryResult.from_clues(scored, cfg.doc_score).docs]


def recalls(dump: list[dict], prior_weight: float, doc_score: str, length_penalty: float = 1.0) -> tuple[float, float]:
    """R@1 and R@10 (%, gold document at rank 1 / in the top 10) of the dumped queries under one scoring rule."""
    hits1 = hits10 = 0
    for query in dump:
        ranked = rerank(query["clues"], prior_weight, doc_score, length_penalty)
        gold = set(query["gold"])
        hits1 += bool(ranked) and ranked[0] in gold
        hits10 += bool(gold & set(ranked[:10]))
    return 100 * hits1 / len(dump), 100 * hits10 / len(dump)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dumps", type=Path, nargs="+", help="clue_report.py --dump files")
    p.add_argument("--weights", type=float, nargs="+", default=[0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0])
    p.add_argument("--length-penalty", type=float, default=1.0)
    args = p.parse_args()
    dumps = {path.stem: json.loads(path.read_text()) for path in args.dumps}
    print("| doc_score | prior_weight | " + " | ".join(f"{name} ({len(d)}) R@1 / R@10" for name, d in dumps.items()) + " |")
    print("|---|---:|" + "---:|" * len(dumps))
    for doc_score in ("logsumexp", "max"):
        for w in args.weights:
            cells = [recalls(d, w, doc_score, args.length_penalty) for d in dumps.values()]
            print(f"| {doc_score} | {w:g} | " + " | ".join(f"{r1:.1f} / {r10:.1f}" for r1, r10 in cells) + " |")


if __name__ == "__main__":
    main()
