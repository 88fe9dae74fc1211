"""The result table: the paper's columns mapped to our Fashion-MNIST protocols.

Rows are metrics (plus one wall-time row per protocol), columns are the
evaluated representations (a checkpoint and its floors: raw pixels, random
init). Rendered as markdown (printed, logged as an artifact) and CSV (long
format: one line per representation x metric).
"""

from __future__ import annotations

import csv
import io

from siamim.eval.robustness import CORRUPTIONS

# key -> (protocol, paper column, our metric)
METRICS: dict[str, tuple[str, str, str]] = {
    "knn_top1": ("knn", "kNN (monitor; no paper column)", "cosine 20-NN top-1 %, T=0.07, cls"),
    "lin_top1": ("lin", "LIN", "linear probe top-1 %, cls token (BN w/o affine + linear, LARS)"),
    "lin_mean_top1": ("lin", "LIN (mean-pooled)", "linear probe top-1 %, mean of patch tokens"),
    "fewshot_top1": ("fewshot", "1% FT", "1% labels, logistic regression top-1 %, mean over seeds"),
    "fewshot_top1_std": ("fewshot", "1% FT (spread)", "std over seeds, points"),
    "fewshot_per_class": ("fewshot", "-", "labelled images per class"),
    "longtail_top1": ("longtail", "LVIS AP box", "linear probe top-1 % trained on a 100:1 long tail"),
    "longtail_rare_top1": ("longtail", "LVIS AP box rare", "mean top-1 % of the rarest classes"),
    "longtail_train_size": ("longtail", "-", "long-tailed training images"),
    "dense_miou": ("dense", "ADE20k mIoU / COCO AP", "mosaic segmentation mIoU %, linear probe on patch tokens"),
    "dense_pixel_acc": ("dense", "-", "mosaic pixel accuracy %"),
    "ft_top1": ("ft", "FT", "fine-tuned top-1 % (pixels: linear classifier, same budget)"),
    "ft_steps": ("ft", "-", "optimiser steps"),
    "robust_clean_top1": ("robust", "IN-C (clean ref.)", "LIN classifier, clean top-1 %"),
    "robust_mca": ("robust", "IN-C 1-mCE", "LIN classifier, mean corrupted top-1 % (mCA)"),
    **{f"robust_{c}": ("robust", "-", f"LIN classifier, {c} top-1 % (mean of 5 severities)") for c in CORRUPTIONS},
    "robust_ft_clean_top1": ("robust", "IN-C (clean ref.)", "FT classifier, clean top-1 %"),
    "robust_ft_mca": ("robust", "IN-C 1-mCE", "FT classifier, mean corrupted top-1 % (mCA)"),
    **{f"robust_ft_{c}": ("robust", "-", f"FT classifier, {c} top-1 %") for c in CORRUPTIONS},
}


def _describe(key: str) -> tuple[str, str, str]:
    if key in METRICS:
        return METRICS[key]
    return key.split("_")[0], "-", key


def table_rows(results: dict[str, list]) -> list[dict]:
    """``{representation: [ProtocolResult, ...]}`` -> rows ``{"key", "protocol", "paper", "metric",
    <representation>: value or None, ...}`` in protocol order, a ``<protocol>_wall_s`` row after each protocol."""
    rows: dict[str, dict] = {}
    for rep_name, protocol_results in results.items():
        for res in protocol_results:
            items = list(res.metrics.items()) + [(f"{res.protocol}_wall_s", res.wall_s)]
            for key, value in items:
                if key not in rows:
                    if key.endswith("_wall_s"):
                        meta = (res.protocol, "-", "wall time, s (incl. feature extraction it triggered)")
                    else:
                        meta = _describe(key)
                    rows[key] = {"key": key, "protocol": meta[0], "paper": meta[1], "metric": meta[2]}
                rows[key][rep_name] = value
    return list(rows.values())


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.2f}"


def to_markdown(rows: list[dict], reps: list[str]) -> str:
    """A GitHub markdown table: protocol | paper column | our metric | one column per representation."""
    head = ["protocol", "paper column", "our metric (Fashion-MNIST)"] + reps
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            "| " + " | ".join([r["protocol"], r["paper"], r["metric"]] + [_fmt(r.get(n)) for n in reps]) + " |"
        )
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], reps: list[str]) -> str:
    """Long format: ``representation,protocol,key,paper_column,metric,value``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["representation", "protocol", "key", "paper_column", "metric", "value"])
    for rep in reps:
        for r in rows:
            if r.get(rep) is not None:
                w.writerow([rep, r["protocol"], r["key"], r["paper"], r["metric"], f"{r[rep]:.6g}"])
    return buf.getvalue()


def flat_metrics(results: dict[str, list], primary: str | None = None) -> dict[str, float]:
    """MLflow metric dict: ``eval.<key>`` for the ``primary`` representation, ``eval.<rep>.<key>`` for the others."""
    out = {}
    for rep_name, protocol_results in results.items():
        prefix = "eval." if rep_name == primary else f"eval.{rep_name}."
        for res in protocol_results:
            for key, value in res.metrics.items():
                out[prefix + key] = float(value)
            out[f"{prefix}{res.protocol}_wall_s"] = float(res.wall_s)
    return out
