"""Reports of a run: ``results.json``, a markdown table with all retrievers side by side, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from .metrics import metric_name

ORACLE_MARK = "(oracle)"
"""Part of the label of every row whose retriever is an oracle (it reads the gold annotations)."""

RELEVANCE_TEXT = {
    "substring": "substring (answer.lower() in passage.lower(); VRR/GeMKR's scripts leave the answer as it is, "
                 "the same on lowercase answers)",
    "word": "word (\\banswer\\b in passage.lower())",
}

GOLD_TEXT = (
    "Gold-id metrics: R@K is the share of a query's gold documents in the top K (trec recall_K); Hit@K is 1 when "
    "any gold document is in the top K (trec success_K, the R@K of the GeMKR paper); MRR@K is the reciprocal rank "
    "of the first gold document within the top K."
)

#: Superscript letters that mark the rows a cell is significantly better than (a-p: no superscript q exists).
SUPERSCRIPTS = "ᵃᵇᶜᵈᵉᶠᵍʰⁱʲᵏˡᵐⁿᵒᵖ"


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.1f}"


def quality_columns(results: dict, e2e: bool = False) -> list[tuple[str, str]]:
    """(metric name, column title) of the table's per-query metrics: answers (e2e), PRR/PRP@K under the run's
    relevance variant, and, when the dataset has gold ids, R@K, Hit@K and MRR@K."""
    ks = results["config"]["ks"]
    variant = results["relevance"]
    rows = results["retrievers"]
    cols: list[tuple[str, str]] = []
    if e2e:
        cols += [("VQA acc (leave-one-out)", "VQA acc"), ("EM (VQA-normalised)", "EM")]
    cols += [(metric_name("PRR", k, variant), f"PRR@{k}") for k in ks]
    cols += [(metric_name("PRP", k, variant), f"PRP@{k}") for k in ks]
    if any(metric_name("R", ks[0], "gold") in r for r in rows.values()):
        cols += [(metric_name("R", k, "gold"), f"R@{k} (gold)") for k in ks]
        cols += [(metric_name("Hit", k, "gold"), f"Hit@{k} (gold)") for k in ks]
        cols += [(metric_name("MRR", max(ks), "gold"), f"MRR@{max(ks)} (gold)")]
    return cols


def markdown_table(results: dict, e2e: bool = False) -> str:
    """All retrievers as rows (:func:`quality_columns`, then mean latency). With ``results["significance"]``
    (:func:`eval_vqa.significance.compare`) each row gets a key letter (first column) and each cell the
    superscript letters of the rows it is significantly better than."""
    variant = results["relevance"]
    rows = results["retrievers"]
    cols: list[tuple[str, str, bool]] = [(key, title, True) for key, title in quality_columns(results, e2e)]
    has_gold = any(key.startswith("Hit@") for key, _, _ in cols)
    significance = results.get("significance") if len(rows) <= len(SUPERSCRIPTS) else None
    letter = {label: "abcdefghijklmnop"[i] for i, label in enumerate(rows)} if significance else {}
    if e2e:
        cols += [("retrieval_ms_mean", "retrieval ms/query", False), ("latency_ms_mean", "total ms/query", False)]
    else:
        cols += [("latency_ms_mean", "ms/query", False)]
    lines = [
        (
            f"Dataset `{results['config']['dataset']}`: {results['n_queries']} queries, corpus of "
            f"{results['corpus_size']:,} passages. Pseudo-relevance variant: {RELEVANCE_TEXT.get(variant, variant)}. "
            "Values in %, mean over queries; PRP@K divides by K even when fewer passages came back."
        ),
        "",
        ("| key " if significance else "") + "| retriever | " + " | ".join(title for _, title, _ in cols) + " |",
        ("|---" if significance else "") + "|---|" + "---:|" * len(cols),
    ]
    for label, summary in rows.items():
        cells = [_fmt(summary.get(key), pct) + _marks(significance, key, label, letter) for key, _, pct in cols]
        key = f"| {letter[label]} " if significance else ""
        lines.append(f"{key}| {label} | " + " | ".join(cells) + " |")
    if has_gold:
        lines += ["", GOLD_TEXT]
    if significance:
        from .significance import METHOD

        lines += ["", f"A superscript letter in a cell: better than the row with that key, by a {METHOD}."]
    if e2e:
        cfg = results["config"]
        norm = cfg.get("vqa_normalize") or "official"
        lines += ["", (
            f"Answerer `{cfg.get('answerer')}` reads the top {cfg.get('reader_k')} passages of each row. "
            f"VQA acc: leave-one-annotator-out soft accuracy, normalisation `{norm}` "
            + ("(the official evaluator: answers processed only when the references disagree)" if norm == "official"
               else "(both sides always processed; not comparable with published numbers)")
            + "; EM: the normalised prediction equals a normalised reference."
        )]
    if any(ORACLE_MARK in label for label in rows):
        lines += ["", f"Rows marked `{ORACLE_MARK}` are not retrievers: they hand the answerer the query's gold "
                  "documents, an upper bound for the answerer on this corpus."]
    return "\n".join(lines) + "\n"


def _marks(significance: dict | None, key: str, label: str, letter: dict[str, str]) -> str:
    beaten = ((significance or {}).get(key) or {}).get(label, {}).get("better_than", [])
    return "".join(SUPERSCRIPTS["abcdefghijklmnop".index(letter[b])] for b in sorted(beaten, key=list(letter).index))


def plot_results(results: dict, out_dir: Path) -> list[Path]:
    """``recall_at_k.png`` (PRR@K and, with gold ids, R@K per retriever) and ``latency.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = results["config"]["ks"]
    variant = results["relevance"]
    rows = results["retrievers"]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, s) in enumerate(rows.items()):
        color = f"C{i % 10}"
        ax.plot(ks, [100 * s.get(metric_name("PRR", k, variant), float("nan")) for k in ks], marker="o",
                color=color, label=f"{label} PRR ({variant})")
        if metric_name("R", ks[0], "gold") in s:
            ax.plot(ks, [100 * s[metric_name("R", k, "gold")] for k in ks], marker="s", linestyle="--",
                    color=color, label=f"{label} R (gold)")
        if metric_name("Hit", ks[0], "gold") in s:
            ax.plot(ks, [100 * s[metric_name("Hit", k, "gold")] for k in ks], marker="^", linestyle=":",
                    color=color, label=f"{label} Hit (gold)")
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K (%)")
    ax.set_xticks(ks)
    ax.set_title(f"{results['config']['dataset']}: recall@K ({results['corpus_size']:,} passages)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "recall_at_k.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig = latency_figure(rows, e2e="retrieval_ms_mean" in next(iter(rows.values()), {}))
    fig.tight_layout()
    paths.append(out_dir / "latency.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def format_ms(ms: float) -> str:
    """A latency for a bar label: ``0.42 ms``, ``2.0 ms``, ``180 ms``, ``3.1 s``."""
    if ms >= 1000:
        return f"{ms / 1000:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def latency_figure(rows: dict[str, dict], e2e: bool = False):
    """Horizontal bars of mean latency per row on a log axis, each bar labelled with its value.

    A linear axis hides a 2 ms BM25 next to a 3 s GeMKR; on a log axis both read, and the labels give
    the numbers. In an end-to-end run each row has two bars, retrieval and total (retrieval + answer).
    Returns the matplotlib figure (the caller saves and closes it).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    labels = list(rows)
    series = [("latency_ms_mean", "total (retrieval + answer)" if e2e else "retrieval")]
    if e2e:
        series.insert(0, ("retrieval_ms_mean", "retrieval"))
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(6.5, (0.3 + 0.25 * len(series)) * len(labels) + 1.4))
    values_all = []
    for j, (key, name) in enumerate(series):
        values = [max(float(rows[label].get(key, rows[label]["latency_ms_mean"])), 1e-3) for label in labels]
        values_all += values
        ys = [i + (j - (len(series) - 1) / 2) * height for i in range(len(labels))]
        bars = ax.barh(ys, values, height=height * 0.9, label=name, color=f"C{j}" if e2e else None,
                       alpha=1.0 if j == 0 or not e2e else 0.55)
        ax.bar_label(bars, labels=[format_ms(v) for v in values], padding=3, fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g} s" if v >= 1000 else f"{v:g} ms"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(values_all) / 2, max(values_all) * 8)  # room for the labels right of the longest bar
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()  # first row on top, as in the table
    ax.set_xlabel("mean latency per query (log scale)")
    ax.set_title("latency per query")
    ax.grid(axis="x", which="major", alpha=0.3)
    if e2e:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    return fig


def write_reports(results: dict, out_dir: Path, e2e: bool = False) -> None:
    out_dir = Path(out_dir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(markdown_table(results, e2e))
    if results["retrievers"]:
        plot_results(results, out_dir)
