"""One worker process of the kit's ablation grid (forked by the grid; by hand: ``python -m benchmarks.kit.grid_worker --work DIR --worker K``).

Reads ``DIR/spec.json`` (trials, overrides, device, calibration steps). First a calibration: row (i)
for ``calib_steps`` steps plus one evaluation, timed, written to ``DIR/calib-K.json``. Then it waits for
the grid's ``DIR/plan.json`` (the steps every trial trains, chosen from all workers' calibrations to
fill the budget) and trains + evaluates trials until none is left, claiming each by creating
``DIR/claims/<row>-s<seed>`` exclusively; results go to ``DIR/results/<row>-s<seed>.json``.
Each trial is the plain loop (:func:`siamim.train.pretrain`) and the evaluation suite
(:func:`siamim.eval.runner.evaluate`), no Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch

from siamim.data.sources import build_source
from siamim.eval.report import flat_metrics
from siamim.eval.representation import EncoderRepresentation
from siamim.eval.runner import Suite, evaluate
from siamim.orchestration.ablation.rows import row_config
from siamim.train import pretrain


def _quiet(*_args, **_kwargs) -> None:
    return None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def trial_config(spec: dict, row: str, overrides: list[str]):
    """The row's preset + the grid's overrides + the trial's (seed, steps, epochs)."""
    device = spec["device"]
    return row_config(row, [*spec["overrides"], f"train.device={device}", f"eval.device={device}", *overrides])


def train_and_evaluate(cfg, suite: Suite, protocols: list[str], device: str) -> dict:
    """Pretrain with the plain loop, evaluate the online encoder; timings + metrics (``eval.<key>``)."""
    steps: dict[int, float] = {}
    last: dict[str, float] = {}

    def reporter(metrics: dict) -> None:
        steps[int(metrics["step"])] = time.perf_counter()
        last["loss"] = float(metrics["loss"])

    t0 = time.perf_counter()
    result = pretrain(cfg, device=device, reporter=reporter, checkpoint_saver=_quiet, verbose=False)
    t1 = time.perf_counter()
    rep = EncoderRepresentation(result["encoder"], name="checkpoint")
    metrics = flat_metrics({"checkpoint": evaluate(rep, cfg, protocols, suite, _quiet)}, "checkpoint")
    logged = sorted(steps)
    base = next((s for s in logged if s >= 2), None)
    if base is not None and logged[-1] > base:
        step_s = (steps[logged[-1]] - steps[base]) / (logged[-1] - base)
    else:
        step_s = (t1 - t0) / max(1, result["step"])
    return {
        **metrics,
        "steps": int(result["step"]),
        "train_s": t1 - t0,
        "eval_s": time.perf_counter() - t1,
        "step_s": step_s,
        "overhead_s": max(0.0, (t1 - t0) - result["step"] * step_s),
        "final_loss": last.get("loss"),
    }


def wait_for(path: Path, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > end:
            raise TimeoutError(f"no {path} after {timeout:.0f} s")
        time.sleep(0.2)
    return json.loads(path.read_text())


def claim(work: Path, name: str) -> bool:
    try:
        os.close(os.open(work / "claims" / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def worker_main(work: Path, worker: int) -> int:
    """Calibrate, wait for the plan, run trials until none is left to claim; 0 when done."""
    spec = json.loads((work / "spec.json").read_text())
    torch.set_num_threads(spec["threads"])
    protocols = spec["protocols"]

    cfg = trial_config(spec, "i", [f"train.seed={1000 + worker}", f"train.max_steps={spec['calib_steps']}"])
    suite = Suite(cfg, _quiet)  # the evaluation data, shared by every trial of this worker
    calib = train_and_evaluate(cfg, suite, protocols, spec["device"])
    calib["num_samples"] = cfg.data.train_subset or len(build_source(cfg.data.dataset, cfg.data.root, "train"))
    write_json(work / f"calib-{worker}.json", calib)
    plan = wait_for(work / "plan.json", spec["plan_timeout_s"])
    for row, seed in spec["trials"]:
        name = f"{row}-s{seed}"
        if not claim(work, name):
            continue
        try:
            cfg = trial_config(
                spec, row, [f"train.seed={seed}", f"train.max_steps={plan['steps']}", f"train.epochs={plan['epochs']}"]
            )
            out = train_and_evaluate(cfg, suite, protocols, spec["device"])
            write_json(work / "results" / f"{name}.json", {"row": row, "seed": seed, "worker": worker, **out})
        except Exception as err:  # recorded, and the worker goes on with the next trial
            write_json(
                work / "results" / f"{name}.error.json",
                {"row": row, "seed": seed, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()},
            )
        print(f"[grid worker {worker}] {name} done", flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--worker", type=int, required=True)
    args = parser.parse_args()
    raise SystemExit(worker_main(Path(args.work), args.worker))


if __name__ == "__main__":
    main()
