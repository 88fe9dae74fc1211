"""Ray Train adapter: a TorchTrainer whose workers run the core loop.

:func:`build_trainer` maps ``cfg.run`` onto Ray Train V2's configs; :func:`train_loop_per_worker` restores the
latest Ray checkpoint, runs :func:`siamim.train.loop.pretrain` (which wraps DDP and shards the data itself) and
reports once per log interval (:class:`WorkerReports`) to the driver-side
:class:`~siamim.orchestration.tracking.stream.MlflowStream`. After ``fit()`` the driver logs the run's end
(:func:`log_run_end`). A Ray checkpoint directory holds ``checkpoint.pt`` and, in Ray's metadata,
``mlflow_run_id``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from siamim.checkpoint import CHECKPOINT_FILE
from siamim.config import Config, from_dict, to_dict
from siamim.orchestration.driver.hooks import forwarded_env, load_hook
from siamim.orchestration.runs.storage import Storage, resolve_storage
from siamim.orchestration.tracking import stream
from siamim.orchestration.tracking.registry import ENCODER_ARTIFACT, register_encoder

logger = logging.getLogger(__name__)

# Rank 0's system-metrics monitor: a failed sample is dropped at once instead of MLflow's minutes of retries
# (7 with exponential backoff by default since mlflow/mlflow#14247).
WORKER_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def scaling_config(cfg: Config) -> ScalingConfig:
    """``ScalingConfig`` from ``cfg.run`` (num_workers, use_gpu, CPUs/GPUs per worker)."""
    r = cfg.run
    resources: dict[str, float] = {"CPU": float(r.cpus_per_worker)}
    if r.use_gpu:
        resources["GPU"] = float(r.gpus_per_worker)
    elastic = r.min_workers is not None and r.min_workers < r.num_workers
    workers = (r.min_workers, r.num_workers) if elastic else r.num_workers  # Ray Train's elastic range
    return ScalingConfig(
        num_workers=workers,
        use_gpu=r.use_gpu,
        resources_per_worker=resources,
        elastic_resize_monitor_interval_s=r.elastic_resize_s,
    )


def torch_config(cfg: Config) -> TorchConfig | None:
    """``TorchConfig(backend="gloo")`` when the workers train on the CPU (``train.device=cpu``), else Ray's default.

    Ray Train picks NCCL whenever the workers hold GPUs, and NCCL refuses a node without CUDA (Ray 2.60): workers
    that reserve (logical) GPUs but train on the CPU need gloo.
    """
    return TorchConfig(backend="gloo") if cfg.train.device == "cpu" else None


def run_config(cfg: Config, storage: Storage, run_name: str) -> RunConfig:
    """``RunConfig`` under ``<storage>/<run_name>``: keep the last ``run.keep_checkpoints``, retry ``run.max_failures``."""
    return RunConfig(
        name=run_name,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        # Train V2 patches print() into its logger and tees it to Ray's redirected stdout: every line twice
        # (the redirected-stdout branch of ray-project/ray#61075, which in Ray 2.60 also logs the line).
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **WORKER_MLFLOW_ENV, **forwarded_env()}},
        # Ray Train's INFO lines repeat every report's metrics; the loop prints its own progress.
        logging_config=LoggingConfig(log_level=_train_log_level()),
        **storage.ray_kwargs(),
    )


def _train_log_level() -> str:
    return os.environ.get("SIAMIM_RAY_TRAIN_LOG_LEVEL", "WARNING").upper()


class InterruptAwareTrainer(TorchTrainer):
    """A ``TorchTrainer`` that remembers a Ctrl-C (:attr:`interrupted`), so the launcher reports it as one (exit 130).

    Ray Train V2's own SIGINT handler aborts the controller and may leave ``fit()`` through ``sys.exit``
    (ray-project/ray#53600, #54188); it is wrapped here.
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
    checkpoint_pictures: bool = False,
    final_knn: bool = True,
    tune: bool = False,
) -> InterruptAwareTrainer:
    """The TorchTrainer of one pretraining run (call ``.fit()`` on it), tracked by one :class:`MlflowStream`.

    ``restore_from`` / ``skip_checkpoints``: on a resume whose newest checkpoints
    are damaged, the storage path of the newest intact checkpoint directory and
    the directory names of the damaged ones; a worker that Ray hands one of those
    restores ``restore_from`` instead, and new checkpoints avoid their names.
    ``checkpoint_pictures``: the stream logs the feature pictures of every checkpoint (MLflow's image slider).
    ``final_knn``: rank 0 computes the kNN top-1 at the end (a grid trial whose protocols include
    ``knn`` turns it off: its evaluation computes the same number once).
    ``tune``: inside a Tune trial, the stream forwards every report to Tune as well.
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
        "final_knn": final_knn,
    }
    from siamim.orchestration.data.streaming import trainer_datasets

    callback = stream.MlflowStream(
        tracking_uri,
        mlflow_run_id,
        storage.uri,
        run_name,
        cfg.run.tracking_deadline_s,
        tune=tune,
        pictures=functools.partial(pictures_job, tracking_uri, mlflow_run_id, to_dict(cfg))
        if checkpoint_pictures
        else None,
    )
    config = run_config(cfg, storage, run_name)
    config.callbacks = [callback]
    return InterruptAwareTrainer(
        train_loop_per_worker,
        datasets=trainer_datasets(cfg, start_step),  # data.loader=ray_data: the stream (start_step: its epoch)
        train_loop_config=loop_config,
        torch_config=torch_config(cfg),
        scaling_config=scaling_config(cfg),
        run_config=config,
    )


def _restore_state(config: dict | None = None) -> dict | None:
    """The training state of Ray's latest checkpoint for this run (or of the intact one the driver chose);
    None when there is none."""
    config = config or {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    if os.path.basename(checkpoint.path.rstrip("/")) in config.get("skip_checkpoints", ()):
        storage = resolve_storage(config["storage"])
        checkpoint = ray.train.Checkpoint(config["restore_from"], filesystem=storage.fs)
    state = _load_state(checkpoint)
    state.pop("mlflow_run_id", None)  # checkpoints written before Ray's metadata carried it
    state.pop("pending_metrics", None)
    return state


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


class WorkerReports:
    """One worker's side of the metric stream: the loop's ``reporter``, ``on_interval`` and ``checkpoint_saver``.

    Every rank calls ``ray.train.report`` once per log interval (Ray Train gathers a report from every rank):
    rank 0 with the interval's records (:mod:`siamim.orchestration.tracking.stream`) and its last scalars, the
    other ranks with nothing; on a checkpoint step with the checkpoint. A step already checkpointed (a resume
    with nothing left to train) is not reported twice. ``hook`` (``$SIAMIM_WORKER_HOOK``) is called after every
    step's metrics as ``hook(metrics, **context)``.
    """

    def __init__(
        self,
        rank: int,
        mlflow_run_id: str,
        last_step: int = -1,
        taken_names: list[str] | None = None,
        launch_time: float | None = None,
        started: float | None = None,
        hook=None,
        **context,
    ):
        self.rank, self.mlflow_run_id, self.last_step = rank, mlflow_run_id, last_step
        self.launch_time, self.started = launch_time, started or time.time()
        self.taken_names = set(taken_names or [])  # damaged checkpoint dirs still in Ray's list: never reuse
        self.hook, self.context = hook, context
        self.records: list[dict] = []  # since the last report
        self.row: dict[str, float] = {}  # the latest step's scalars, and the points since the last report:
        self.points: dict[str, float] = {}  # what the report shows Tune and Result
        self.first_step_at: float | None = None

    def record(self, metrics: dict[str, Any]) -> None:
        """The loop's ``reporter`` (rank 0): one step's metrics."""
        if self.first_step_at is None:
            self.first_step_at = time.time()
            if self.launch_time is not None:
                print(
                    f"[siamim] first step done {self.first_step_at - self.launch_time:.1f} s after launch "
                    f"(worker group up after {self.started - self.launch_time:.1f} s)",
                    flush=True,
                )
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        self.records.append(stream.record(metrics["step"], values))
        self.row = values
        if self.hook is not None:
            self.hook(metrics, rank=self.rank, **self.context)

    def point(self, key: str, value: float, step: int) -> None:
        """A one-off metric ``key`` at ``step`` (written once per step), sent with the next report."""
        self.records.append(stream.record(step, {key: value}, once=True))
        self.points[key] = float(value)

    def interval(self, step: int, checkpoint_follows: bool) -> None:
        """The loop's ``on_interval``: report now, unless the checkpoint report follows at this step."""
        if not checkpoint_follows:
            self.report(step)

    def __call__(self, state: dict | None, step: int) -> None:
        """The loop's ``checkpoint_saver``: ``checkpoint.pt`` (rank 0) reported as this step's checkpoint."""
        if step <= self.last_step:
            return
        self.last_step = step
        with tempfile.TemporaryDirectory(prefix="siamim-ckpt-") as tmp:
            checkpoint = None
            if state is not None:
                from siamim.checkpoint import save_checkpoint

                save_checkpoint(Path(tmp) / CHECKPOINT_FILE, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                checkpoint.set_metadata({"mlflow_run_id": self.mlflow_run_id})
            name = f"checkpoint_{step:08d}"
            while name in self.taken_names:
                name += "_r"  # same step as a damaged checkpoint that Ray still lists: a new directory
                # (checkpoint_dir_name must be unique per report: ray-project/ray#54391)
            self.report(step, checkpoint, name)

    def metrics(self, step: int, final: bool = False) -> dict:
        """Rank 0's report: the latest scalars, ``step`` and the records since the last report."""
        out = {**self.row, **self.points, "step": int(step), stream.RECORDS: self.records}
        return {**out, stream.FINAL: 1} if final else out

    def report(self, step: int, checkpoint=None, name: str | None = None, final: bool = False) -> None:
        metrics = self.metrics(step, final) if self.rank == 0 else {}
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        self.records, self.row, self.points = [], {}, {}


def _quiet_worker_logs(level: str) -> None:
    """Apply the Ray Train log level (``SIAMIM_RAY_TRAIN_LOG_LEVEL``) to the worker's root logger.

    Ray Train's per-report "Reporting training result" INFO line comes from a logger named by its file path
    (Ray 2.60), which neither ``ray.train.LoggingConfig`` (ray-project/ray#61550) nor ``ray.LoggingConfig``
    reaches; only the root level does. siamim's own loggers keep INFO.
    """
    logging.getLogger().setLevel(level)
    logging.getLogger("siamim").setLevel(logging.INFO)


def _system_metrics(tracking_uri: str, run_id: str):
    """MLflow's system-metrics monitor (CPU, memory, disk, network, GPU) on the run; ``.finish()`` it; None if it
    cannot start.

    What ``mlflow.start_run(log_system_metrics=True)`` starts, without the fluent run (the driver owns the run's
    status). ``SystemMetricsMonitor`` is MLflow's internal class (mlflow/mlflow#9557, #10312); MLflow 3.17 has no
    public client-side equivalent. Sampling follows the forwarded ``MLFLOW_SYSTEM_METRICS_*`` variables.
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


def log_run_end(
    tracking_uri: str, run_id: str, checkpoint, cfg: Config, location: str, pictures: bool = True, model=None, **tags
) -> str | None:
    """The driver's end of a trained run, a pretraining job's and a grid trial's alike: the exported encoder
    (``encoder/``, timm's folder) and, with ``pictures``, the final feature pictures (on the CPU) of the Ray
    ``checkpoint``; the tag ``siamim.checkpoint`` (``location``, its storage location); with ``model`` (a name),
    the encoder registered as a new version of that MLflow model with ``tags``. Returns its
    ``models:/<model>/<version>`` or None."""
    from siamim.checkpoint import load_encoder
    from siamim.timm_export import save_timm_encoder

    client = MlflowClient(tracking_uri)
    state = _load_state(checkpoint)
    with tempfile.TemporaryDirectory(prefix="siamim-encoder-") as tmp:
        folder = save_timm_encoder(Path(tmp) / ENCODER_ARTIFACT, state)
        client.log_artifacts(run_id, str(folder), ENCODER_ARTIFACT)
    if pictures:
        encoder, _ = load_encoder(state)
        log_pictures(tracking_uri, run_id, encoder, int(state["step"]), cfg)
    client.set_tag(run_id, "siamim.checkpoint", location)
    if not model:
        return None
    registered = f"models:/{model}/{register_encoder(tracking_uri, run_id, model, tags=tags)}"
    client.set_tag(run_id, "siamim.registered_model", registered)
    return registered


def pictures_job(tracking_uri: str, run_id: str, cfg_dict: dict, checkpoint, step: int):
    """The :class:`MlflowStream` job that logs a checkpoint's feature pictures (``--checkpoint-pictures``)."""

    def job(client) -> None:
        from siamim.checkpoint import load_encoder

        encoder, _ = load_encoder(_load_state(checkpoint))
        log_pictures(tracking_uri, run_id, encoder, step, from_dict(cfg_dict))

    return job


def log_pictures(tracking_uri: str, run_id: str, encoder, step: int, cfg: Config, device="cpu") -> float:
    """An encoder's feature pictures (:mod:`siamim.eval.pictures`) as MLflow images at ``step``; returns seconds.

    A failure (e.g. a dataset without a test split) is a warning: the trained run stays good.
    """
    start = time.time()
    try:
        from siamim.data.sources import build_source
        from siamim.eval.pictures import make_pictures
        from siamim.eval.representation import EncoderRepresentation

        rep = EncoderRepresentation(encoder.eval().to(device), name="checkpoint")
        source = build_source(cfg.data.dataset, cfg.data.root, "test")
        pictures, numbers = make_pictures(rep, cfg, source, seed=cfg.eval.seed)
        client = MlflowClient(tracking_uri)
        for name, image in pictures.items():  # the UI's image slider over steps, and the latest as a file
            client.log_image(run_id, image, key=name, step=int(step))
            client.log_image(run_id, image, artifact_file=f"pictures/{name}.png")
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
        from siamim.orchestration.data.streaming import install_worker_loader

        install_worker_loader(cfg)
    rank = ray.train.get_context().get_world_rank()
    resume_state = _restore_state(config)
    monitor = _system_metrics(config["tracking_uri"], config["mlflow_run_id"]) if rank == 0 else None
    try:
        _train(config, cfg, rank, started, resume_state)
    finally:
        if monitor is not None:
            monitor.finish()


def _train(config: dict, cfg: Config, rank: int, started: float, resume_state: dict | None) -> None:
    """Train (continuing ``resume_state``), reporting every log interval; then rank 0's kNN top-1 in the last report."""
    from siamim.eval.knn import evaluate_knn
    from siamim.train.loop import pretrain

    # train.device=cpu trains on the CPU even when the worker holds (logical) GPUs; else the GPU Ray assigned.
    device = torch.device("cpu") if cfg.train.device == "cpu" else ray.train.torch.get_device()
    resumed_at = int(resume_state["step"]) if resume_state is not None else 0
    reports = WorkerReports(
        rank,
        config["mlflow_run_id"],
        last_step=resumed_at if resume_state else -1,
        taken_names=config.get("skip_checkpoints"),
        launch_time=config["launch_time"],
        started=started,
        hook=load_hook(),
        cfg=cfg,
        fresh=resume_state is None,
    )
    reports.point("restored_from_step", resumed_at, resumed_at)  # one point per worker-group start
    if rank == 0:
        print(
            f"[siamim] rank 0 of {ray.train.get_context().get_world_size()} on {device}; "
            + (f"resuming at step {resumed_at}" if resume_state else "starting at step 0"),
            flush=True,
        )
    out = pretrain(
        cfg,
        device=device,
        reporter=reports.record,
        checkpoint_saver=reports,
        on_interval=reports.interval,
        resume_state=resume_state,
    )
    if rank == 0:
        end = out["step"]
        reports.point("time_to_worker_s", started - config["launch_time"], end)
        if reports.first_step_at:
            reports.point("time_to_first_step_s", reports.first_step_at - config["launch_time"], end)
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
            reports.point("knn_eval_s", time.time() - knn_start, end)
            reports.point("knn_top1", knn, end)
            print(f"[siamim] kNN top-1 {knn:.2f}% at step {out['step']}", flush=True)
    reports.report(out["step"], final=True)  # every rank: the final metrics (kNN) for MLflow, Result and Tune
