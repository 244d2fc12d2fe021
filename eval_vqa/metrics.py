"""Retrieval and answer metrics for knowledge-based VQA, exactly as defined in DESIGN.md "Metrics".

Per-query functions come first (one number per question, so significance tests and error analysis
can use them); :func:`aggregate` averages per-query records second. Every value carries a canonical
name that states its variant, e.g. ``"PRR@5 (substring)"`` or ``"R@10 (gold)"``, built by
:func:`metric_name`, so a reported number is never ambiguous.

Pseudo-relevance (no gold passages, as in OK-VQA): a passage is relevant if it contains a gold answer.

* ``substring`` - ``answer.lower() in passage.lower()``, the VRR / GeMKR convention. Short answers
  over-match: ``"no"`` is inside ``"not"``, ``"1"`` inside ``"1990"``.
* ``word`` - ``re.search(r"\\b" + re.escape(answer.lower()) + r"\\b", passage.lower())``: the answer
  must start and end at word boundaries. (An answer whose first or last character is not a word
  character, such as ``"c++"``, has no ``\\b`` there and so never word-matches; this is the literal
  definition and we keep it.)

The VQA accuracy follows the official VQA / OK-VQA evaluator's behaviour (leave-one-annotator-out
soft accuracy, with its answer normalisation), reimplemented from its documented behaviour with our
own tables; see :func:`normalize_answer` and :func:`vqa_accuracy` for the one deliberate deviation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

RelevanceMode = Literal["substring", "word"]
RELEVANCE_MODES: tuple[str, ...] = ("substring", "word")


def metric_name(metric: str, k: int | None = None, variant: str | None = None) -> str:
    """Canonical result name: ``metric_name("PRR", 5, "substring") == "PRR@5 (substring)"``."""
    name = metric if k is None else f"{metric}@{k}"
    return name if variant is None else f"{name} ({variant})"


# ---------------------------------------------------------------------------------------------------
# Pseudo-relevance
# ---------------------------------------------------------------------------------------------------


def _clean_answers(answers: Iterable[str]) -> list[str]:
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string")
    return [a.strip().lower() for a in answers if a and a.strip()]


def is_relevant(passage: str, answers: Iterable[str], mode: RelevanceMode = "substring") -> bool:
    """True if ``passage`` contains any answer (case-insensitive), under the given variant.

    ``substring``: ``ans in passage.lower()``. ``word``: ``\\bans\\b`` on the lowercased passage.
    Empty answers are ignored (they would match everything).
    """
    text = passage.lower()
    cleaned = _clean_answers(answers)
    if mode == "substring":
        return any(a in text for a in cleaned)
    if mode == "word":
        return any(re.search(r"\b" + re.escape(a) + r"\b", text) for a in cleaned)
    raise ValueError(f"unknown relevance mode {mode!r}; expected one of {RELEVANCE_MODES}")


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def prp_at_k(passages: Sequence[str], answers: Iterable[str], k: int, mode: RelevanceMode = "substring") -> float:
    """Pseudo-relevance precision of one query: (#relevant among the top ``k``) / ``k``.

    The denominator is ``k`` even when fewer than ``k`` passages came back, so a retriever cannot
    gain precision by returning less. Averaged over N queries this is PRP@K = sum_q rel_q(K) / (K*N).
    """
    _check_k(k)
    answers = _clean_answers(answers)
    return sum(is_relevant(p, answers, mode) for p in passages[:k]) / k


def prr_at_k(passages: Sequence[str], answers: Iterable[str], k: int, mode: RelevanceMode = "substring") -> float:
    """Pseudo-relevance recall of one query: 1.0 if any of the top ``k`` passages is relevant, else 0.0.

    Averaged over queries this is PRR@K, the share of queries with >= 1 relevant passage in the top K.
    """
    _check_k(k)
    answers = _clean_answers(answers)
    return float(any(is_relevant(p, answers, mode) for p in passages[:k]))


# ---------------------------------------------------------------------------------------------------
# Gold document ids
# ---------------------------------------------------------------------------------------------------


def precision_at_k(retrieved_ids: Sequence[str], gold_ids: Iterable[str], k: int) -> float:
    """Gold-id precision: (#retrieved ids in the top ``k`` that are gold) / ``k`` (denominator stays k)."""
    _check_k(k)
    gold = set(gold_ids)
    return sum(doc_id in gold for doc_id in retrieved_ids[:k]) / k


def recall_at_k(retrieved_ids: Sequence[str], gold_ids: Iterable[str], k: int) -> float:
    """Gold-id recall: |gold ∩ top k| / |gold|. With one gold document (ReMuQ) this is the hit rate.

    Raises:
        ValueError: no gold ids (recall is undefined).
    """
    _check_k(k)
    gold = set(gold_ids)
    if not gold:
        raise ValueError("recall_at_k needs at least one gold id")
    return len(gold & set(retrieved_ids[:k])) / len(gold)


def hit_at_k(retrieved_ids: Sequence[str], gold_ids: Iterable[str], k: int) -> float:
    """1.0 if any gold id is in the top ``k``, else 0.0 (success@K)."""
    _check_k(k)
    gold = set(gold_ids)
    return float(any(doc_id in gold for doc_id in retrieved_ids[:k]))


def mrr(retrieved_ids: Sequence[str], gold_ids: Iterable[str], k: int | None = None) -> float:
    """Reciprocal rank of the first gold id (1-based) within the top ``k`` (all if None); 0.0 if none."""
    gold = set(gold_ids)
    ranked = retrieved_ids if k is None else retrieved_ids[:k]
    for rank, doc_id in enumerate(ranked, 1):
        if doc_id in gold:
            return 1.0 / rank
    return 0.0


# ---------------------------------------------------------------------------------------------------
# VQA answer normalisation and accuracy
# ---------------------------------------------------------------------------------------------------

# Punctuation the official evaluator treats (note: no apostrophe, colon, '#', '$', '%', '&', '*').
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")  # "3.5" keeps its period, "dog." loses it
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})


