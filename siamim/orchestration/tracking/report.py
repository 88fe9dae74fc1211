"""One human-readable page per run: ``report.html``, an MLflow artifact the run page shows as it is.

:func:`write_run_report` reads the run back and logs the config summary, the final metrics, the curves, the
evaluation table and the feature pictures, images inlined as ``data:`` URIs (MLflow shows HTML artifacts in a
sandboxed frame). The pretraining job writes it at the end; ``jobs/evaluate.py`` rewrites it. :func:`render_report`
is the pure part.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

REPORT_ARTIFACT = "report.html"
CURVES = ("loss", "lr", "momentum", "grad_norm")
SUMMARY_KEYS = (
    "data.dataset",
    "data.img_size",
    "model.embed_dim",
    "model.depth",
    "model.patch_size",
    "model.target",
    "model.heads",
    "model.norm",
    "mask.type",
    "mask.ratio",
    "views.different_views",
    "views.color_aug",
    "loss.type",
    "loss.scope",
    "train.epochs",
    "train.batch_size",
    "optim.blr",
    "run.num_workers",
    "train.init_from",
)
SUMMARY_TAGS = (
    "siamim.registered_model",
    "eval.checkpoint",
    "eval.protocols",
    "eval.representations",
    "eval.from_run_name",
)
FINAL_KEYS = ("knn_top1", "eval.knn_top1", "eval.correspondence", "eval.lin_top1", "eval.dense_miou")


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def markdown_table_to_html(markdown: str) -> str:
    """A pipe table (``| a | b |`` lines, the second the ``|---|`` rule) as an HTML ``<table>``."""
    lines = [ln.strip() for ln in markdown.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{html.escape(markdown)}</pre>"
    cells = [[html.escape(c.strip()) for c in ln.strip("|").split("|")] for ln in lines]
    head, body = cells[0], cells[2:]
    rows = ["<tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body]
    return "<table>" + "".join(rows) + "</table>"


def curves_png(histories: dict[str, list[tuple[int, float]]]) -> bytes | None:
    """One panel per metric ``{name: [(step, value), ...]}`` -> PNG bytes (None when there is nothing)."""
    present = {k: v for k, v in histories.items() if v}
    if not present:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.6), squeeze=False)
    for ax, (name, points) in zip(axes[0], present.items(), strict=True):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, lw=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def render_report(
    title: str,
    summary: dict[str, str],
    final: dict[str, float],
    curves: bytes | None,
    table_markdown: str | None,
    pictures: dict[str, bytes],
) -> str:
    """The report page: ``summary`` (config key -> value), ``final`` metrics, the curves PNG, the
    evaluation table (markdown), ``pictures`` (caption -> PNG bytes)."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:16px;color:#222}table{border-collapse:collapse;"
        "font-size:13px;margin:6px 0 14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "th{background:#f3f3f3}h2{font-size:16px;margin-top:22px}img{max-width:100%;border:1px solid #ddd}"
        "figure{margin:8px 0}figcaption{font-size:12px;color:#555}</style></head><body>",
        f"<h1 style='font-size:20px'>{esc(title)}</h1>",
        "<h2>Configuration</h2><table>",
        *(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in summary.items()),
        "</table>",
    ]
    if final:
        parts += ["<h2>Final metrics</h2><table>"]
        parts += [f"<tr><th>{esc(k)}</th><td>{v:.4g}</td></tr>" for k, v in final.items()]
        parts += ["</table>"]
    if curves:
        parts += ["<h2>Curves</h2>", f"<img alt='curves' src='{_png_uri(curves)}'>"]
    if table_markdown:
        parts += ["<h2>Evaluation</h2>", markdown_table_to_html(table_markdown)]
    if pictures:
        parts += ["<h2>Feature pictures</h2>"]
        for caption, data in pictures.items():
            parts += [f"<figure><img alt='{esc(caption)}' src='{_png_uri(data)}'>"]
            parts += [f"<figcaption>{esc(caption)}</figcaption></figure>"]
    parts += ["</body></html>"]
    return "\n".join(parts)


def _pngs(client, run_id: str, folder: str, dest: Path) -> dict[str, bytes]:
    """Every ``.png`` under artifact ``folder`` (recursively) -> ``{path: bytes}``."""
    found: dict[str, bytes] = {}
    try:
        entries = client.list_artifacts(run_id, folder)
    except Exception:
        return found
    for entry in entries:
        if entry.is_dir:
            found.update(_pngs(client, run_id, entry.path, dest))
        elif entry.path.endswith(".png"):
            local = client.download_artifacts(run_id, entry.path, str(dest))
            found[entry.path] = Path(local).read_bytes()
    return found


def write_run_report(tracking_uri: str, run_id: str) -> str:
    """Build the report of ``run_id`` from what the store holds and log it as ``report.html``; returns the HTML."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    params, metrics = run.data.params, run.data.metrics
    summary = {k: params[k] for k in SUMMARY_KEYS if k in params}
    summary |= {k: run.data.tags[k] for k in SUMMARY_TAGS if k in run.data.tags}  # what was evaluated, registered
    final = {k: metrics[k] for k in FINAL_KEYS if k in metrics}
    histories = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in CURVES}
    evaluation = run.data.tags.get("eval.from_run_id") or run_id  # a pretraining run: its latest evaluation's run
    with tempfile.TemporaryDirectory(prefix="siamim-report-") as tmp:
        table = None
        try:
            table = Path(client.download_artifacts(evaluation, "eval/evaluation.md", tmp)).read_text()
        except Exception:
            pass  # not evaluated yet
        pictures = _pngs(client, run_id, "pictures", Path(tmp))
        pictures.update(_pngs(client, evaluation, "eval/pictures", Path(tmp)))
    title = f"SiameseIM run {run.info.run_name or run_id} ({run.info.status.lower()})"
    page = render_report(title, summary, final, curves_png(histories), table, pictures)
    client.log_text(run_id, page, REPORT_ARTIFACT)
    return page
