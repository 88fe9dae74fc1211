"""Section ``grid``: the paper's ablation rows x seeds on Fashion-MNIST with the plain loop, several trials at once.

``workers`` forked processes (:mod:`benchmarks.kit.grid_worker`) share the device. Each first calibrates (row i,
a few steps, one evaluation); from the slowest worker's step time, start-up and evaluation time, the grid
picks the one step count every trial trains so that all waves of trials end inside the budget ("as many
epochs as fit"), then the workers claim trials until none is left. The results are assembled in
``jobs/ablate.py``'s format (:mod:`siamim.orchestration.ablation.table`: mean ± std over seeds beside the
paper's columns, the paper's key comparisons as paired differences).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from benchmarks.kit.grid_worker import worker_main
from benchmarks.kit.procs import Child
from benchmarks.kit.record import Record
from siamim.orchestration.ablation import table
from siamim.orchestration.ablation.rows import parse_rows

MARGIN_S = 8.0  # kept at the end for collecting the results and writing the table


def choose_steps(calibs: list[dict], trials: int, workers: int, seconds: float, lo: int, hi: int) -> int:
    """Steps per trial so that ``ceil(trials / workers)`` waves fit in ``seconds`` (slowest calibration, 10 % spare)."""
    waves = math.ceil(trials / max(1, workers))
    step_s = max(c["step_s"] for c in calibs)
    fixed = max(c["overhead_s"] for c in calibs) + max(c["eval_s"] for c in calibs)
    steps = int(0.9 * (seconds / waves - fixed) / max(step_s, 1e-6))
    return max(lo, min(hi, steps))


def _collect(work: Path) -> tuple[list[dict], list[dict]]:
    results, failed = [], []
    for path in sorted((work / "results").glob("*.json")):
        item = json.loads(path.read_text())
        (failed if path.name.endswith(".error.json") else results).append(item)
    return results, failed


def run_grid(rec: Record, s: dict, device: str, work: Path, deadline: float) -> None:
    """Calibrate, plan, run every (row, seed) trial, assemble the table (``deadline``: ``time.monotonic()``)."""
    work = work / "grid"
    for sub in ("claims", "results"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    rows = parse_rows(s["rows"])
    trials = [(r, seed) for r in rows for seed in range(s["seeds"])]
    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // s["workers"]))
    spec = {
        "trials": trials,
        "overrides": s["overrides"],
        "device": device,
        "calib_steps": s["calib_steps"],
        "threads": threads,
        "protocols": s["protocols"],
        "plan_timeout_s": max(1.0, deadline - time.monotonic()),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    rec.put(
        "setup",
        {
            "rows": rows,
            "seeds": s["seeds"],
            "trials": len(trials),
            "workers": s["workers"],
            "threads_per_worker": threads,
            "overrides": s["overrides"],
            "protocols": s["protocols"],
        },
    )
    # In this section's process group: a runner that kills the section kills its workers too.
    procs = [Child(work / f"worker-{k}.log", worker_main, work, k) for k in range(s["workers"])]
    try:
        _plan_and_wait(rec, s, work, procs, len(trials), deadline)
    finally:
        for p in procs:
            p.kill()
    results, failed = _collect(work)
    done = {(r["row"], r["seed"]) for r in results}
    missing = [
        {"row": r, "seed": seed, "error": "not finished: the budget ran out or its worker ended (worker_errors)"}
        for r, seed in trials
        if (r, seed) not in done and all((f["row"], f["seed"]) != (r, seed) for f in failed)
    ]
    failed = failed + missing
    rec.put("trials", [{k: v for k, v in r.items() if k != "trace"} for r in results])
    rec.put("failed", [{k: v for k, v in f.items() if k != "trace"} for f in failed])
    protocols = s["protocols"]
    assembled = table.assemble(results, protocols, failed)
    diffs = table.paired_differences(results, protocols)
    rec.put("table", assembled)
    rec.put("paired", diffs)
    rec.put("table_md", table.to_markdown(assembled, protocols))
    rec.put("table_csv", table.to_csv(assembled, protocols))
    rec.put("paired_md", table.paired_markdown(diffs))
    rec.put("paired_csv", table.paired_csv(diffs))
    if not results:
        raise RuntimeError(f"no trial of the grid finished ({len(failed)} failed or unfinished)")


def _worker_errors(work: Path, procs: list) -> list[str]:
    return [
        f"worker {k} exited {p.returncode}: {(work / f'worker-{k}.log').read_text()[-1500:]}"
        for k, p in enumerate(procs)
        if p.poll() not in (None, 0)
    ]


def _plan_and_wait(rec: Record, s: dict, work: Path, procs: list, trials: int, deadline: float) -> None:
    calib_paths = [work / f"calib-{k}.json" for k in range(len(procs))]
    while not all(path.is_file() or p.poll() is not None for path, p in zip(calib_paths, procs, strict=True)):
        if time.monotonic() > deadline - MARGIN_S:
            raise TimeoutError("the grid's workers did not finish their calibration inside the budget")
        time.sleep(0.2)
    calibs = [json.loads(path.read_text()) for path in calib_paths if path.is_file()]
    if not calibs:
        raise RuntimeError("every grid worker failed before calibrating:\n" + "\n".join(_worker_errors(work, procs)))
    left = deadline - time.monotonic() - MARGIN_S
    steps = choose_steps(calibs, trials, len(calibs), left, s["min_steps"], s["max_steps"])
    per_epoch = calibs[0]["num_samples"] // _batch_size(s)
    plan = {
        "steps": steps,
        "epochs": steps / per_epoch,
        "steps_per_epoch": per_epoch,
        "workers": len(calibs),
        "seconds_for_trials": left,
        "calibration": calibs,
    }
    tmp = work / "plan.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, work / "plan.json")
    rec.put("plan", plan)
    rec.put("worker_errors", _worker_errors(work, procs))
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline - MARGIN_S:
        time.sleep(0.5)
    rec.put("worker_errors", _worker_errors(work, procs))


def _batch_size(s: dict) -> int:
    from siamim.orchestration.ablation.rows import row_config

    return row_config("i", s["overrides"]).train.batch_size