def _build_contractions() -> dict[str, str]:
    """Map apostrophe-less spellings (``dont``, ``youre``) to the apostrophe form the evaluator uses."""
    table: dict[str, str] = {}
    forms = [
        "aren't", "can't", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't", "hasn't",
        "haven't", "isn't", "mightn't", "mustn't", "needn't", "shan't", "shouldn't", "shouldn't've",
        "wasn't", "weren't", "won't", "wouldn't", "wouldn't've", "ain't",
        "he'd", "he'll", "he's", "he'd've", "she'd", "she'll", "she's", "she'd've", "it'd", "it'll",
        "it's", "it'd've", "i'd", "i'll", "i'm", "i've", "i'd've", "you'd", "you'll", "you're", "you've",
        "you'd've", "we'd", "we'll", "we're", "we've", "we'd've", "they'd", "they'll", "they're",
        "they've", "they'd've", "that's", "that'd", "that'll", "there's", "there're", "there'd",
        "there'll", "there'd've", "here's", "what's", "what're", "what've", "what'll", "where's",
        "where'd", "where've", "who's", "who'd", "who'll", "who're", "who've", "who'd've", "why's",
        "why'll", "why're", "how's", "how'd", "how'll", "let's", "ma'am", "o'clock", "y'all", "y'all'd",
        "y'all'd've", "could've", "might've", "must've", "should've", "would've", "somebody's",
        "somebody'd", "someone's", "someone'd", "someone'll", "something's", "something'd",
        "nobody's", "everybody's", "everyone's",
    ]
    # Bare spellings that are ordinary words stay untouched ("its", "well", "were", "shed" ...).
    real_words = {"its", "hell", "well", "were", "shell", "wed", "id", "ill", "shed", "lets"}
    for form in forms:
        variants = {form.replace("'", "")}
        if form.count("'") == 2:  # "couldn't've": also "couldnt've" and "couldn'tve"
            head, tail = form.rsplit("'", 1)
            variants |= {form.replace("'", "", 1), head + tail}
        for bare in variants - real_words:
            table[bare] = form
    return table


_CONTRACTIONS = _build_contractions()


