"""The assembled ablation table, the paired differences and the plot (pure functions, no Ray/MLflow).

Input: one dict per finished trial, ``{"row", "seed", <metric>: value, ...}``
(metric keys as the evaluation suite names them, e.g. ``eval.lin_top1``).
Output: markdown + CSV of rows x metrics (mean +- std over seeds, n), the
paper's FT / LIN / AP columns alongside; the paper's key comparisons as paired
differences (same seed, first row minus second) with their spread and whether
the sign matches the paper's; a PNG of metric per row with every seed shown.
"""

from __future__ import annotations

import math
from pathlib import Path

from siamim.eval.protocols import get
from siamim.orchestration.ablation.rows import BASELINES, GRID_ROWS, KEY_COMPARISONS
from siamim.orchestration.driver.experiment import csv_table, figure, markdown_table, save_png

PAPER_COLUMNS = ("FT", "LIN", "AP box", "AP mask")


def headline_keys(protocols: list[str]) -> list[tuple[str, str, str]]:
    """``(metric key in a trial's results, column title, paper column)`` per protocol, in the order given:
    the :class:`~siamim.eval.protocols.Headline` each protocol module declares (its key as the trial logs it,
    ``eval.<key>``)."""
    return [(f"eval.{h.key}", h.title, h.paper) for h in (get(p).headline for p in protocols)]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def by_row(results: list[dict], key: str) -> dict[str, dict[int, float]]:
    """``{row: {seed: value}}`` for one metric."""
    out: dict[str, dict[int, float]] = {}
    for r in results:
        if r.get(key) is not None:
            out.setdefault(r["row"], {})[int(r["seed"])] = float(r[key])
    return out


def assemble(results: list[dict], protocols: list[str], failed: list[dict] | None = None) -> list[dict]:
    """One record per row (table order): ``{"row", "n", "seeds", "failed", "ours": {title: (mean, std)}, "paper"}``."""
    rows = sorted({r["row"] for r in results} | {f["row"] for f in failed or []}, key=list(GRID_ROWS).index)
    table = []
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        rec = {
            "row": row,
            "n": len(mine),
            "seeds": sorted(int(r["seed"]) for r in mine),
            "failed": sorted(int(f["seed"]) for f in failed or [] if f["row"] == row),
        }
        rec["ours"] = {title: mean_std([r.get(key) for r in mine]) for key, title, _ in headline_keys(protocols)}
        rec["paper"] = GRID_ROWS[row].paper
        table.append(rec)
    return table


def _cell(m: float, s: float) -> str:
    return "-" if math.isnan(m) else f"{m:.2f} ± {s:.2f}"


def to_markdown(table: list[dict], protocols: list[str]) -> str:
    """The table (:func:`assemble`): per row its seeds, ours (mean ± std) per protocol, the paper's columns."""
    heads = [t for _, t, _ in headline_keys(protocols)]
    header = ["row", "seeds", *(f"{h} (ours)" for h in heads), *(f"{c} (paper)" for c in PAPER_COLUMNS)]
    rows = [
        [rec["row"], f"{rec['n']}" + (f" ({len(rec['failed'])} failed)" if rec["failed"] else "")]
        + [_cell(*rec["ours"][h]) for h in heads]
        + [f"{rec['paper'][c]:.1f}" for c in PAPER_COLUMNS]
        for rec in table
    ]
    text = markdown_table(header, rows)
    baselines = [rec["row"] for rec in table if rec["row"] in BASELINES]
    if baselines:
        text += f"\n{', '.join(baselines)}: paper numbers from the paper's main table (400 epochs), not the ablation.\n"
    return text


def to_csv(table: list[dict], protocols: list[str]) -> str:
    """The table as CSV: mean and std per protocol, the paper's columns."""
    heads = [t for _, t, _ in headline_keys(protocols)]
    header = ["row", "n", "failed", *(c for h in heads for c in (f"{h} mean", f"{h} std"))]
    rows = [
        [rec["row"], rec["n"], len(rec["failed"])]
        + [f"{v:.4f}" for h in heads for v in rec["ours"][h]]
        + [rec["paper"][c] for c in PAPER_COLUMNS]
        for rec in table
    ]
    return csv_table(header + [f"paper {c}" for c in PAPER_COLUMNS], rows)


