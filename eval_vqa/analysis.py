"""Error analysis of evaluation runs: split a run's recall by a rule, rank dumped clues again offline.

Two questions a table of means cannot answer, each answered by a pure function the benchmark scripts
(``python -m benchmarks.recall_split``, ``python -m benchmarks.rescore_clues``) and the tests share:

* **Was the retriever told the entity, or did it have to infer it?** :func:`split_table` splits the items
  of one ``eval-vqa retrieval`` run by a mechanical rule and gives each retriever's R@1 / R@10 (gold) on
  either side. ``by="tags"`` (photo questions, which reach the retrievers as question + visual tags): the
  tags are *on target* when one of them is a gold document's title (case-insensitive), or a WordNet noun
  sense of one has a gold title among its lemmas or those of its hypernyms up to ``depth`` levels
  ("tabby" for *Cat*, "espresso" for *Coffee*); *off target* otherwise, no tags included
  (:func:`tags_on_target`). ``by="question"`` (text questions): the question *names* a gold document when
  that title, without a parenthesised qualifier, occurs in it as whole words, case-insensitively, its
  last word possibly plural ("galaxies" for *Galaxy*) (:func:`question_names_gold`).
* **How would these clues rank under another clue scoring?** The beam search does not depend on how its
  finished clues are scored, so one run's clues (``Clue.to_dict()``, dumped with their empty-query
  log-likelihood) rank the documents again under any ``prior_weight`` and ``doc_score`` of the paper's
  scoring, through the generator's own code (:func:`rerank`, :func:`recalls`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from gemkr_llamaindex.training.wordnet import WordNet

__all__ = ["question_names_gold", "recalls", "rerank", "split_table", "tags_on_target"]


def tags_on_target(tags: str | None, gold: list[str], wordnet: WordNet | None, depth: int = 4) -> bool:
    """Whether one of the comma-separated ``tags`` is a gold title, or a word WordNet files under one
    within ``depth`` hypernym levels. Without ``wordnet`` only exact titles count."""
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


def _run_records(path: Path) -> list[dict]:
    """A run's JSONL records, read as eval-vqa reads them (a line an interruption tore is dropped)."""
    from eval_vqa.runner import read_appended_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pass the --out folder of an eval-vqa retrieval run")
    return read_appended_jsonl(path)


def split_table(run: Path, queries: Path, wordnet: WordNet | None = None, depth: int = 4, by: str = "tags") -> str:
    """A markdown table: R@1 / R@10 (gold) per retriever of ``run`` for the items on each side of the rule
    ``by`` (``"tags"`` or ``"question"``; module docstring). ``queries`` is the run's query file (mini
    format); every item of the run must be in it."""
    from eval_vqa.mini import load_mini_benchmark

    items = {item["id"]: item for item in load_mini_benchmark(queries)}
    rows = _run_records(run / "per_query.jsonl")
    unknown = sorted({r["qid"] for r in rows} - items.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} items of {run} are not in {queries} (e.g. {unknown[0]}): pass --queries")
    qids = {r["qid"] for r in rows}
    if by == "tags":
        tags = {r["qid"]: r.get("tags") for r in _run_records(run / "tags.jsonl")}
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


def rerank(clues: list[dict], prior_weight: float, doc_score: str, length_penalty: float = 1.0) -> list[str]:
    """Document ids, best first, for one query's dumped clues (``Clue.to_dict()``) under one scoring rule,
    scored and ranked by the generator's own code (:meth:`DecodingConfig.clue_score`, ``from_clues``)."""
    from gemkr_llamaindex.decoding import Clue, DecodingConfig, QueryResult

    cfg = DecodingConfig(prior_weight=prior_weight, length_penalty=length_penalty, doc_score=doc_score)
    scored = []
    for c in clues:
        if "doc_index" not in c:
            raise ValueError("the dump predates clues carrying doc_index: run clue_report --dump again")
        try:
            score = cfg.clue_score(c["logprob"], len(c["token_ids"]), c["prior_logprob"])
        except ValueError as e:
            raise ValueError(f"{e}: dump a run with prior_weight > 0") from None
        scored.append(Clue(c["token_ids"], c["logprob"], score, c["doc_index"], c["doc_id"]))
    return [d.doc_id for d in QueryResult.from_clues(scored, cfg.doc_score).docs]


def recalls(dump: list[dict], prior_weight: float, doc_score: str, length_penalty: float = 1.0) -> tuple[float, float]:
    """R@1 and R@10 (%, a gold document at rank 1 / in the top 10) of dumped queries (``{"clues": [...],
    "gold": [...]}`` each) under one scoring rule."""
    hits1 = hits10 = 0
    for query in dump:
        ranked = rerank(query["clues"], prior_weight, doc_score, length_penalty)
        gold = set(query["gold"])
        hits1 += bool(ranked) and ranked[0] in gold
        hits10 += bool(gold & set(ranked[:10]))
    return 100 * hits1 / len(dump), 100 * hits10 / len(dump)
