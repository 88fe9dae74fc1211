#!/usr/bin/env python
"""Evaluate a checkpoint (and/or the raw-pixel / random-init floors) with the paper's protocols.

    python jobs/evaluate.py --checkpoint runs/ray/<run>/checkpoint_000100 --protocols all
    python jobs/evaluate.py --checkpoint <mlflow run id> --protocols knn,lin,fewshot --baseline pixels,random
    python jobs/evaluate.py --baseline pixels --protocols knn,lin --limit-train 5000 --limit-test 1000

Prints the table, writes it under --out and, with a tracking URI, logs it as a child run of the
pretraining run. More: docs/evaluation.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from siamim.cli import EXIT_BAD_INPUT, job_parser, report_error


def build_parser() -> argparse.ArgumentParser:
    from siamim.eval.protocols import protocols  # the registry, without torch

    listing = "\n".join(f"  {p.name:<9} {p.summary}" for p in protocols())
    p = job_parser(
        "evaluate.py",
        __doc__,
        epilog=f"protocols (run in this order):\n{listing}\n\n"
        "overrides: dotted config keys, e.g. eval.lin.steps=500 eval.ft.blr=1e-3 eval.knn.k=10\n"
        "(eval.<protocol>.<key>: the settings of siamim/eval/protocols/<protocol>.py; docs/evaluation.md)",
    )
    p.add_argument(
        "--checkpoint",
        help="checkpoint file/dir (ours, a timm export folder, an official SiameseIM or MAE .pth), s3://... URI, "
        "MLflow run id, runs:/<id>/<path> or models:/<name>/<version>",
    )
    p.add_argument(
        "--baseline", default=None, help="comma list of floors to evaluate through the same code: pixels, random"
    )
    p.add_argument("--protocols", default="all", help=f"comma list of {','.join(p.name for p in protocols())} or all")
    p.add_argument("--config", metavar="PRESET", help="preset of baselines (default tiny); a checkpoint has its own")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides (eval.*, data.root)")
    p.add_argument("--limit-train", type=int, help="class-balanced seeded training subset (eval.train_limit)")
    p.add_argument("--limit-test", type=int, help="class-balanced seeded test subset (eval.test_limit)")
    p.add_argument("--ft-epochs", type=float, help="fine-tuning epoch budget (eval.ft.epochs)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="eval.device (default auto: GPU if present)")
    p.add_argument(
        "--out", default=None, help="directory for evaluation.md / evaluation.csv (default runs/eval/<time>)"
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; unset: no MLflow logging)",
    )
    p.add_argument(
        "--run-id",
        default=None,
        help="pretraining MLflow run the evaluation is a child run of (default: the checkpoint's pretraining run)",
    )
    p.add_argument(
        "--child-run",
        action="store_true",
        help="kept for old command lines: every evaluation of a pretraining run is now its own child run",
    )
    p.add_argument("--experiment", default=None, help="experiment for a new run (default: run.experiment)")
    p.add_argument(
        "--pictures",
        action="store_true",
        help="also draw feature pictures (PCA maps, cross-view correspondence, cls attention) of every "
        "representation into <out>/pictures/<name>/*.png (and MLflow eval/pictures/)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def cli_overrides(args) -> list[str]:
    out = list(args.overrides)
    for flag, key in (
        ("limit_train", "eval.train_limit"),
        ("limit_test", "eval.test_limit"),
        ("ft_epochs", "eval.ft.epochs"),
        ("device", "eval.device"),
    ):
        if getattr(args, flag) is not None:
            out.append(f"{key}={getattr(args, flag)}")
    return out


OUT_FIX = "an absolute --out on a disk the cluster keeps (with --tracking-uri the table also goes to MLflow)"
BASELINE_NAMES = ("pixels", "random")  # siamim.eval.baselines.BASELINES (checked by a test), without its torch import


def check_arguments(args, overrides: list[str]):
    """Everything about the command line that needs no torch: protocols, baselines, overrides (eval settings).

    Runs before the heavy imports, so a typo fails in well under a second. Returns
    ``(protocols, baselines, cfg)`` (``cfg``: the preset with the overrides, for baselines).
    """
    import difflib

    from siamim.config import load_config
    from siamim.eval.protocols import parse_protocols

    protocols = parse_protocols(args.protocols)
    baselines = [b.strip() for b in (args.baseline or "").split(",") if b.strip()]
    for name in baselines:
        if name not in BASELINE_NAMES:
            close = difflib.get_close_matches(name, BASELINE_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown baseline {name!r}: choose one of {', '.join(BASELINE_NAMES)}{hint}")
    if len(set(baselines)) != len(baselines):
        raise ValueError(f"--baseline lists a representation twice: {args.baseline}")
    if not args.checkpoint and not baselines:
        raise ValueError("nothing to evaluate: give --checkpoint and/or --baseline pixels,random")
    cfg = load_config(args.config or "tiny", overrides)  # unknown keys / bad values, named with the fix
    return protocols, baselines, cfg


def _num_heads(overrides: list[str]) -> int | None:
    """``model.num_heads=N`` from the command line: the head count of a foreign checkpoint (its weights lack it)."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "model.num_heads":
            return int(value)
    return None


