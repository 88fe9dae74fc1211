"""The benchmark scripts run (``--smoke``) and print well-formed figures; the GPU figures need a GPU."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_throughput_smoke_prints_ours_and_reference():
    lines = [json.loads(line) for line in _run("throughput.py").splitlines() if line.startswith("{")]
    steps = {d["step"]: d for d in lines if "step" in d}
    assert set(steps) == {"ours", "reference"}
    assert all(d["images_per_s"] > 0 and d["TFLOP_per_s"] >= 0 for d in steps.values())
    assert lines[0]["analytic_TFLOP_per_step"] > 0 and "speedup_ours_over_reference" in lines[-1]


def test_views_smoke_prints_both_paths():
    out = _run("views.py")
    assert out.count("CPU per-sample") == 2 and out.count("batched on CPU") == 2
