"""What a search leaves: the table of its trials, the metric-vs-step plot and the best config as a preset.

Pure functions (no Ray, no MLflow). A trial is a dict::

    {"index": int, "name": "t003", "values": {key: sampled value}, "status": "finished" | "stopped early" |
     "failed", "steps": int (the last step it reported), "metric": float | None (its last value),
     "history": [(step, value), ...], "run_id": str | None, "error": str | None}
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import yaml

from siamim.orchestration.driver.experiment import csv_table, figure, fmt, markdown_table, save_png

FINISHED, STOPPED, FAILED = "finished", "stopped early", "failed"


def best_trial(trials: list[dict], mode: str) -> dict | None:
    """The best trial by its last metric, among those that ran the whole budget (a stopped trial's last value
    is from fewer steps, so it is not comparable); None when no trial finished."""
    done = [t for t in trials if t["status"] == FINISHED and t["metric"] is not None and not math.isnan(t["metric"])]
    if not done:
        return None
    done.sort(key=lambda t: t["index"])  # a tie goes to the first trial drawn
    return (max if mode == "max" else min)(done, key=lambda t: t["metric"])


def table_markdown(trials: list[dict], keys: list[str], metric: str, budget: int, best: dict | None) -> str:
    """One row per trial: index, sampled values, last metric, steps run of the budget, status."""
    rows = [
        [t["name"] + (" **best**" if best is not None and t["index"] == best["index"] else "")]
        + [fmt(t["values"].get(k)) for k in keys]
        + [fmt(t["metric"]), f"{t['steps']} / {budget}", t["status"]]
        for t in sorted(trials, key=lambda t: t["index"])
    ]
    return markdown_table(["trial", *keys, f"{metric} (last)", "steps", "status"], rows)


def table_csv(trials: list[dict], keys: list[str], metric: str, budget: int) -> str:
    """The table as CSV, with the stopped flag and the MLflow run of each trial."""
    header = ["trial", *keys, f"{metric}_last", "steps", "budget", "status", "stopped_early", "mlflow_run_id"]
    rows = [
        [t["name"], *(t["values"].get(k) for k in keys)]
        + [t["metric"], t["steps"], budget, t["status"], t["status"] == STOPPED, t.get("run_id") or ""]
        for t in sorted(trials, key=lambda t: t["index"])
    ]
    return csv_table(header, rows)


def plot(trials: list[dict], metric: str, budget: int, path: str | Path, best: dict | None = None) -> Path:
    """PNG of ``metric`` vs step, one line per trial; a cross where ASHA stopped a trial, the best one thicker."""
    fig, (ax,) = figure()
    for t in sorted(trials, key=lambda t: t["index"]):
        if not t["history"]:
            continue
        steps, values = zip(*t["history"], strict=True)
        is_best = best is not None and t["index"] == best["index"]
        (line,) = ax.plot(steps, values, marker="o", markersize=3, linewidth=2.5 if is_best else 1.2)
        line.set_label(f"{t['name']} ({t['status']})" + (" best" if is_best else ""))
        if t["status"] == STOPPED:
            ax.plot(steps[-1], values[-1], marker="x", markersize=9, color=line.get_color())
    ax.axvline(budget, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (x: stopped early by ASHA; dotted: the budget)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return save_png(fig, path)


PRESET_DROPPED = ("name", "storage")  # of the run section: where the trial itself ran, not part of the recipe


def preset_text(cfg_dict: dict, header: dict) -> str:
    """The preset YAML of a trial's resolved config (``to_dict``), without its run name and storage, under a
    comment header (``header``: search, metric, value, budget, trials, date...; one ``# key: value`` line each)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg_dict.items()}
    for key in PRESET_DROPPED:
        data.get("run", {}).pop(key, None)
    lines = [f"# {k}: {v}" for k, v in header.items()]
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)


def preset_header(spec: dict, best: dict, trials: list[dict], budget: int) -> dict:
    """The header of the found preset: which search produced it, its metric and value, the budget, the date."""
    counts = {s: sum(t["status"] == s for t in trials) for s in (FINISHED, STOPPED, FAILED)}
    return {
        "found by": f"jobs/search.py --name {spec['name']} (MLflow parent run {spec.get('parent_run_id')})",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "best": f"{best['name']}: {spec['metric']} = {best['metric']:.4g} ({spec['mode']}) at step {best['steps']}",
        "sampled": ", ".join(f"{k}={v}" for k, v in best["values"].items()),
        "budget": f"{budget} steps per trial; ASHA grace period {spec['grace_period']} steps, reduction factor "
        f"{spec['reduction_factor']}",
        "trials": f"{len(trials)} ({counts[FINISHED]} finished, {counts[STOPPED]} stopped early, {counts[FAILED]} failed)",
        "base": f"--config {spec['config']}" + (f" {' '.join(spec['overrides'])}" if spec["overrides"] else ""),
        "space": spec["space_text"].strip().replace("\n", "; "),
        "use": f"python jobs/pretrain.py --config found/{spec['name']}  (a longer run: train.max_steps=null "
        "train.epochs=N)",
    }
