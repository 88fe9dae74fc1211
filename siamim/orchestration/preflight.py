"""Fail-fast checks that run in the driver before any Ray worker starts.

Each check raises a :class:`~siamim.errors.UserError` (:class:`PreflightError` for the data, the
storage's, tracking's or hook's own error otherwise) with a message that names the
setting and the fix, so a bad tracking URI, an unwritable storage path or a
missing dataset costs seconds, not a worker-group start and a crash later.
"""

from __future__ import annotations

import time
from pathlib import Path

from siamim.config import Config
from siamim.data.folder_check import ImageTreeError, check_image_tree
from siamim.errors import UserError
from siamim.orchestration.hooks import load_hook
from siamim.orchestration.storage import Storage, check_writable
from siamim.orchestration.tracking import check_tracking


class PreflightError(UserError, RuntimeError):
    """A launch precondition failed; the message says which and how to fix it."""


def check_data(cfg: Config, log=print) -> None:
    """The training data is where ``cfg.data`` says, and (ImageFolder trees) usable: class folders with
    images, a test tree with the same classes, a sample of readable files; degenerate data is a warning."""
    if cfg.data.dataset == "fashion_mnist":
        from siamim.data import fashion_mnist

        root = fashion_mnist.resolve_root(cfg.data.root)  # DatasetNotFoundError names the fix
        for split, (images, labels) in fashion_mnist._FILES.items():
            for stem in (images, labels):
                if not any((root / name).is_file() for name in (stem + ".gz", stem)):
                    raise PreflightError(
                        f"Fashion-MNIST {split} file {stem}[.gz] is missing in {root}. {fashion_mnist.HOW_TO_GET}"
                    )
    elif cfg.data.dataset == "image_folder":  # listing + a bounded sample of header reads: seconds
        if cfg.data.root is None or not Path(cfg.data.root).is_dir():
            raise PreflightError(f"data.root={cfg.data.root!r} is not a directory of class folders")
        try:
            report = check_image_tree(cfg.data.root)
        except ImageTreeError as err:
            raise PreflightError(f"data.root: {err}") from None
        for warning in report.warnings:
            log(f"[siamim] warning: data.root: {warning}")
    elif cfg.data.dataset == "parquet":  # the manifest answers within seconds, or the error names the endpoint
        from siamim.data.parquet import read_manifest

        read_manifest(cfg.data.root)  # ParquetDataError names the endpoint


def check_cluster(cfg: Config) -> list[str]:
    """Warnings (not errors: an autoscaler may add nodes) when the cluster lacks the requested resources."""
    import ray

    total = ray.cluster_resources()
    r = cfg.run
    warnings = []
    need_cpu = r.num_workers * r.cpus_per_worker
    if total.get("CPU", 0.0) < need_cpu:
        warnings.append(
            f"the Ray cluster has {total.get('CPU', 0.0):g} CPUs; run.num_workers={r.num_workers} x "
            f"run.cpus_per_worker={r.cpus_per_worker:g} needs {need_cpu:g}. Training waits until an "
            "autoscaler adds nodes (lower --num-workers otherwise)"
        )
    if r.use_gpu and total.get("GPU", 0.0) < r.num_workers * r.gpus_per_worker:
        warnings.append(
            f"the Ray cluster has {total.get('GPU', 0.0):g} GPUs; {r.num_workers} workers x "
            f"{r.gpus_per_worker:g} GPUs requested. Training waits until GPU nodes join"
        )
    return warnings


def resource_shortfall(cfg: Config, total: dict) -> str | None:
    """What ``total`` (``ray.cluster_resources()``) lacks for the worker group of ``cfg``; None when it fits."""
    r = cfg.run
    need_cpu = r.num_workers * r.cpus_per_worker
    if total.get("CPU", 0.0) < need_cpu:
        return (
            f"run.num_workers={r.num_workers} x run.cpus_per_worker={r.cpus_per_worker:g} needs {need_cpu:g} "
            f"CPUs; the Ray cluster has {total.get('CPU', 0.0):g}"
        )
    need_gpu = r.num_workers * r.gpus_per_worker if r.use_gpu else 0.0
    if total.get("GPU", 0.0) < need_gpu:
        return (
            f"run.num_workers={r.num_workers} x run.gpus_per_worker={r.gpus_per_worker:g} needs {need_gpu:g} "
            f"GPUs; the Ray cluster has {total.get('GPU', 0.0):g}"
        )
    return None


def fit_hint(cfg: Config, total: dict) -> str:
    """How to make the request fit ``total``."""
    if cfg.run.use_gpu:
        gpus = total.get("GPU", 0.0)
        return f"lower --num-workers to {int(gpus // cfg.run.gpus_per_worker)}" if gpus else "use a cluster with GPUs"
    cpus = total.get("CPU", 0.0)
    return (
        f"lower --num-workers to {max(1, int(cpus // cfg.run.cpus_per_worker))} or --cpus-per-worker to "
        f"{cpus / cfg.run.num_workers:g}"
    )


class ResourceWatch:
    """Interrupts ``trainer.fit()`` when the cluster still cannot fit the worker group after ``wait_s`` seconds.

    Ray Train waits for its placement group for ever (an autoscaler may add nodes);
    this bounds the wait. ``wait_s < 0``: no bound. The interrupt unwinds ``fit()``; the
    pending Train controller goes when the driver process exits (``jobs/pretrain.py`` does).
    """

    def __init__(self, cfg: Config, wait_s: float):
        import threading

        self.cfg, self.wait_s = cfg, wait_s
        self.timed_out: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="siamim-resource-watch", daemon=True)

    def __enter__(self):
        if self.wait_s >= 0:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        return False

    def _run(self) -> None:
        import _thread

        import ray

        deadline = time.time() + self.wait_s
        while not self._stop.is_set():
            total = ray.cluster_resources()
            short = resource_shortfall(self.cfg, total)
            if short is None:
                return  # it fits: Ray schedules the workers as soon as the resources are free
            if time.time() >= deadline:
                self.timed_out = (
                    f"{short} after waiting {self.wait_s:g} s (--wait-for-resources); "
                    f"{fit_hint(self.cfg, total)}, or add nodes"
                )
                # As SIGTERM (ray.init's handler: SystemExit in the main thread, out of fit()'s ray.get), not
                # SIGINT: Ray Train's own SIGINT handler asks the controller to abort and may wait on it
                # (ray-project/ray#53600).
                import signal

                sig = signal.SIGTERM if callable(signal.getsignal(signal.SIGTERM)) else signal.SIGINT
                _thread.interrupt_main(sig)
                return
            self._stop.wait(1.0)


def preflight(cfg: Config, storage: Storage, tracking_uri: str, *, check_dataset: bool = True, log=print) -> None:
    """Worker hook importable, tracking store reachable, storage writable, data present.

    Raises:
        UserError: :class:`~siamim.orchestration.hooks.HookError`, ``TrackingError``, ``StorageError``,
            :class:`PreflightError` (the data), ``ParquetDataError``: each message names the setting and the fix.
    """
    load_hook()
    check_tracking(tracking_uri)
    check_writable(storage)
    if check_dataset:
        check_data(cfg, log)
