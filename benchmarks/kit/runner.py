"""Runs the kit's sections one after another, each in its own process group under its own time budget.

A section (:func:`benchmarks.kit.sections.run_one`) runs in a forked child that leads its own process
group and writes its record (:class:`~benchmarks.kit.record.Record`) to ``<work>/<name>.json`` as it measures. The runner waits at most
the section's budget, then kills the section's whole process group (its workers and training runs too),
and records ``ok`` / ``error`` (the section's exception) / ``timeout`` / ``skipped`` with the wall time and
whatever the section had written. ``<out>/kit.json`` and ``<out>/kit.md`` are rewritten after each section.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks.kit import record as records
from benchmarks.kit.procs import Child
from benchmarks.kit.report import write_report
from benchmarks.kit.sections import SECTIONS, preload, run_one

__all__ = ["SECTIONS", "run_kit", "run_section"]
LAST_RESERVE_S = 3.0  # the kit's own writing after the last section


def run_section(name: str, budget: float, work: Path, device: str, mode: dict) -> dict:
    """One section in a forked child under ``budget`` seconds, with the sizes ``mode``; its status, wall
    time, record and log tail."""
    log = work / f"{name}.log"
    start = time.monotonic()
    child = Child(log, run_one, name, work, budget, device, mode, new_group=True)
    while child.poll() is None and time.monotonic() - start < budget:
        time.sleep(0.1)
    code = child.poll()
    status = "timeout" if code is None else "ok" if code == 0 else "error"
    child.kill_group()  # on a timeout the section itself; otherwise whatever it left running
    wall = time.monotonic() - start
    results = records.read(work / f"{name}.json")
    error = results.pop("error", None)
    if status == "timeout":
        error = f"killed after its budget of {budget:.0f} s (figures written before that are kept)"
    elif status == "error" and error is None:
        error = f"exited with code {code}"
    tail = log.read_text()[-4000:] if status != "ok" and log.is_file() else ""
    return {
        "name": name,
        "status": status,
        "budget_s": round(budget, 1),
        "wall_s": round(wall, 2),
        "error": error,
        "results": results,
        "log_tail": tail,
    }


def run_kit(out: Path, work: Path, device: str, smoke: bool, sections: list[str], sizes: dict, env: dict) -> dict:
    """Every section in order under the kit's total budget; writes ``kit.json`` / ``kit.md`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    preload()  # imported once here, inherited by every forked section
    start = time.monotonic()
    total = sizes["total_budget_s"]
    kit = {"mode": "smoke" if smoke else "full", "device": device, "env": env, "total_budget_s": total, "sections": {}}
    for name in sections:
        left = total - (time.monotonic() - start) - LAST_RESERVE_S
        cap = sizes["budgets"][name]
        budget = min(cap, left)
        if budget < 5.0:
            kit["sections"][name] = {
                "name": name,
                "status": "skipped",
                "budget_s": 0.0,
                "wall_s": 0.0,
                "error": "no time left in the kit's total budget",
                "results": {},
                "log_tail": "",
            }
        else:
            print(f"[kit] {name}: budget {budget:.0f} s", flush=True)
            kit["sections"][name] = run_section(name, budget, work, device, sizes)
            sec = kit["sections"][name]
            print(
                f"[kit] {name}: {sec['status']} in {sec['wall_s']:.1f} s"
                + (f" ({sec['error'].splitlines()[0]})" if sec["error"] else ""),
                flush=True,
            )
        kit["wall_s"] = round(time.monotonic() - start, 2)
        write(out, kit)
    return kit


def write(out: Path, kit: dict) -> None:
    """``kit.json``, ``kit.md`` and the grid's CSV files (when it has them) into ``out``."""
    tmp = out / "kit.json.tmp"
    tmp.write_text(json.dumps(kit, indent=1))
    os.replace(tmp, out / "kit.json")
    write_report(out / "kit.md", kit)
    grid = kit["sections"].get("grid", {}).get("results", {})
    for key, name in (("table_csv", "ablation_table.csv"), ("paired_csv", "ablation_paired.csv")):
        if grid.get(key):
            (out / name).write_text(grid[key])
