"""The result table: the paper's columns mapped to our Fashion-MNIST protocols.

Rows are metrics (plus one wall-time row per protocol), columns are the
evaluated representations (a checkpoint and its floors: raw pixels, random
init). Rendered as markdown (printed, logged as an artifact) and CSV (long
format: one line per representation x metric).
"""

from __future__ import annotations

import csv
import io

from siamim.eval.protocols import protocols

# key -> (protocol, paper column, our metric), from each protocol's declared columns
METRICS: dict[str, tuple[str, str, str]] = {
    key: (p.name, paper, ours) for p in protocols() for key, (paper, ours) in p.columns.items()
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
