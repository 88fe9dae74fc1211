"""Ray Train adapter: a TorchTrainer whose workers run the core loop.

:func:`build_trainer` maps ``cfg.run`` onto Ray Train V2's ``ScalingConfig``,
``RunConfig``, ``CheckpointConfig`` and ``FailureConfig``.
:func:`train_loop_per_worker` is what each worker runs: it restores the latest
Ray checkpoint (after a worker-group restart or a ``--resume``), calls
:func:`siamim.train.loop.pretrain` under the process group Ray set up (the loop
wraps DDP and shards every epoch across ranks itself, so the adapter does not
call ``prepare_model`` / ``prepare_data_loader``), turns the loop's
``checkpoint_saver`` calls into ``ray.train.report(..., checkpoint=...)`` and,
on rank 0, logs per-step metrics, MLflow system metrics, the final kNN top-1 and
the exported encoder (``encoder/``, timm's ``save_for_hf`` folder) to MLflow.

A Ray checkpoint directory holds ``checkpoint.pt`` (the training state, see
:mod:`siamim.checkpoint`) and Ray's checkpoint metadata
(``ray.train.Checkpoint.get_metadata()``): ``mlflow_run_id`` and
``pending_metrics``, the per-step metrics not yet in MLflow when it was saved.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from siamim.checkpoint import CHECKPOINT_FILE
from siamim.config import Config, from_dict, to_dict
from siamim.orchestration.faults import FAIL_AT_STEP_ENV, fail_at_step, with_fault
from siamim.orchestration.registry import ENCODER_ARTIFACT
from siamim.orchestration.storage import Storage

logger = logging.getLogger(__name__)

# Driver environment variables the workers get too: the fault-injection test hook and MLflow's
# system-metrics settings (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, ...).
FORWARDED_ENV = re.compile(rf"^({FAIL_AT_STEP_ENV}|MLFLOW_SYSTEM_METRICS_[A-Z_]+)$")
ENCODER_ARTIFACT_DIR = ENCODER_ARTIFACT  # MLflow: timm's save_for_hf folder of the encoder (jobs/evaluate.py reads it)


def scaling_config(cfg: Config) -> ScalingConfig:
    """``ScalingConfig`` from ``cfg.run`` (num_workers, use_gpu, CPUs/GPUs per worker)."""
    r = cfg.run
    resources: dict[str, float] = {"CPU": float(r.cpus_per_worker)}
    if r.use_gpu:
        resources["GPU"] = float(r.gpus_per_worker)
    return ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources)


def run_config(cfg: Config, storage: Storage, run_name: str) -> RunConfig:
    """``RunConfig`` under ``<storage>/<run_name>``: keep the last ``run.keep_checkpoints``, retry ``run.max_failures``."""
    return RunConfig(
        name=run_name,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        # Train V2 patches print() into its logger and tees it to Ray's redirected stdout: every line twice.
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **forwarded_env()}},
        # Ray Train's INFO lines repeat every report's metrics; the loop prints its own progress.
        logging_config=LoggingConfig(log_level=_train_log_level()),
        **storage.ray_kwargs(),
    )


def forwarded_env() -> dict[str, str]:
    """The driver's environment variables that the workers need as well (:data:`FORWARDED_ENV`)."""
    return {k: v for k, v in os.environ.items() if FORWARDED_ENV.match(k)}


def _train_log_level() -> str:
    return os.environ.get("SIAMIM_RAY_TRAIN_LOG_LEVEL", "WARNING").upper()


class InterruptAwareTrainer(TorchTrainer):
    """A ``TorchTrainer`` that remembers a Ctrl-C (:attr:`interrupted`).

    Ray Train V2's driver installs its own SIGINT handler for the run
    (``DataParallelTrainer._register_sigint_handler``): it aborts the controller and may leave
    ``fit()`` through ``sys.exit``, so the launcher saw a SystemExit and reported "terminated" with
    exit 1. The handler is wrapped here, so the launcher can report the interrupt as one (exit 130).
    """

    interrupted = False

    def _register_sigint_handler(self, controller) -> None:
        super()._register_sigint_handler(controller)
        ray_handler = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            self.interrupted = True
            if callable(ray_handler):
                ray_handler(signum, frame)

        signal.signal(signal.SIGINT, on_sigint)