def _process_punctuation(text: str) -> str:
    # Official behaviour: a punctuation mark next to a space (or anywhere, if the text contains a
    # digit,digit comma) is deleted; otherwise it becomes a space ("t-shirt" -> "t shirt",
    # "10,000" -> "10000"). Periods are then removed unless followed by a digit.
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        if strip_all or (p + " ") in text or (" " + p) in text:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", text)


def _process_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The VQA evaluator's answer normalisation.

    Steps: newlines/tabs to spaces and strip; punctuation handling (see ``_process_punctuation``);
    lowercase; number words ``zero``..``ten`` (and ``none``) to digits; drop ``a``/``an``/``the``;
    contractions written without apostrophe restored (``dont`` -> ``don't``).
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """OK-VQA / VQA soft accuracy of one prediction against the annotators' answers (usually 10).

    acc = mean over references i of min(1, #{j != i : ref_j == pred} / 3), after normalising the
    prediction and every reference. Duplicates count: with 10 references of which 3 equal the
    prediction, each of those 3 sees 2 matches among the other 9 (2/3) and each other one sees 3 (1),
    giving (3*2/3 + 7*1)/10 = 0.9.

    Deviation from the official script: it normalises only when the references disagree (so ``"Dog."``
    against ten ``"dog"`` scores 0 there); we always normalise both sides. With fewer than 4 references
    the score cannot reach 1 (one reference always scores 0), so for benchmarks whose answers are
    alternatives rather than annotator votes report :func:`exact_match` instead.

    Raises:
        ValueError: no references.
    """
    if isinstance(answers, str) or not answers:
        raise ValueError("vqa_accuracy needs a non-empty list of reference answers")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    total = 0.0
    for i in range(len(refs)):
        matches = sum(1 for j, ref in enumerate(refs) if j != i and ref == pred)
        total += min(1.0, matches / 3.0)
    return total / len(refs)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference (VQA normalisation), else 0.0."""
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string")
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(a) == pred for a in answers))


# ---------------------------------------------------------------------------------------------------
# Per-query bundles and aggregation
# ---------------------------------------------------------------------------------------------------


def retrieval_scores(
    passages: Sequence[str],
    retrieved_ids: Sequence[str],
    answers: Sequence[str],
    gold_ids: Sequence[str] | None,
    ks: Sequence[int],
    modes: Sequence[str] = RELEVANCE_MODES,
) -> dict[str, float]:
    """Every retrieval metric for one query, keyed by canonical name.

    Pseudo-relevance metrics (PRP/PRR, one per mode) need ``answers``; gold-id metrics (P/R/Hit@K,
    MRR) are added only when ``gold_ids`` is non-empty.
    """
    out: dict[str, float] = {}
    for k in ks:
        if answers:
            for mode in modes:
                out[metric_name("PRP", k, mode)] = prp_at_k(passages, answers, k, mode)  # type: ignore[arg-type]
                out[metric_name("PRR", k, mode)] = prr_at_k(passages, answers, k, mode)  # type: ignore[arg-type]
        if gold_ids:
            out[metric_name("P", k, "gold")] = precision_at_k(retrieved_ids, gold_ids, k)
            out[metric_name("R", k, "gold")] = recall_at_k(retrieved_ids, gold_ids, k)
            out[metric_name("Hit", k, "gold")] = hit_at_k(retrieved_ids, gold_ids, k)
    if gold_ids:
        out[metric_name("MRR", None, "gold")] = mrr(retrieved_ids, gold_ids)
    return out


def answer_scores(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """VQA accuracy and exact match for one prediction, keyed by canonical name."""
    return {
        "VQA acc (leave-one-out)": vqa_accuracy(prediction, answers),
        "EM (VQA-normalised)": exact_match(prediction, answers),
    }


def aggregate(records: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over the per-query records that report it (insertion order kept)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for record in records:
        for name, value in record.items():
            sums[name] = sums.get(name, 0.0) + float(value)
            counts[name] = counts.get(name, 0) + 1
    return {name: sums[name] / counts[name] for name in sums}
