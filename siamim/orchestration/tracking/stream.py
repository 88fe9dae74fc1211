"""Live metrics: the workers' reports, written to MLflow by one driver-side Ray Train callback.

The data path of one metric (Ray's own pattern for tracking from Ray Train):

1. the core loop hands rank 0 each step's metrics; at the end of every log interval
   (``train.log_every``) every worker calls ``ray.train.report`` once: rank 0 with that
   interval's per-step rows (:data:`ROWS`), one-off points (:data:`POINTS`: the step a
   worker group restored, the final kNN and timings) and, every ``train.checkpoint_every``
   steps, the checkpoint;
2. Ray Train's controller calls :class:`MlflowStream` (a ``ray.train.UserCallback``) with
   rank 0's report; it hands the rows to a :class:`MetricWriter` and, inside a Tune trial,
   forwards the scalars to Tune (so Tune's results and TensorBoard move live as well);
3. the writer's thread writes them to MLflow, never blocking the controller.

Exactly once: the writer drops rows of steps it already has (a worker group restarted from
an older checkpoint reports those steps again, with the same values: the loop is
deterministic) and, at its first contact, learns the highest step MLflow already holds
(a ``--resume`` continues the same MLflow run).

A tracking server that blinks does not stop training: failed writes are retried with
backoff (MLflow's own retries, which stalled the loop for minutes, are turned off in the
controller), and everything unwritten is kept in the run's storage
(``<storage>/<run>/`` :data:`PENDING_METRICS`). A server gone past ``run.tracking_deadline_s``
is reported once; the run goes on. At the end the writer waits up to that deadline for the
server, and the next ``--resume`` (:func:`flush_pending`) writes what is still pending.

MLflow's system metrics stay on rank 0's worker: they measure the node that trains (its GPU
utilisation and memory), which the controller, possibly on a CPU-only head node, cannot see.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.train import UserCallback

from siamim.orchestration.runs import storage as st

logger = logging.getLogger(__name__)

ROWS = "siamim.rows"  # rank 0's report: the interval's per-step rows [{"step", "_time_ms", key: float}]
POINTS = "siamim.points"  # rank 0's report: one-off metrics [[key, value, step], ...]
FINAL = "siamim.final"  # rank 0's last report: the writer flushes and closes
PENDING_METRICS = "mlflow_pending_metrics.json"  # in <storage>/<run>/: what MLflow does not hold yet
STEP_KEY = "loss"  # every step row has it: MLflow's history of it says which steps are written
BATCH_METRICS = 900  # below MLflow's 1000 metrics per log_batch request
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
MAX_QUEUED = 200_000  # metric values held in memory; older ones wait in the pending file past that
TUNE_FLUSH_S = 30.0  # in a Tune trial, how long a report waits for MLflow to hold its rows before Tune sees it


def report_metrics(rows: list[dict], points: dict[str, tuple[float, int]], step: int, final: bool = False) -> dict:
    """Rank 0's ``ray.train.report`` metrics: the last row's and the points' scalars (what Tune and ``Result``
    see), the interval's ``rows`` and the ``points`` (``{key: (value, at step)}``)."""
    out: dict[str, Any] = {k: v for k, v in (rows[-1] if rows else {}).items() if k != "_time_ms"}
    out.update({k: float(v) for k, (v, _) in points.items()})
    out["step"] = int(step)
    out[ROWS] = list(rows)
    if points:
        out[POINTS] = [[k, float(v), int(at)] for k, (v, at) in points.items()]
    if final:
        out[FINAL] = 1
    return out


def scalars(metrics: dict) -> dict:
    """A report's metrics without the rows and points (what Tune receives)."""
    return {k: v for k, v in metrics.items() if k not in (ROWS, POINTS, FINAL)}


def step_row(metrics: dict) -> dict:
    """One step's metrics from the loop as a row: floats, its ``step`` and the time it was taken."""
    row = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    row["step"] = int(metrics["step"])
    row["_time_ms"] = int(time.time() * 1000)
    return row


