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
from siamim.orchestration.driver.hooks import load_hook
from siamim.orchestration.driver.resources import fit_hint, resource_shortfall
from siamim.orchestration.runs.storage import Storage, check_writable
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


class ResourceWatch:
    """Bounds how long ``trainer.fit()`` waits for a cluster too small for its worker group (``wait_s < 0``: no bound).

    Ray Train waits for its placement group for ever, at the start and, with a fixed worker count, after a node
    is lost. The watch polls the cluster every ``poll_s`` seconds; a shortfall (:func:`resource_shortfall`) that
    lasts ``wait_s`` seconds interrupts the driver (:attr:`timed_out` says why); one that ends in time is logged
    when it starts and ends. Ray Train 2.60's own bound (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` with
    ``FailureConfig.controller_failure_limit``) cannot replace it: it is read in the controller actor's
    environment (one value per Ray job, not per launch's ``--wait-for-resources``), and it logs nothing when a
    mid-run shortfall starts or ends.
    """

    def __init__(self, cfg: Config, wait_s: float, log=print, poll_s: float = 2.0):
        import threading

        self.cfg, self.wait_s, self.log, self.poll_s = cfg, wait_s, log, poll_s
        self.timed_out: str | None = None
        self.lost_mid_run = False  # the group fitted once, then the cluster shrank (the checkpoints are kept)
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
        import ray

        fitted, short_since = False, None
        while not self._stop.is_set():
            short = resource_shortfall(self.cfg, ray.cluster_resources())
            now = time.time()
            if short is None:
                if short_since is not None and fitted:
                    self.log(f"[siamim] the cluster fits the workers again after {now - short_since:.0f} s")
                fitted, short_since = True, None
            elif short_since is None:
                short_since = now
                if fitted:
                    self.log(
                        f"[siamim] warning: the cluster lost resources mid-run: {short}; Ray Train restarts the "
                        f"workers from the last checkpoint when they fit, waiting up to {self.wait_s:g} s "
                        "(--wait-for-resources)"
                    )
            elif now - short_since >= self.wait_s:
                self.lost_mid_run = fitted
                how = "since it lost resources mid-run" if fitted else "at the start"
                self.timed_out = (
                    f"{short} after waiting {self.wait_s:g} s {how} (--wait-for-resources); "
                    f"{fit_hint(self.cfg, ray.cluster_resources())}, or add nodes"
                )
                self._interrupt()
                return
            self._stop.wait(self.poll_s)

    @staticmethod
    def _interrupt() -> None:
        """SIGTERM in the main thread (ray.init's handler: SystemExit, out of fit()'s ray.get), not SIGINT:
        Ray Train's own SIGINT handler asks the controller to abort and may wait on it (ray-project/ray#53600)."""
        import _thread
        import signal

        _thread.interrupt_main(signal.SIGTERM if callable(signal.getsignal(signal.SIGTERM)) else signal.SIGINT)


def preflight(cfg: Config, storage: Storage, tracking_uri: str, *, check_dataset: bool = True, log=print) -> None:
    """Worker hook importable, tracking store reachable, storage writable, data present.

    Raises:
        UserError: :class:`~siamim.orchestration.driver.hooks.HookError`, ``TrackingError``, ``StorageError``,
            :class:`PreflightError` (the data), ``ParquetDataError``: each message names the setting and the fix.
    """
    load_hook()
    check_tracking(tracking_uri)
    check_writable(storage)
    if check_dataset:
        check_data(cfg, log)