def build_trainer(
    cfg: Config,
    storage: Storage,
    run_name: str,
    tracking_uri: str,
    mlflow_run_id: str,
    launch_time: float | None = None,
    restore_from: str | None = None,
    skip_checkpoints: list[str] | None = None,
    start_step: int = 0,
    log_encoder: bool = False,
    checkpoint_pictures: bool = False,
    final_knn: bool = True,
) -> InterruptAwareTrainer:
    """The TorchTrainer of one pretraining run (call ``.fit()`` on it).

    ``restore_from`` / ``skip_checkpoints``: on a resume whose newest checkpoints
    are damaged, the storage path of the newest intact checkpoint directory and
    the directory names of the damaged ones; a worker that Ray hands one of those
    restores ``restore_from`` instead, and new checkpoints avoid their names.
    ``log_encoder``: rank 0 logs the exported encoder and its feature pictures to the MLflow run at the end.
    ``checkpoint_pictures``: rank 0 also logs the pictures at every checkpoint (MLflow's image slider).
    ``final_knn``: rank 0 computes the kNN top-1 at the end (a grid trial whose protocols include
    ``knn`` turns it off: its evaluation computes the same number once).
    """
    loop_config = {
        "cfg": to_dict(cfg),
        "tracking_uri": tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "launch_time": launch_time or time.time(),
        "ray_train_log_level": _train_log_level(),
        "storage": storage.uri,
        "restore_from": restore_from,
        "skip_checkpoints": list(skip_checkpoints or []),
        "log_encoder": log_encoder,
        "checkpoint_pictures": checkpoint_pictures,
        "final_knn": final_knn,
    }
    from siamim.orchestration.ray_data import trainer_datasets

    return InterruptAwareTrainer(
        train_loop_per_worker,
        datasets=trainer_datasets(cfg, start_step),  # data.loader=ray_data: the stream (start_step: its epoch)
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        run_config=run_config(cfg, storage, run_name),
    )