# --------------------------------------------------------------------------- paired differences
def paired_differences(results: list[dict], protocols: list[str]) -> list[dict]:
    """The paper's key comparisons present in ``results``: per protocol, first row minus second, paired by seed.

    Each record: ``first, second, what, protocol, metric, n`` (common seeds), ``mean, std`` of the
    per-seed differences, ``paper_column, paper_diff`` and ``sign_matches`` (True/False; None when
    the paper's difference is 0 or no seed is common).
    """
    out = []
    for first, second, what in KEY_COMPARISONS:
        for key, title, paper_col in headline_keys(protocols):
            vals = by_row(results, key)
            a, b = vals.get(first, {}), vals.get(second, {})
            common = sorted(set(a) & set(b))
            if not common:
                continue
            diffs = [a[s] - b[s] for s in common]
            m, s = mean_std(diffs)
            paper = round(GRID_ROWS[first].paper[paper_col] - GRID_ROWS[second].paper[paper_col], 2)
            match = None if paper == 0 or math.isnan(m) else (m > 0) == (paper > 0) and m != 0
            out.append(
                {
                    "first": first,
                    "second": second,
                    "what": what,
                    "protocol": title,
                    "metric": key,
                    "n": len(common),
                    "mean": m,
                    "std": s,
                    "paper_column": paper_col,
                    "paper_diff": paper,
                    "sign_matches": match,
                }
            )
    return out


def paired_markdown(diffs: list[dict]) -> str:
    """The paired differences (:func:`paired_differences`) as markdown."""
    if not diffs:
        return "(no key comparison of the paper has both of its rows in this grid)\n"
    sign = {True: "yes", False: "**no**", None: "n/a"}
    header = ["comparison", "what it isolates", "protocol", "ours (mean ± std over seeds)", "n", "paper", "same sign"]
    rows = [
        [f"{d['first']} − {d['second']}", d["what"], d["protocol"], f"{d['mean']:+.2f} ± {d['std']:.2f}", d["n"]]
        + [f"{d['paper_diff']:+.1f} ({d['paper_column']})", sign[d["sign_matches"]]]
        for d in diffs
    ]
    return markdown_table(header, rows)


def paired_csv(diffs: list[dict]) -> str:
    """The paired differences as CSV."""
    header = ["first", "second", "protocol", "metric", "n", "mean", "std", "paper_column", "paper_diff"]
    rows = [
        [d["first"], d["second"], d["protocol"], d["metric"], d["n"], f"{d['mean']:.4f}", f"{d['std']:.4f}"]
        + [d["paper_column"], d["paper_diff"], d["sign_matches"]]
        for d in diffs
    ]
    return csv_table([*header, "sign_matches"], rows)


# --------------------------------------------------------------------------- plot
def y_limits(values: list[float]) -> tuple[float, float]:
    """A panel's y-range (%): every value (seeds and floors) inside, a margin below and above, within 0-100."""
    lo, hi = min(values), max(values)
    pad = max(1.0, 0.15 * (hi - lo))
    return max(0.0, lo - 3 * pad), min(100.0, hi + pad)


def plot(
    results: list[dict], protocols: list[str], path: str | Path, floors: dict[str, dict[str, float]] | None = None
) -> Path:
    """PNG: one panel per protocol, metric per row (marker and bar = mean ± std over seeds, dots = each seed).

    Means are markers, not bars: the y-axis does not start at 0, and a bar's area would exaggerate the gaps.

    ``floors``: reference levels drawn as dashed lines across each panel, ``{label: {metric key: value}}``
    (e.g. the raw-pixel and random-init baselines through the same protocols); the y-axis then spans them,
    so the gaps between rows are seen against what no pretraining gives.
    """
    heads = headline_keys(protocols)
    rows = sorted({r["row"] for r in results}, key=list(GRID_ROWS).index)
    fig, axes = figure(len(heads), (max(4.0, 0.5 * len(rows) + 2.5), 3.6))
    for ax, (key, title, _) in zip(axes, heads, strict=True):
        vals = by_row(results, key)
        for x, row in enumerate(rows):
            seeds = list(vals.get(row, {}).values())
            if not seeds:
                continue
            m, s = mean_std(seeds)
            color = "tab:orange" if row == "i" else "tab:blue"
            ax.errorbar(x, m, yerr=s, fmt="D", color=color, markersize=8, capsize=5, elinewidth=2, zorder=2)
            ax.scatter([x] * len(seeds), seeds, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(rows)), rows)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_xlabel("ablation row (i = SiameseIM)")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{title}: mean ± std, dots = seeds")
        got = [v for row in rows for v in vals.get(row, {}).values()]
        for (label, levels), style in zip((floors or {}).items(), ("--", ":", "-."), strict=False):
            if key in levels:
                ax.axhline(
                    levels[key], color="gray", linestyle=style, linewidth=1.2, label=f"{label} {levels[key]:.1f}"
                )
                got.append(levels[key])
        if floors:
            ax.legend(loc="best", fontsize=8)
        if got:
            ax.set_ylim(*y_limits(got))
    return save_png(fig, path)