def out_dir(out_arg: str | None) -> Path:
    """``--out``, or the default ``runs/eval/<time>``."""
    return Path(out_arg or Path("runs") / "eval" / time.strftime("%Y%m%d-%H%M%S"))


def writable_out(out_arg: str | None) -> Path:
    """The output directory (created), checked writable with a probe file; ``ValueError`` naming ``--out``."""
    out = out_dir(out_arg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"--out {out}: cannot write there ({type(err).__name__}: {err.strerror or err}); give a writable directory"
        ) from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from siamim.errors import UserError
    from siamim.orchestration.driver.submitted import check_lasting, check_tracking_lasting

    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    overrides = cli_overrides(args)
    reps, step, ckpt_run_id = [], 0, None
    try:
        protocols, baselines, cfg = check_arguments(args, overrides)
        # under ray job submit: nothing inside Ray's temporary copy of the working directory
        check_lasting(str(out_dir(args.out)), f"--out {args.out or 'runs/eval/<time> (the default)'}", OUT_FIX)
        if tracking_uri:  # seconds, not MLflow's minutes of retries on a server that is down (mlflow/mlflow#14247)
            check_tracking_lasting(args.tracking_uri)
            from siamim.orchestration.tracking import TrackingError, check_tracking

            try:
                check_tracking(tracking_uri)
            except TrackingError as err:
                raise TrackingError(f"--tracking-uri / MLFLOW_TRACKING_URI: {err}") from err
        resolved = None
        if args.checkpoint:  # a missing file / run / object is named before torch is imported
            from siamim.orchestration.runs.refs import resolve_checkpoint

            tmp = tempfile.mkdtemp(prefix="siamim-eval-")
            try:
                resolved = resolve_checkpoint(args.checkpoint, tmp, tracking_uri)
                from siamim.foreign import read_checkpoint

                state = read_checkpoint(resolved.path, num_heads=_num_heads(overrides))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # downloads only; a local checkpoint is never under tmp
        out = writable_out(args.out)  # before any compute: a table that cannot be written is found now
    except (
        UserError,
        ValueError,
        FileNotFoundError,
    ) as err:  # ValueError, FileNotFoundError: a file that is no checkpoint
        return report_error(err, EXIT_BAD_INPUT)

    from siamim.checkpoint import load_encoder
    from siamim.config import apply_overrides, flatten
    from siamim.eval.baselines import baseline_representation
    from siamim.eval.report import flat_metrics, table_rows, to_csv, to_markdown
    from siamim.eval.representation import EncoderRepresentation
    from siamim.eval.runner import Suite, evaluate

    try:
        if resolved is not None:
            # Protocol settings come from today's defaults + the command line, never from the checkpoint,
            # so every checkpoint is measured the same way (and older eval keys cannot break loading).
            state["config"] = {k: v for k, v in state["config"].items() if k != "eval"}
            encoder, cfg = load_encoder(state)
            step = int(state.get("step", 0))
            ckpt_run_id = resolved.mlflow_run_id or state.get("mlflow_run_id")
            cfg = apply_overrides(cfg, overrides)
            reps.append(EncoderRepresentation(encoder, name="checkpoint"))
            log(f"[evaluate] checkpoint {resolved.reference} -> {resolved.path} (step {step})")
        reps += [baseline_representation(b, cfg, seed=cfg.eval.seed) for b in baselines]
    except (UserError, ValueError, KeyError, RuntimeError) as err:
        return report_error(f"{args.checkpoint}: {type(err).__name__}: {err}".replace("\n", " "))

    suite = Suite(cfg, log)
    log(
        f"[evaluate] protocols {','.join(protocols)} on {', '.join(r.name for r in reps)}; "
        f"train {len(suite.train_idx)} / test {len(suite.test_idx)} images, device {suite.device}"
    )
    results = {}
    for rep in reps:
        results[rep.name] = evaluate(rep, cfg, protocols, suite, log)
    names = list(results)
    rows = table_rows(results)
    markdown, csv_text = to_markdown(rows, names), to_csv(rows, names)
    (out / "evaluation.md").write_text(markdown)
    (out / "evaluation.csv").write_text(csv_text)
    print("\n" + markdown, flush=True)
    print(f"[evaluate] table written to {out}/evaluation.md and evaluation.csv", flush=True)
    pictures_dir = None
    if args.pictures:
        from siamim.eval.pictures import make_pictures, write_pictures

        pictures_dir = out / "pictures"
        for rep in reps:
            pics, numbers = make_pictures(rep, cfg, suite.test_source, seed=cfg.eval.seed)
            write_pictures(pics, pictures_dir / rep.name)
            log(
                f"[evaluate] pictures of {rep.name} in {pictures_dir / rep.name} (correspondence of the pictured "
                f"pairs {100 * numbers['correspondence']:.1f} %, chance {100 * numbers['correspondence_chance']:.1f} %)"
            )
    if tracking_uri:
        from siamim.orchestration.tracking import resolve_tracking_uri
        from siamim.orchestration.tracking.evaluation import record_evaluation, run_exists
        from siamim.orchestration.tracking.report import write_run_report

        primary = "checkpoint" if args.checkpoint else None
        run_id = args.run_id or ckpt_run_id
        uri = resolve_tracking_uri(tracking_uri)
        if run_id is not None and args.run_id is None and not run_exists(uri, run_id):
            print(
                f"[evaluate] note: the checkpoint's MLflow run {run_id} is not in {uri}; logging to a new run "
                "(tag eval.pretraining_run_id)",
                flush=True,
            )
            tags_extra, run_id = {"eval.pretraining_run_id": run_id}, None
        else:
            tags_extra = {}
        settings = {  # what was asked (eval.*: --limit-train/--limit-test/--ft-epochs/--device and overrides)
            **{k: v for k, v in flatten(cfg).items() if k.startswith("eval.")},
            "evaluate.protocols": ",".join(protocols),
            "evaluate.representations": ",".join(names),
            "evaluate.checkpoint": args.checkpoint or "none",
            "evaluate.step": step,
            "evaluate.train_images": len(suite.train_idx),  # what the limits gave
            "evaluate.test_images": len(suite.test_idx),
        }
        record = record_evaluation(
            uri,
            flat_metrics(results, primary),
            markdown,
            csv_text,
            pretraining_run_id=run_id,
            experiment=args.experiment or cfg.run.experiment,
            name=f"evaluate-{'-'.join(names)}",
            step=step,
            tags={
                "eval.protocols": ",".join(protocols),
                "eval.representations": ",".join(names),
                "eval.checkpoint": args.checkpoint or "none",
                **tags_extra,
            },
            params=settings,
            pictures_dir=pictures_dir,
        )
        if record.parent_id is not None:
            print(
                f"[evaluate] logged as MLflow run {record.run_id} ({record.run_name}, a child of pretraining run "
                f"{record.parent_id}, whose eval.* metrics now come from it) at {uri}",
                flush=True,
            )
            write_run_report(uri, record.parent_id)  # its report.html shows this evaluation's table
        else:
            print(f"[evaluate] logged to MLflow run {record.run_id} ({uri})", flush=True)
        write_run_report(uri, record.run_id)  # report.html of the evaluation's run: its table (and pictures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