def _restore_state(config: dict | None = None) -> tuple[dict | None, dict]:
    """``(state, metadata)`` of Ray's latest checkpoint for this run (or of the intact one the driver
    chose); ``(None, {})`` when there is none."""
    config = config or {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, {}
    if os.path.basename(checkpoint.path.rstrip("/")) in config.get("skip_checkpoints", ()):
        from siamim.orchestration.storage import resolve_storage

        storage = resolve_storage(config["storage"])
        checkpoint = ray.train.Checkpoint(config["restore_from"], filesystem=storage.fs)
    state = _load_state(checkpoint)
    metadata = checkpoint.get_metadata()
    for key in ("mlflow_run_id", "pending_metrics"):  # checkpoints written before the metadata carried them
        if key in state:
            metadata.setdefault(key, state.pop(key))
    return state, metadata


def _load_state(checkpoint: ray.train.Checkpoint) -> dict:
    """``checkpoint.pt`` of ``checkpoint``: read in place from local storage, else from this worker's own download.

    Not ``Checkpoint.as_directory()``: its download directory is shared by the workers of a
    node, and a worker that arrives after another's download has finished downloads again,
    in place, over the file the other one is reading (a "corrupted" checkpoint on resume).
    """
    import pyarrow.fs

    from siamim.checkpoint import load_checkpoint

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return load_checkpoint(Path(checkpoint.path) / CHECKPOINT_FILE)
    with tempfile.TemporaryDirectory(prefix="siamim-restore-") as tmp:
        return load_checkpoint(Path(checkpoint.to_directory(tmp)) / CHECKPOINT_FILE)


class RaySaver:
    """The loop's ``checkpoint_saver``: ``checkpoint.pt`` -> ``ray.train.report`` on every rank.

    Rank 0 attaches the checkpoint (its metadata: the MLflow run id and the
    metrics not yet flushed) and, once Ray has persisted it, flushes the buffered
    per-step metrics to MLflow. A step already checkpointed (a resume that has nothing
    left to train) is not reported twice.
    """

    def __init__(
        self, rank: int, mlflow_run_id: str, step_logger=None, last_step: int = -1, taken_names: list[str] | None = None
    ):
        self.rank = rank
        self.taken_names = set(taken_names or [])  # damaged checkpoint dirs still in Ray's list: never reuse
        self.mlflow_run_id = mlflow_run_id
        self.step_logger = step_logger
        self.last_step = last_step
        self.last_metrics: dict[str, float] = {}
        self.pictures = None  # rank 0 with checkpoint pictures: pictures(state, step) after each checkpoint
        self.pictured_steps: set[int] = set()

    def record(self, metrics: dict[str, Any]) -> None:
        """The loop's ``reporter`` (rank 0): keep the latest metrics, buffer them for MLflow."""
        self.last_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.step_logger is not None:
            self.step_logger(metrics)

    def __call__(self, state: dict | None, step: int) -> None:
        if step <= self.last_step:
            return
        self.last_step = step
        metrics = {**self.last_metrics, "step": step}
        with tempfile.TemporaryDirectory(prefix="siamim-ckpt-") as tmp:
            checkpoint = None
            if state is not None:
                from siamim.checkpoint import save_checkpoint

                save_checkpoint(Path(tmp) / CHECKPOINT_FILE, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                checkpoint.set_metadata(
                    {
                        "mlflow_run_id": self.mlflow_run_id,
                        "pending_metrics": list(self.step_logger.pending) if self.step_logger else [],
                    }
                )
            name = f"checkpoint_{step:08d}"
            while name in self.taken_names:
                name += "_r"  # same step as a damaged checkpoint that Ray still lists: a new directory
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if self.step_logger is not None:
            self.step_logger.flush()
        if self.pictures is not None and state is not None:
            self.pictures(state, step)
            self.pictured_steps.add(step)


def _quiet_worker_logs(level: str) -> None:
    """Apply the Ray Train log level (``SIAMIM_RAY_TRAIN_LOG_LEVEL``) to the worker's root logger.

    Ray Train's "Reporting training result ..." INFO line, one per report, comes from a
    logger named by its source file path (``logging.getLogger(__file__)`` in Ray 2.60's
    ``ray/train/v2/_internal/execution/context.py``), outside ``ray.train``: neither
    ``ray.train.LoggingConfig`` (which filters ``ray.train.*`` records) nor
    ``ray.LoggingConfig`` (Ray Train reconfigures the workers' root logger to INFO after
    it) reaches it, and Ray has no public name for it. It propagates to the root logger,
    so the root level (plain ``logging``) decides; siamim's own loggers keep INFO.
    """
    logging.getLogger().setLevel(level)
    logging.getLogger("siamim").setLevel(logging.INFO)


def _system_metrics(tracking_uri: str, run_id: str):
    """MLflow's system-metrics monitor (CPU, memory, disk, network, GPU) on the run; ``.finish()`` it.

    What ``mlflow.start_run(log_system_metrics=True)`` starts, without the fluent run: the
    driver owns the run's status, which ``mlflow.end_run`` would set. Sampling follows MLflow's
    ``MLFLOW_SYSTEM_METRICS_*`` variables (forwarded from the driver). None if it cannot start.
    """
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop INFO lines
        monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracking_uri)
        monitor.start()
    except Exception as err:  # psutil missing, store hiccup: training goes on without system metrics
        logger.warning("MLflow system metrics are off for run %s: %s: %s", run_id, type(err).__name__, err)
        return None
    return monitor


def _log_encoder(tracking_uri: str, run_id: str, state: dict) -> None:
    """Log the exported encoder as ``encoder/``: timm's folder (:func:`siamim.timm_export.save_timm_encoder`)."""
    from siamim.orchestration import tracking
    from siamim.timm_export import save_timm_encoder

    with tempfile.TemporaryDirectory(prefix="siamim-encoder-") as tmp:
        folder = save_timm_encoder(Path(tmp) / ENCODER_ARTIFACT_DIR, state)
        tracking.log_artifacts(tracking_uri, run_id, folder, ENCODER_ARTIFACT_DIR)


def _checkpoint_pictures(tracking_uri: str, run_id: str, cfg: Config):
    """``pictures(state, step)`` for :class:`RaySaver`: the pictures of a checkpoint's encoder (on the CPU)."""

    def pictures(state: dict, step: int) -> None:
        from siamim.checkpoint import load_encoder

        encoder, _ = load_encoder(state)
        _log_pictures(tracking_uri, run_id, {"encoder": encoder, "step": step}, cfg, "cpu")

    return pictures


def _log_pictures(tracking_uri: str, run_id: str, out: dict, cfg: Config, device) -> float:
    """The final encoder's feature pictures (:mod:`siamim.eval.pictures`) as MLflow images; returns seconds.

    A failure (e.g. a dataset without a test split) is a warning: the trained run stays good.
    """
    start = time.time()
    try:
        from siamim.data.sources import build_source
        from siamim.eval.pictures import make_pictures
        from siamim.eval.representation import EncoderRepresentation
        from siamim.orchestration import tracking

        rep = EncoderRepresentation(out["encoder"].eval().to(device), name="checkpoint")
        source = build_source(cfg.data.dataset, cfg.data.root, "test")
        pictures, numbers = make_pictures(rep, cfg, source, seed=cfg.eval.seed)
        tracking.log_pictures(tracking_uri, run_id, pictures, out["step"])
        print(
            f"[siamim] feature pictures logged (correspondence of the pictured pairs "
            f"{100 * numbers['correspondence']:.1f} %, chance {100 * numbers['correspondence_chance']:.1f} %)",
            flush=True,
        )
    except Exception as err:
        logger.warning("feature pictures not logged: %s: %s", type(err).__name__, err)
    return time.time() - start


def train_loop_per_worker(config: dict) -> None:
    """Per-worker entry point of the TorchTrainer (``train_loop_config`` from :func:`build_trainer`)."""
    started = time.time()
    _quiet_worker_logs(config.get("ray_train_log_level", "WARNING"))
    cfg = from_dict(config["cfg"])
    if cfg.data.loader == "ray_data":
        from siamim.orchestration.ray_data import install_worker_loader

        install_worker_loader(cfg)
    rank = ray.train.get_context().get_world_rank()
    resume_state, metadata = _restore_state(config)
    monitor = _system_metrics(config["tracking_uri"], config["mlflow_run_id"]) if rank == 0 else None
    try:
        _train(config, cfg, rank, started, resume_state, metadata)
    finally:
        if monitor is not None:
            monitor.finish()


def _train(config: dict, cfg: Config, rank: int, started: float, resume_state: dict | None, metadata: dict) -> None:
    """Train (continuing ``resume_state``), then on rank 0: kNN top-1, final metrics, the encoder artifact."""
    from siamim.eval.knn import evaluate_knn
    from siamim.orchestration.tracking import StepLogger
    from siamim.train.loop import pretrain

    device = ray.train.torch.get_device()
    step_logger = None
    if rank == 0:
        step_logger = StepLogger(config["tracking_uri"], config["mlflow_run_id"])
        step_logger.replay(metadata.get("pending_metrics", []))
        step_logger.flush()
    resumed_at = int(resume_state["step"]) if resume_state is not None else 0
    if rank == 0:  # one point per worker-group start: restarts after failures show in MLflow
        step_logger.log_now({"restored_from_step": resumed_at}, resumed_at)
    saver = RaySaver(
        rank,
        config["mlflow_run_id"],
        step_logger,
        last_step=resumed_at if resume_state else -1,
        taken_names=config.get("skip_checkpoints"),
    )
    if rank == 0 and config.get("checkpoint_pictures"):
        saver.pictures = _checkpoint_pictures(config["tracking_uri"], config["mlflow_run_id"], cfg)

    first_step: list[float] = []

    def reporter(metrics: dict) -> None:
        if not first_step:
            first_step.append(time.time())
            print(
                f"[siamim] first step done {first_step[0] - config['launch_time']:.1f} s after launch "
                f"(worker group up after {started - config['launch_time']:.1f} s)",
                flush=True,
            )
        saver.record(metrics)

    if rank == 0:
        print(
            f"[siamim] rank 0 of {ray.train.get_context().get_world_size()} on {device}; "
            + (f"resuming at step {resumed_at}" if resume_state else "starting at step 0"),
            flush=True,
        )
    out = pretrain(
        cfg,
        device=device,
        reporter=with_fault(reporter, fail_at_step(), fresh=resume_state is None),
        checkpoint_saver=saver,
        resume_state=resume_state,
    )

    final: dict[str, float] = {"step": out["step"]}
    if rank == 0:
        timings = {"time_to_worker_s": started - config["launch_time"]}
        if first_step:
            timings["time_to_first_step_s"] = first_step[0] - config["launch_time"]
        knn = None
        if config.get("final_knn", True):
            knn_start = time.time()
            threads = torch.get_num_threads()
            # The other local ranks idle in the final report while rank 0 evaluates: use their CPUs too.
            local_cpus = int(cfg.run.cpus_per_worker * ray.train.get_context().get_local_world_size())
            torch.set_num_threads(max(threads, local_cpus))
            try:
                knn = evaluate_knn(out["encoder"], cfg, device, log=lambda m: print(m, flush=True))
            finally:
                torch.set_num_threads(threads)
            timings["knn_eval_s"] = time.time() - knn_start
            final["knn_top1"] = knn
        final.update(timings)
        step_logger.flush()
        step_logger.log_now({**({"knn_top1": knn} if knn is not None else {}), **timings}, out["step"])
        if config.get("log_encoder") and out["state"] is not None:
            _log_encoder(config["tracking_uri"], config["mlflow_run_id"], out["state"])
            if out["step"] not in saver.pictured_steps:  # the last checkpoint's pictures are the final ones
                timings["pictures_s"] = _log_pictures(config["tracking_uri"], config["mlflow_run_id"], out, cfg, device)
                step_logger.log_now({"pictures_s": timings["pictures_s"]}, out["step"])
        if knn is not None:
            print(f"[siamim] kNN top-1 {knn:.2f}% at step {out['step']}", flush=True)
    ray.train.report(final)  # every rank, no checkpoint: the final metrics (kNN) for Result / Tune