def _quick_failing_mlflow() -> None:
    """MLflow's HTTP retries (7, exponential backoff: minutes per call; mlflow/mlflow#14247) off in this process:
    the writer retries."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = os.environ.get("SIAMIM_MLFLOW_REQUEST_TIMEOUT_S", "10")


class MetricWriter:
    """Writes metric rows and points to one MLflow run from its own thread; keeps the unwritten ones in storage.

    Items are ``("row", row)``, ``("point", (key, value, step, ms))`` and ``("job", fn)`` (``fn(client)``,
    e.g. logging a checkpoint's pictures; a failing job is a warning). Items are written in order.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        storage_uri: str,
        run_name: str,
        deadline_s: float,
        log: Callable[[str], None] = print,
    ):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.storage_uri, self.run_name = storage_uri, run_name
        self.deadline_s, self.log = float(deadline_s), log
        self.client = MlflowClient(tracking_uri)
        self.queue: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.put_upto = -1  # highest step row queued
        self.logged_upto: int | None = None  # highest step row MLflow holds (learned at first contact)
        self.failing_since: float | None = None
        self.said_gone = False
        self.spooled = False
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="siamim-mlflow-writer", daemon=True)
        self.thread.start()

    # ----------------------------------------------------------------- producer side
    def put_rows(self, rows: Iterable[dict]) -> None:
        with self.cond:
            for row in rows:
                if int(row["step"]) > self.put_upto:
                    self.queue.append(("row", dict(row)))
                    self.put_upto = int(row["step"])
            self._spill_if_full()
            self.cond.notify()

    def put_points(self, points: Iterable[tuple[str, float, int]]) -> None:
        """One-off metrics ``(key, value, step)``; each (key, step) is written once."""
        ms = int(time.time() * 1000)
        with self.cond:
            self.queue.extend(("point", (k, float(v), int(step), ms)) for k, v, step in points)
            self.cond.notify()

    def put_job(self, fn: Callable[[MlflowClient], None]) -> None:
        with self.cond:
            self.queue.append(("job", fn))
            self.cond.notify()

    def close(self, timeout_s: float | None = None) -> int:
        """Write what is queued, waiting up to ``timeout_s`` (default: the deadline) for the server;
        returns how many items (step rows and points) are left (kept in the pending file)."""
        deadline = time.time() + (self.deadline_s if timeout_s is None else timeout_s)
        with self.cond:
            self.closing = True
            self.cond.notify()
            while self.queue and time.time() < deadline:
                self.cond.wait(timeout=min(1.0, max(deadline - time.time(), 0.01)))
            left = self._metric_items()
            if left:
                self._save_pending()
                values = sum(len(item) - 2 if kind == "row" else 1 for kind, item in left)
                self.log(
                    f"[siamim] {values} metric values of MLflow run {self.run_id} are not in MLflow "
                    f"({self.tracking_uri} unreachable); they are kept in "
                    f"{st.resolve_storage(self.storage_uri).display(self.run_name, PENDING_METRICS)} and written "
                    f"by: python jobs/pretrain.py --resume {self.run_name} --storage '{self.storage_uri}'"
                )
            return len(left)

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until MLflow holds every queued metric (not while the server is failing); what it
        does not hold by then is kept in the pending file. True when everything is written."""
        deadline = time.time() + timeout_s
        with self.cond:
            while self._metric_items() and self.failing_since is None and time.time() < deadline:
                self.cond.wait(timeout=min(1.0, max(deadline - time.time(), 0.01)))
            if self._metric_items():
                self._save_pending()
                return False
            return True

    def save_pending(self) -> None:
        """Keep what is queued in the pending file now (a worker group that failed may not come back)."""
        with self.cond:
            if self._metric_items():
                self._save_pending()

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        _quick_failing_mlflow()
        attempt = 0
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                batch = self._head()
            try:
                self._write(batch)
            except Exception as err:  # unreachable, 5xx, a locked sqlite store: keep, retry, tell once
                self._failed(err)
                time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)] if not self.closing else 1.0)
                attempt += 1
                continue
            attempt = 0
            with self.cond:
                for _ in batch:
                    self.queue.popleft()
                if self.failing_since is not None:
                    self.log(f"[siamim] MLflow at {self.tracking_uri} answers again; writing the queued metrics")
                self.failing_since, self.said_gone = None, False
                if self.spooled and not self._metric_items():
                    self._drop_pending()
                self.cond.notify_all()

    def _head(self) -> list:
        """The next items to write together: rows and points up to one request, or one job."""
        if self.queue[0][0] == "job":
            return [self.queue[0]]
        batch, values = [], 0
        for kind, item in self.queue:
            if kind == "job":
                break
            size = len(item) - 2 if kind == "row" else 1
            if batch and values + size > BATCH_METRICS:
                break
            batch.append((kind, item))
            values += size
        return batch

    def _write(self, batch: list) -> None:
        if self.logged_upto is None:
            history = self.client.get_metric_history(self.run_id, STEP_KEY)
            self.logged_upto = max((m.step for m in history), default=-1)
        if batch[0][0] == "job":
            try:
                batch[0][1](self.client)
            except Exception as err:
                logger.warning("MLflow run %s: %s: %s", self.run_id, type(err).__name__, err)
            return
        rows = [item for kind, item in batch if kind == "row"]
        points = [item for kind, item in batch if kind == "point"]
        metrics = unwritten(self.client, self.run_id, rows, points, self.logged_upto)
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        if rows:
            self.logged_upto = max(self.logged_upto, max(int(r["step"]) for r in rows))

    def _failed(self, err: Exception) -> None:
        now = time.time()
        with self.cond:
            if self.failing_since is None:
                self.failing_since = now
                logger.warning("MLflow write failed (%s: %s); retrying with backoff", type(err).__name__, err)
            self._save_pending()
            if not self.said_gone and now - self.failing_since > self.deadline_s:
                self.said_gone = True
                self.log(
                    f"[siamim] MLflow at {self.tracking_uri} unreachable for {now - self.failing_since:.0f} s "
                    f"(run.tracking_deadline_s={self.deadline_s:g}); training goes on, its metrics wait in "
                    f"{st.resolve_storage(self.storage_uri).display(self.run_name, PENDING_METRICS)} and are "
                    "written when the server answers again, or by --resume"
                )

    # ----------------------------------------------------------------- the pending file (lock held)
    def _metric_items(self) -> list:
        return [(kind, item) for kind, item in self.queue if kind != "job"]

    def _spill_if_full(self) -> None:
        if len(self.queue) > MAX_QUEUED:
            self._save_pending()

    def _save_pending(self) -> None:
        rows = [item for kind, item in self.queue if kind == "row"]
        points = [list(item) for kind, item in self.queue if kind == "point"]
        try:
            storage = st.resolve_storage(self.storage_uri)
            st.write_json(
                storage, {"run_id": self.run_id, "rows": rows, "points": points}, self.run_name, PENDING_METRICS
            )
            self.spooled = True
        except Exception as err:  # storage down too: the queue still holds them
            logger.warning("pending metrics not saved to storage: %s: %s", type(err).__name__, err)

    def _drop_pending(self) -> None:
        try:
            storage = st.resolve_storage(self.storage_uri)
            storage.fs.delete_file(storage.join(self.run_name, PENDING_METRICS))
            self.spooled = False
        except Exception as err:
            logger.warning("pending-metrics file not removed: %s: %s", type(err).__name__, err)


def unwritten(client: MlflowClient, run_id: str, rows: list, points: list, logged_upto: int) -> list[Metric]:
    """The MLflow metrics of ``rows`` past step ``logged_upto`` and of the ``points`` ``(key, value, step, ms)``
    whose (key, step) the run does not hold yet."""
    metrics = [
        Metric(k, v, int(row["_time_ms"]), int(row["step"]))
        for row in rows
        if int(row["step"]) > logged_upto
        for k, v in row.items()
        if k not in ("step", "_time_ms")
    ]
    for key, value, step, ms in points:
        if all(m.step != int(step) for m in client.get_metric_history(run_id, key)):
            metrics.append(Metric(key, float(value), int(ms), int(step)))
    return metrics


def flush_pending(storage: st.Storage, run_name: str, tracking_uri: str, log: Callable[[str], None] = print) -> int:
    """Write the metrics a previous launch kept in ``<storage>/<run>/`` :data:`PENDING_METRICS` (the steps
    and points MLflow does not hold yet); remove the file; returns how many values were written."""
    if not st.exists(storage, run_name, PENDING_METRICS):
        return 0
    pending = st.read_json(storage, run_name, PENDING_METRICS)
    client = MlflowClient(tracking_uri)
    run_id = pending["run_id"]
    written = max((m.step for m in client.get_metric_history(run_id, STEP_KEY)), default=-1)
    metrics = unwritten(client, run_id, pending["rows"], pending["points"], written)
    for i in range(0, len(metrics), BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[i : i + BATCH_METRICS])
    storage.fs.delete_file(storage.join(run_name, PENDING_METRICS))
    log(f"[siamim] wrote {len(metrics)} metric values kept while MLflow was unreachable (MLflow run {run_id})")
    return len(metrics)


class MlflowStream(UserCallback):
    """The driver-side tracking of one run: rank 0's reports -> MLflow (and Tune, in a Tune trial).

    Runs in Ray Train's controller. ``pictures``: a ``fn(checkpoint) -> fn(client)`` that logs a
    checkpoint's feature pictures, queued after each checkpoint's metrics (``--checkpoint-pictures``).
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        storage_uri: str,
        run_name: str,
        deadline_s: float,
        tune: bool = False,
        pictures: Callable | None = None,
    ):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.storage_uri, self.run_name, self.deadline_s = storage_uri, run_name, deadline_s
        self.pictures = pictures
        self.tune = None
        if tune:
            from ray.tune.integration.ray_train import TuneReportCallback

            self.tune = TuneReportCallback()
        self.writer: MetricWriter | None = None

    def __getstate__(self) -> dict:  # shipped to the controller before any writer exists
        return {**self.__dict__, "writer": None}

    def _writer(self) -> MetricWriter:
        if self.writer is None:
            self.writer = MetricWriter(
                self.tracking_uri,
                self.run_id,
                self.storage_uri,
                self.run_name,
                self.deadline_s,
                log=lambda m: print(m, flush=True),
            )
        return self.writer

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = metrics[0]
        writer = self._writer()
        writer.put_rows(report.get(ROWS, ()))
        writer.put_points(report.get(POINTS, ()))
        if checkpoint is not None and self.pictures is not None:
            writer.put_job(self.pictures(checkpoint, int(report["step"])))
        if self.tune is not None:
            # Tune may stop the trial on this report (ASHA) and end this process with it: the report's rows are
            # in MLflow (or the pending file) before Tune sees them, else a stopped trial loses its last interval.
            writer.flush(TUNE_FLUSH_S)
            self.tune.after_report(run_context, [scalars(report)], checkpoint)
        if report.get(FINAL):
            writer.close()
            self.writer = None

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        if self.writer is not None:
            self.writer.save_pending()
