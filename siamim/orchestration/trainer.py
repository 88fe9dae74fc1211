"""Ray Train adapter: a TorchTrainer whose workers run the core loop.

:func:`build_trainer` maps ``cfg.run`` onto Ray Train V2's ``ScalingConfig``,
``RunConfig``, ``CheckpointConfig`` and ``FailureConfig``.
:func:`train_loop_per_worker` is what each worker runs: it restores the latest
Ray checkpoint (after a worker-group restart or a ``--resume``), calls
:func:`siamim.train.loop.pretrain` under the process group Ray set up (the loop
wraps DDP and shards every epoch across ranks itself, so the adapter does not
call ``prepare_model`` / ``prepare_data_loader``), turns the loop's
``checkpoint_saver`` calls into ``ray.train.report(..., checkpoint=...)`` and,
on rank 0, logs per-step metrics to MLflow and the final kNN top-1.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from siamim.config import Config, from_dict, to_dict
from siamim.orchestration.storage import Storage

CHECKPOINT_FILE = "checkpoint.pt"


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
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        # Ray Train's INFO lines repeat every report's metrics; the loop prints its own progress.
        logging_config=LoggingConfig(log_level=_train_log_level()),
        **storage.ray_kwargs(),
    )


def _train_log_level() -> str:
    return os.environ.get("SIAMIM_RAY_TRAIN_LOG_LEVEL", "WARNING").upper()


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
) -> TorchTrainer:
    """The TorchTrainer of one pretraining run (call ``.fit()`` on it).

    ``restore_from`` / ``skip_checkpoints``: on a resume whose newest checkpoints
    are damaged, the storage path of the newest intact checkpoint directory and
    the directory names of the damaged ones; a worker that Ray hands one of those
    restores ``restore_from`` instead, and new checkpoints avoid their names.
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
    }
    from siamim.orchestration.ray_data import trainer_datasets

    return TorchTrainer(
        train_loop_per_worker,
        datasets=trainer_datasets(cfg, start_step),  # data.loader=ray_data: the stream (start_step: its epoch)
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        run_config=run_config(cfg, storage, run_name),
    )


def _restore_state(config: dict | None = None) -> dict | None:
    """The state dict of Ray's latest checkpoint for this run (or of the intact one the driver chose), or None."""
    from siamim.checkpoint import load_checkpoint

    config = config or {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    if os.path.basename(checkpoint.path.rstrip("/")) in config.get("skip_checkpoints", ()):
        from siamim.orchestration.storage import resolve_storage

        storage = resolve_storage(config["storage"])
        checkpoint = ray.train.Checkpoint(config["restore_from"], filesystem=storage.fs)
    with checkpoint.as_directory() as directory:
        return load_checkpoint(Path(directory) / CHECKPOINT_FILE)


class RaySaver:
    """The loop's ``checkpoint_saver``: ``checkpoint.pt`` -> ``ray.train.report`` on every rank.

    Rank 0 attaches the checkpoint (with the MLflow run id and the metrics not
    yet flushed) and, once Ray has persisted it, flushes the buffered per-step
    metrics to MLflow. A step already checkpointed (a resume that has nothing
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

                state["mlflow_run_id"] = self.mlflow_run_id
                state["pending_metrics"] = list(self.step_logger.pending) if self.step_logger else []
                save_checkpoint(Path(tmp) / CHECKPOINT_FILE, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            name = f"checkpoint_{step:08d}"
            while name in self.taken_names:
                name += "_r"  # same step as a damaged checkpoint that Ray still lists: a new directory
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if self.step_logger is not None:
            self.step_logger.flush()


def train_loop_per_worker(config: dict) -> None:
    """Per-worker entry point of the TorchTrainer (``train_loop_config`` from :func:`build_trainer`)."""
    from siamim.eval.knn import evaluate_knn
    from siamim.orchestration.tracking import StepLogger
    from siamim.train.loop import pretrain

    started = time.time()
    # Workers: LoggingConfig's console filter does not catch the per-report INFO lines; set the level itself.
    level = config.get("ray_train_log_level", "WARNING")
    logging.getLogger("ray.train").setLevel(level)
    try:  # "Reporting training result ..." comes from a logger named by its file path, not "ray.train.*"
        from ray.train.v2._internal.execution import context as _ray_train_context

        logging.getLogger(_ray_train_context.__file__).setLevel(level)
    except ImportError:
        pass
    cfg = from_dict(config["cfg"])
    if cfg.data.loader == "ray_data":
        from siamim.orchestration.ray_data import install_worker_loader

        install_worker_loader(cfg)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    resume_state = _restore_state(config)
    step_logger = None
    if rank == 0:
        step_logger = StepLogger(config["tracking_uri"], config["mlflow_run_id"])
        if resume_state is not None:
            step_logger.replay(resume_state.get("pending_metrics", []))
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
    out = pretrain(cfg, device=device, reporter=reporter, checkpoint_saver=saver, resume_state=resume_state)

    final: dict[str, float] = {"step": out["step"]}
    if rank == 0:
        timings = {"time_to_worker_s": started - config["launch_time"]}
        if first_step:
            timings["time_to_first_step_s"] = first_step[0] - config["launch_time"]
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
        final.update(knn_top1=knn, **timings)
        step_logger.flush()
        step_logger.log_now({"knn_top1": knn, **timings}, out["step"])
        print(f"[siamim] kNN top-1 {knn:.2f}% at step {out['step']}", flush=True)
    ray.train.report(final)  # every rank, no checkpoint: the final metrics (kNN) for Result / Tune
