"""Retrieval and answer metrics for knowledge-based VQA, exactly as defined in DESIGN.md "Metrics".

Per-query functions come first (one number per question, so significance tests and error analysis
can use them); :func:`aggregate` averages per-query records second. Every value carries a canonical
name that states its variant, e.g. ``"PRR@5 (substring)"`` or ``"R@10 (gold)"``, built by
:func:`metric_name`, so a reported number is never ambiguous.

Gold-id metrics and their trec_eval / ir_measures names (a run's ``trec/`` files reproduce them):
``R@K (gold)`` is the share of a query's gold documents in the top K (``recall_K``, ``R@K``);
``Hit@K (gold)`` is 1 when any gold document is in the top K (``success_K``, ``Success@K``; what the
GeMKR paper and most KB-VQA papers call R@K); with one gold document per query the two are equal.
``P@K (gold)`` is ``P_K`` and ``MRR@K (gold)`` the reciprocal rank of the first gold document within
the top K (``recip_rank`` over the top K, ``RR@K``). Pseudo-relevance ``PRR@K`` / ``PRP@K`` are
``Success@K`` / ``P@K`` against the answer-containment judgments of the retrieved passages.

Pseudo-relevance (no gold passages, as in OK-VQA): a passage is relevant if it contains a gold answer.

* ``substring`` - ``answer.lower() in passage.lower()``. The VRR and GeMKR evaluation scripts test
  ``ans in passage.lower()``: they lowercase the passage but not the answer. OK-VQA's answers are all
  lowercase, so there the two agree query for query; an answer with a capital letter ("NASA") can
  only match here. Short answers over-match: ``"no"`` is inside ``"not"``, ``"1"`` inside ``"1990"``.
* ``word`` - ``re.search(r"\\b" + re.escape(answer.lower()) + r"\\b", passage.lower())``: the answer
  must start and end at word boundaries. (An answer whose first or last character is not a word
  character, such as ``"c++"``, has no ``\\b`` there and so never word-matches; this is the literal
  definition and we keep it.)

The VQA accuracy is the official VQA / OK-VQA evaluator's (leave-one-annotator-out soft accuracy,
with its answer processing and its quirks), reimplemented from the algorithm's rules with our own
tables; ``vqa_accuracy(..., normalize="always")`` is the named alternative that always normalises.
See :func:`vqa_accuracy` and :func:`normalize_answer`.
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

    ``substring``: ``ans.lower() in passage.lower()`` (VRR/GeMKR's scripts leave ``ans`` as it is: the
    same on OK-VQA's lowercase answers, see the module docstring). ``word``: ``\\bans\\b`` on the
    lowercased passage. Empty answers are ignored (they would match everything).
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
    """1.0 if any gold id is in the top ``k``, else 0.0 (trec ``success_K``; the GeMKR paper's R@K)."""
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

VQANormalize = Literal["official", "always"]
VQA_NORMALIZE_MODES: tuple[str, ...] = ("official", "always")

# The marks the evaluator's punctuation step handles. Not among them: the apostrophe (contractions
# keep it), the colon ("12:30"), "#", "$", "%", "&", "*", "~", "|" and the period (its own rule below).
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is ``(?!<=\d)(\.)(?!\d)``: its first group is a *lookahead* for the two
# characters "<=" and a digit, which never holds in front of a period, so the rule reduces to "a period
# not followed by a digit goes" ("3.5" and ".5" keep theirs, "dog." and "a.b" lose theirs).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official call passes ``re.UNICODE`` (= 32) where ``Pattern.sub`` takes ``count``: at most the first
# 32 such periods are removed.
_MAX_PERIODS_REMOVED = 32
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Every contraction the evaluator restores, written with its apostrophes. A word spelt without one of
# them is mapped back (see ``_contraction_table``). Its table also has four keys with a capital I
# ("Im", "Ive", "Id've", "I'dve"), which never match the lower-cased words, and two identity entries
# ("let's", "she's"); all six change nothing and are left out here.
_CONTRACTION_FORMS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't
wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_table() -> dict[str, str]:
    """Spelling without an apostrophe -> the contraction.

    One apostrophe: the bare word maps back (``dont`` -> ``don't``). Two or more: each spelling that
    lacks exactly one of them maps back (``couldnt've`` and ``couldn'tve`` -> ``couldn't've``, but
    ``couldntve`` stays). Words that are also ordinary English are simply absent from the list, as in
    the official table: ``its``, ``ill``, ``id``, ``were``, ``well``, ``hell``, ``shed``, ``wed``,
    ``lets``, ``shes``. One official entry runs backwards and is kept: ``somebody'd`` -> ``somebodyd``.
    """
    table: dict[str, str] = {}
    for form in _CONTRACTION_FORMS:
        cuts = [i for i, ch in enumerate(form) if ch == "'"]
        if len(cuts) == 1:
            table[form.replace("'", "")] = form
        else:
            for i in cuts:
                table[form[:i] + form[i + 1:]] = form
    table["somebody'd"] = "somebodyd"
    return table


_CONTRACTIONS = _contraction_table()


def _clean_whitespace(text: str) -> str:
    """The step the evaluator applies to every answer: newlines and tabs to spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """The evaluator's punctuation step, decided on the text as it came in.

    For each mark in ``_PUNCTUATION``: if the *input* has the mark next to a space, or has a
    digit-comma-digit anywhere ("10,000"), every occurrence of the mark is deleted; otherwise each
    becomes a space ("t-shirt" -> "t shirt"). The test looks at the input, not at the text as earlier
    marks left it: in "a(-b-c" the "(" turns into a space, yet "-" still counts as not next to a space,
    giving "a  b c". Then up to 32 periods not followed by a digit are removed.
    """
    spaced_or_number = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if spaced_or_number or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def _process_digits_articles(text: str) -> str:
    """Lower-case and split on whitespace; number words to digits; drop articles; restore contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_answer(answer: str) -> str:
    """The VQA evaluator's answer processing, applied unconditionally.

    Steps: newlines/tabs to spaces and strip; punctuation (see ``_process_punctuation``); lower-case;
    ``none``/``zero``..``ten`` to digits; drop ``a``/``an``/``the``; apostrophe-less contractions
    restored (``dont`` -> ``don't``). :func:`vqa_accuracy` decides *whether* to apply it.
    """
    return _process_digits_articles(_process_punctuation(_clean_whitespace(answer)))


def vqa_accuracy(prediction: str, answers: Sequence[str], normalize: VQANormalize = "official") -> float:
    """OK-VQA / VQA soft accuracy of one prediction against the annotators' answers (usually 10).

    acc = mean over references i of min(1, #{j != i : ref_j == pred} / 3). Duplicates count: with 10
    references of which 3 equal the prediction, each of those 3 sees 2 matches among the other 9 (2/3)
    and each other one sees 3 (1), giving (3*2/3 + 7*1)/10 = 0.9.

    ``normalize``:

    * ``"official"`` (default; the GT-Vision-Lab ``vqaEval.py`` that OK-VQA papers report with): every
      answer gets newlines/tabs turned into spaces and is stripped; the full processing of
      :func:`normalize_answer` (punctuation, lower-case, number words, articles, contractions) is applied
      to the prediction and the references only when the references are not all identical. When all
      agree the strings are compared as they are: ``"two"`` against ten ``"2"`` scores 0, and so do
      ``"Dog"`` and ``"dog."`` against ten ``"dog"``.
    * ``"always"``: both sides are always processed (``"two"`` against ten ``"2"`` scores 1). Kinder to
      generative readers, but not comparable with published numbers.

    With fewer than 4 references the score cannot reach 1 (one reference always scores 0), so for
    benchmarks whose answers are alternatives rather than annotator votes report :func:`exact_match`.

    Raises:
        ValueError: no references, or an unknown ``normalize``.
    """
    if isinstance(answers, str) or not answers:
        raise ValueError("vqa_accuracy needs a non-empty list of reference answers")
    if normalize not in VQA_NORMALIZE_MODES:
        raise ValueError(f"unknown normalize {normalize!r}; expected one of {VQA_NORMALIZE_MODES}")
    pred = _clean_whitespace(prediction)
    refs = [_clean_whitespace(a) for a in answers]
    if normalize == "always" or len(set(refs)) > 1:
        pred = normalize_answer(pred)
        refs = [normalize_answer(r) for r in refs]
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
    MRR@max(ks)) are added only when ``gold_ids`` is non-empty. MRR is cut at the largest K and named by
    it (``MRR@10 (gold)``): a retriever returns at most that many hits, so an uncut MRR silently changed
    meaning with ``ks``.
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
        out[metric_name("MRR", max(ks), "gold")] = mrr(retrieved_ids, gold_ids, max(ks))
    return out


def answer_scores(prediction: str, answers: Sequence[str], vqa_normalize: VQANormalize = "official") -> dict[str, float]:
    """VQA accuracy (``vqa_normalize`` as in :func:`vqa_accuracy`) and exact match, keyed by canonical name."""
    return {
        "VQA acc (leave-one-out)": vqa_accuracy(prediction, answers, vqa_normalize),
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
