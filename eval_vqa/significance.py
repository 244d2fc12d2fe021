"""Which differences between the rows of a run are significant: paired randomisation tests per metric.

At a few dozen queries a gap of several points is a handful of questions. Every pair of rows is compared
on every per-query metric with Fisher's paired randomisation test (the test ranx's ``compare`` defaults
to; Smucker, Allan and Carterette, CIKM 2007, DBLP conf/cikm/SmuckerAC07): under the null hypothesis
each query's two scores are exchangeable, so the test flips them at random and counts how often the
mean difference is at least as large as the observed one. The test itself is scipy's
``scipy.stats.permutation_test`` with ``permutation_type="samples"`` (exact when 2^n is at most
:data:`RESAMPLES`), two-sided, seeded. No correction for multiple comparisons is applied: a table of R
rows and M metrics makes M * R(R-1)/2 tests, so expect a few marks by chance in a large table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

ALPHA = 0.05
RESAMPLES = 10_000
SEED = 0
METHOD = (f"paired two-sided randomisation test (scipy.stats.permutation_test, {RESAMPLES:,} resamples, "
          f"seed {SEED}), p < {ALPHA}, no correction for multiple comparisons")


def randomisation_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value of the paired randomisation test of mean(x - y) == 0."""
    from scipy.stats import permutation_test

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal lengths, got {a.shape} and {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    res = permutation_test((a, b), lambda u, v, axis: np.mean(u - v, axis=axis), permutation_type="samples",
                           vectorized=True, n_resamples=RESAMPLES, alternative="two-sided", random_state=SEED)
    return float(res.pvalue)


def compare(records: Iterable[dict], labels: Sequence[str], qids: Sequence[str],
            metrics: Iterable[str] | None = None) -> dict[str, dict[str, dict]]:
    """``{metric: {label: {"better_than": [labels], "p": {other label: p}}}}`` over the queries ``qids``.

    ``records`` are ``per_query.jsonl`` records (``retriever``, ``qid``, ``metrics``); a metric is tested
    between two rows only when both scored it on every query of ``qids`` (the paired design). A row is
    ``better_than`` another when its mean is higher and p < :data:`ALPHA`.
    """
    values: dict[str, dict[str, dict[str, float]]] = {}
    for rec in records:
        values.setdefault(rec["retriever"], {}).setdefault(rec["qid"], rec["metrics"])
    order = list(qids)
    out: dict[str, dict[str, dict]] = {}
    wanted = set(metrics) if metrics is not None else None
    names = dict.fromkeys(m for label in labels for per in values.get(label, {}).values() for m in per)
    for metric in names:
        if wanted is not None and metric not in wanted:
            continue
        vectors = {}
        for label in labels:
            per = values.get(label, {})
            if all(q in per and metric in per[q] for q in order):
                vectors[label] = [float(per[q][metric]) for q in order]
        if len(vectors) < 2:
            continue
        table: dict[str, dict] = {label: {"better_than": [], "p": {}} for label in vectors}
        rows = list(vectors)
        for i, first in enumerate(rows):
            for second in rows[i + 1:]:
                p = randomisation_p(vectors[first], vectors[second])
                table[first]["p"][second] = table[second]["p"][first] = p
                if p < ALPHA:
                    diff = np.mean(vectors[first]) - np.mean(vectors[second])
                    winner, loser = (first, second) if diff > 0 else (second, first)
                    table[winner]["better_than"].append(loser)
        out[metric] = table
    return out
