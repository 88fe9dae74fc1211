"""``kit.md``: the kit's figures as markdown tables (one per section), from the record ``kit.json`` holds."""

from __future__ import annotations

from pathlib import Path


def _f(value, digits: int = 2, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    v = value * scale
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]


def _step(r: dict) -> list[str]:
    setup = r.get("setup", {})
    lines = [
        f"{setup.get('config')} at {setup.get('img_size')} px, batch {setup.get('batch')}, on "
        f"{setup.get('device')}; {_f(setup.get('analytic_TFLOP_per_step'), 3)} TFLOP/step (analytical), "
        f"peak {setup.get('peak_TFLOPs') or '-'} TFLOP/s",
        "",
    ]
    rows = [
        [
            v,
            d.get("precision"),
            _f(d.get("images_per_s"), 1),
            _f(d.get("TFLOP_per_s"), 3),
            _f(d.get("MFU"), 1, 100),
            _f(d.get("peak_memory_GiB")),
            _f(d.get("wall_s_incl_warmup"), 1),
        ]
        for v in ("ours", "reference", "ours_compiled")
        if isinstance(d := r.get(v), dict)
    ]
    lines += _table(["step", "precision", "images/s", "TFLOP/s", "MFU %", "peak memory GiB", "wall s"], rows)
    for key in ("speedup_ours_over_reference", "speedup_compiled_over_eager"):
        if key in r:
            lines.append(f"\n{key}: {_f(r[key], 3)}x")
    return lines


def _loss(r: dict) -> list[str]:
    rows = []
    for b in r.get("batches", []):
        o, ref = b.get("ours", {}), b.get("reference", {})
        rows.append(
            [
                b["batch"],
                b["rows_N"],
                _f(o.get("ms")),
                _f(o.get("peak_bytes"), 2, 2**-20),
                o.get("error") or "",
                _f(ref.get("ms")),
                _f(ref.get("peak_bytes"), 2, 2**-20),
                ref.get("error") or "",
                _f(b["analytic_NxN_bytes_fp32"], 2, 2**-20),
            ]
        )
    head = [
        "batch",
        "rows N",
        "ours ms",
        "ours peak MiB",
        "ours error",
        "N x N ms",
        "N x N peak MiB",
        "N x N error",
        "N x N matrix alone MiB (fp32)",
    ]
    return _table(head, rows)


def _views(r: dict) -> list[str]:
    s, syn, fed = r.get("setup", {}), r.get("step_synthetic", {}), r.get("step_fed_by_device_views", {})
    rows = [
        ["device render, full recipe (pairs/s)", _f(r.get("render_pairs_per_s"), 1)],
        ["device render, crops alone (pairs/s)", _f(r.get("crops_only_pairs_per_s"), 1)],
        ["step on synthetic tensors (images/s)", _f(syn.get("images_per_s"), 1)],
        ["step fed by the loader + device views (images/s)", _f(fed.get("images_per_s"), 1)],
        ["fed / synthetic (below 1: the GPU waits)", _f(r.get("fed_over_synthetic"), 3)],
        ["host wait for the loader per step (s)", _f(fed.get("loader_wait_s_per_step"), 4)],
    ]
    return [f"sources {s.get('source_hw')} -> {s.get('size')} px, batch {s.get('batch')}", ""] + _table(
        ["figure", "value"], rows
    )


def _e2e(r: dict) -> list[str]:
    first, res, rel = r.get("first_run", {}), r.get("resumed_run", {}), r.get("reloaded", {})
    rows = [
        ["first run: wall s / checkpoint step", f"{_f(first.get('wall_s'), 1)} / {first.get('checkpoint_step')}"],
        ["resumed run: wall s / last img/s", f"{_f(res.get('wall_s'), 1)} / {_f(res.get('last_images_per_s'), 0)}"],
        ["kNN top-1 % (end of the resumed run)", _f(res.get("knn_top1"))],
        [
            "reloaded: step / views_on / features finite",
            f"{rel.get('checkpoint_step')} / {rel.get('views_on')} / {rel.get('features_finite')}",
        ],
    ]
    return _table(["figure", "value"], rows)


def _grid(r: dict) -> list[str]:
    plan = r.get("plan", {})
    lines = [
        f"{r.get('setup', {}).get('trials')} trials, {plan.get('workers')} at once; every trial "
        f"{plan.get('steps')} steps = {_f(plan.get('epochs'), 3)} epochs; {len(r.get('failed', []))} failed "
        "or unfinished",
        "",
    ]
    lines += [r.get("table_md", "(no table)").rstrip(), "", r.get("paired_md", "").rstrip()]
    return lines


RENDER = {"step": _step, "loss_memory": _loss, "views": _views, "e2e": _e2e, "grid": _grid}


def render(kit: dict) -> str:
    """The whole summary: environment, section status table, one block per section."""
    env = kit.get("env", {})
    lines = [
        "# Device kit",
        "",
        f"mode {kit['mode']}, device {kit['device']}, "
        + ", ".join(f"{k} {v}" for k, v in env.items())
        + f"; wall {_f(kit.get('wall_s'), 1)} s "
        f"of {kit['total_budget_s']:.0f} s",
        "",
    ]
    secs = kit["sections"].values()
    lines += _table(
        ["section", "status", "budget s", "wall s", "error"],
        [
            [
                s["name"],
                s["status"],
                _f(s["budget_s"], 0),
                _f(s["wall_s"], 1),
                (s["error"] or "").splitlines()[0][:160] if s["error"] else "",
            ]
            for s in secs
        ],
    )
    for s in secs:
        lines += ["", f"## {s['name']}", ""]
        try:
            lines += RENDER[s["name"]](s["results"])
        except Exception as err:  # a partial record renders as far as it goes
            lines.append(f"(partial record: {type(err).__name__}: {err})")
    return "\n".join(lines) + "\n"


def write_report(path: Path, kit: dict) -> None:
    path.write_text(render(kit))
