#!/usr/bin/env python
"""Submit jobs/pretrain.py to a Ray cluster with `ray job submit`, tagged with this checkout's git commit.

    python jobs/submit.py -- --config tiny --storage "$SIAMIM_S3_STORAGE" --tracking-uri "$MLFLOW_TRACKING_URI"
    python jobs/submit.py --address http://head:8265 --no-wait -- --config vit_small --num-workers 8 --use-gpu

Everything after `--` goes to jobs/pretrain.py unchanged; the commit (and whether the tree has
uncommitted edits) travels as job metadata. Prints the command it runs; `--dry-run` prints it only.
Docs: docs/platform.md ("Launching", "MLflow").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from siamim.cli import job_parser, report_error

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = job_parser("submit.py", __doc__, epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument(
        "--address", default=None, help="Ray job API (default: $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)"
    )
    p.add_argument("--submission-id", default=None, help="job id (default: Ray picks one)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting (default: follow the logs)")
    p.add_argument("--runtime-env-json", default=None, help="extra runtime env, e.g. '{\"env_vars\": {...}}'")
    p.add_argument("--python", default="python", help="interpreter on the cluster (default: python)")
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    p.add_argument("pretrain_args", nargs=argparse.REMAINDER, help="-- then the arguments of jobs/pretrain.py")
    return p


def git_provenance(repo: Path = REPO) -> dict:
    """``{"git_commit": sha, "git_dirty": "true"|"false"}`` of ``repo``; {} outside a git checkout."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode != 0:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
    return {"git_commit": head.stdout.strip(), "git_dirty": "true" if dirty else "false"}


def command(args: argparse.Namespace) -> list[str]:
    ray = Path(sys.executable).parent / "ray"
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265"
    cmd = [
        str(ray) if ray.exists() else (shutil.which("ray") or "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--metadata-json",
        json.dumps(git_provenance()),
    ]
    if args.submission_id:
        cmd += ["--submission-id", args.submission_id]
    if args.no_wait:
        cmd.append("--no-wait")
    if args.runtime_env_json:
        cmd += ["--runtime-env-json", args.runtime_env_json]
    rest = args.pretrain_args[1:] if args.pretrain_args[:1] == ["--"] else args.pretrain_args
    return [*cmd, "--", args.python, "jobs/pretrain.py", *rest]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runtime_env_json:
        try:
            json.loads(args.runtime_env_json)
        except ValueError as err:
            return report_error(f"--runtime-env-json is not JSON ({err})")
    cmd = command(args)
    print("[submit] " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
