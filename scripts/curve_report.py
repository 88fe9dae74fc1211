#!/usr/bin/env python
"""Learning curves of an ablation grid's trials: the live monitors per epoch, their levels and a plot.

    # 1. the curves out of MLflow (any time while the grid runs: finished points only)
    python scripts/curve_report.py export --tracking-uri sqlite:///mlflow.db --grid curves-ia --out docs/results/curves-ia
    # 2. the same monitors on a random-init encoder and on raw pixels (the levels a curve must pass)
    python scripts/curve_report.py levels --out docs/results/curves-ia
    # 3. table, rank correlation of RankMe with kNN, plot
    python scripts/curve_report.py report --curves docs/results/curves-ia --out /tmp/curves --plot docs/curves.png

``export`` writes ``curves.csv`` (row, seed, step, epoch, knn_monitor, rankme_monitor: one line per
monitored step of each trial, from the child runs tagged ``ablation.grid=<grid>``), ``final.csv``
(the finished trials' full ``eval.knn_top1`` / ``eval.lin_top1``) and ``grid.json`` (the rows' config
overrides, so ``levels`` measures on the same monitor subset). ``levels`` writes ``levels.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KNN, RANK = "knn_monitor", "rankme_monitor"
LEVELS = {"random": "random init", "pixels": "raw pixels"}
MARGIN = 5.0  # kNN points above the random-init level that count as "learned past it"


def export(tracking_uri: str, grid: str, out: Path) -> int:
    """Write ``curves.csv``, ``final.csv`` and ``grid.json`` of grid ``grid`` from its MLflow child runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`ablation.grid` = '{grid}'"
    )
    trials = [r for r in runs if "ablation.row" in r.data.tags]
    if not trials:
        raise SystemExit(f"--grid {grid}: no trial runs tagged ablation.grid={grid} in {tracking_uri}")
    lines, finals, params = [], [], {}
    for run in sorted(trials, key=lambda r: (r.data.tags["ablation.row"], int(r.data.tags["ablation.seed"]))):
        row, seed = run.data.tags["ablation.row"], int(run.data.tags["ablation.seed"])
        history = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} for key in (KNN, RANK)
        }
        epochs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch")}
        for step in sorted(history[KNN]):
            lines.append(
                [
                    row,
                    seed,
                    step,
                    round(epochs.get(step, float("nan")), 4),
                    history[KNN][step],
                    history[RANK].get(step, ""),
                ]
            )
        metrics = run.data.metrics
        if run.info.status == "FINISHED" and "eval.knn_top1" in metrics:
            finals.append([row, seed, metrics["eval.knn_top1"], metrics.get("eval.lin_top1", "")])
        params[row] = {k: v for k, v in run.data.params.items() if k.startswith(("eval.monitor", "train.", "data."))}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "curves.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["row", "seed", "step", "epoch", KNN, RANK], *lines])
    with (out / "final.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["row", "seed", "knn_top1", "lin_top1"], *finals])
    (out / "grid.json").write_text(json.dumps({"grid": grid, "params": params}, indent=1, sort_keys=True) + "\n")
    print(f"{len(lines)} monitored points of {len(trials)} trials, {len(finals)} finished -> {out}")
    return 0


def levels(out: Path, row: str = "i") -> int:
    """Write ``levels.csv``: the monitors of a random-init encoder (row ``row``'s, ``train.seed``) and raw pixels."""
    import torch

    from siamim.config import load_config
    from siamim.eval.monitor import KnnMonitor
    from siamim.eval.representation import PixelRepresentation
    from siamim.model.siamim import SiameseIM

    params = json.loads((out / "grid.json").read_text())["params"][row]
    keys = ("eval.monitor_bank", "eval.monitor_queries", "train.seed", "data.img_size")
    cfg = load_config(f"ablation/{row}", [f"{k}={params[k]}" for k in keys if k in params])
    monitor = KnnMonitor(cfg)
    torch.manual_seed(cfg.train.seed)
    measured = {
        "random": monitor(SiameseIM(cfg).online.encoder.eval()),
        "pixels": monitor.measure(PixelRepresentation(cfg.model.patch_size)),
    }
    with (out / "levels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["representation", KNN, RANK], *([k, v[KNN], v[RANK]] for k, v in measured.items())])
    print(json.dumps(measured, indent=1))
    return 0


def read_csv(path: Path) -> list[dict]:
    """Rows of ``path`` with the numeric columns as floats (``row`` and ``representation`` stay text)."""
    text = ("row", "representation")
    return [{k: v if k in text or v == "" else float(v) for k, v in r.items()} for r in csv.DictReader(path.open())]


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else float("nan")


def summarise(curves: list[dict], lvls: dict[str, dict]) -> dict[str, dict]:
    """Per row: its points, the first epoch ``MARGIN`` kNN points above random init, and RankMe-kNN correlation."""
    out = {}
    for row in sorted({c["row"] for c in curves}):
        points = sorted((c for c in curves if c["row"] == row), key=lambda c: c["step"])
        bar = lvls["random"][KNN] + MARGIN if "random" in lvls else None
        passed = next((p["epoch"] for p in points if bar is not None and p[KNN] >= bar), None)
        ranked = [p for p in points if p[RANK] != ""]
        rho = spearman([p[KNN] for p in ranked], [p[RANK] for p in ranked]) if len(ranked) > 2 else float("nan")
        out[row] = {"points": points, "passed_at": passed, "rho": rho}
    return out


def markdown(summary: dict[str, dict], lvls: dict[str, dict], finals: list[dict], pair: tuple[str, str]) -> str:
    """The curves as a table (a column of ``pair[0] − pair[1]`` when both rows are there) and the findings."""
    rows = [r for r in pair if r in summary] + [r for r in summary if r not in pair]
    both = all(r in summary for r in pair)
    epochs = sorted({round(p["epoch"]) for s in summary.values() for p in s["points"]})
    head = (
        ["epoch"]
        + [f"{r}: {m}" for r in rows for m in ("kNN", "RankMe")]
        + ([f"{pair[0]} − {pair[1]} (kNN)"] if both else [])
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in epochs:
        at = {r: next((p for p in summary[r]["points"] if round(p["epoch"]) == e), None) for r in rows}
        cells = [f"{at[r][KNN]:.2f} | {at[r][RANK]:.1f}" if at[r] else " | " for r in rows]
        if both:
            first, second = at[pair[0]], at[pair[1]]
            cells.append(f"{first[KNN] - second[KNN]:+.2f}".replace("-", "−") if first and second else "")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines.append("")
    for key, name in LEVELS.items():
        if key in lvls:
            lines.append(f"* {name} (same monitor subset): kNN {lvls[key][KNN]:.2f}, RankMe {lvls[key][RANK]:.1f}")
    for r in rows:
        s = summary[r]
        passed = f"epoch {s['passed_at']:.0f}" if s["passed_at"] is not None else "not within these epochs"
        lines.append(
            f"* row {r}: {MARGIN:.0f} kNN points above random init: {passed}; Spearman(RankMe, kNN) {s['rho']:+.2f}"
        )
    for f in finals:
        lin = f" / LIN {f['lin_top1']:.2f}" if f["lin_top1"] != "" else ""
        lines.append(f"* row {f['row']} (seed {f['seed']:.0f}) at the end, full sets: kNN {f['knn_top1']:.2f}{lin}")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict], lvls: dict[str, dict], path: Path) -> Path:
    """kNN and RankMe against epoch, one line per row, with the levels as grey lines."""
    from siamim.orchestration.driver.experiment import figure, save_png

    fig, (ax_knn, ax_rank) = figure(2, size=(5.0, 4.0))
    for row, s in summary.items():
        ep = [p["epoch"] for p in s["points"]]
        ax_knn.plot(ep, [p[KNN] for p in s["points"]], marker="o", label=f"row {row}")
        ax_rank.plot(ep, [p[RANK] for p in s["points"]], marker="o", label=f"row {row}")
    for key, style in (("random", ":"), ("pixels", "--")):
        if key in lvls:
            ax_knn.axhline(lvls[key][KNN], color="grey", linestyle=style, label=LEVELS[key])
    if "random" in lvls:  # raw pixels have more dimensions (3 x H x W) than the encoder: no common scale
        ax_rank.axhline(lvls["random"][RANK], color="grey", linestyle=":", label=LEVELS["random"])
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1 % (monitor subset)", title="kNN monitor")
    ax_rank.set(xlabel="epoch", ylabel="effective rank", title="RankMe (no labels)")
    for ax in (ax_knn, ax_rank):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_png(fig, path)


def report(data: Path, out: Path, plot_path: Path | None, pair: tuple[str, str] = ("i", "a")) -> int:
    if not (data / "curves.csv").is_file():
        raise SystemExit(f"--curves {data}: no curves.csv (run the export step first)")
    curves = read_csv(data / "curves.csv")
    lvls = {r["representation"]: r for r in read_csv(data / "levels.csv")} if (data / "levels.csv").is_file() else {}
    finals = read_csv(data / "final.csv") if (data / "final.csv").is_file() else []
    summary = summarise(curves, lvls)
    md = markdown(summary, lvls, finals, pair)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curves.md").write_text(md)
    png = plot(summary, lvls, plot_path or out / "curves.png")
    print(md + f"\nwritten: {out}/curves.md, {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="curves.csv, final.csv, grid.json from MLflow")
    e.add_argument("--tracking-uri", required=True)
    e.add_argument("--grid", required=True, help="the grid's name (jobs/ablate.py --name)")
    e.add_argument("--out", type=Path, required=True)
    lv = sub.add_parser("levels", help="levels.csv: the monitors on a random-init encoder and raw pixels")
    lv.add_argument("--out", type=Path, required=True, help="the export's folder (reads its grid.json)")
    lv.add_argument("--row", default="i", help="whose random-init encoder (default i)")
    r = sub.add_parser("report", help="curves.md and the plot")
    r.add_argument("--curves", type=Path, required=True, help="the export's folder")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--plot", type=Path, help="the PNG (default <out>/curves.png)")
    r.add_argument("--pair", default="i,a", help="the two rows whose kNN difference gets a column (default i,a)")
    args = p.parse_args(argv)
    if args.command == "export":
        return export(args.tracking_uri, args.grid, args.out)
    if args.command == "levels":
        return levels(args.out, args.row)
    return report(args.curves, args.out, args.plot, tuple(args.pair.split(",", 1)))


if __name__ == "__main__":
    sys.exit(main())
