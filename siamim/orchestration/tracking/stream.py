"""Live metrics: the workers' records, written to MLflow by one driver-side Ray Train callback.

A metric's walk: the core loop's ``reporter`` -> the worker's
:class:`~siamim.orchestration.driver.trainer.WorkerReports` (one ``ray.train.report`` per log interval, rank 0's
carrying the interval's :data:`RECORDS`) -> :class:`MlflowStream` in Ray Train's controller -> its
:class:`MetricWriter` thread -> ``MlflowClient.log_batch``. Inside a Tune trial the stream forwards the scalars to
Tune as well.

One record type: ``{"step", "ms", "metrics": {key: value}}``; with ``"once": true`` each (key, step) is written
once (one-off points: the step a worker group restored, the final kNN, timings); with ``"end"`` it is the run's end
(encoder, pictures, FINISHED), which the driver writes after training. Step records are written once per step
across worker-group restarts and resumes (the loop is deterministic; the writer learns the highest step MLflow
holds at its first contact).

One spool: whatever MLflow does not hold yet waits in ``<storage>/<run>/`` :data:`PENDING` (a blinking server is
retried with backoff; past ``run.tracking_deadline_s`` it is said once and the run goes on). The next ``--resume``
(:func:`flush_pending`) writes it, the end included. See docs/platform.md.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.train import UserCallback

from siamim.orchestration.runs import storage as st

logger = logging.getLogger(__name__)

RECORDS = "siamim.records"  # rank 0's report: the interval's records
FINAL = "siamim.final"  # rank 0's last report: the writer flushes and closes
PENDING = "mlflow_pending.json"  # in <storage>/<run>/: the records MLflow does not hold yet
STEP_KEY = "loss"  # every step record has it: MLflow's history of it says which steps are written
BATCH_METRICS = 900  # below MLflow's 1000 metrics per log_batch request
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
MAX_QUEUED = 200_000  # records held in memory; past that the spool holds them too
TUNE_FLUSH_S = 30.0  # in a Tune trial, how long a report waits for MLflow to hold its records before Tune sees it


def record(step: int, metrics: dict, once: bool = False, end: dict | None = None) -> dict:
    """One record: ``metrics`` at ``step``, stamped now (``once``: each key written once per step)."""
    out = {"step": int(step), "ms": int(time.time() * 1000), "metrics": {k: float(v) for k, v in metrics.items()}}
    if once:
        out["once"] = True
    if end is not None:
        out["end"] = end
    return out


def scalars(metrics: dict) -> dict:
    """A report's metrics without its records (what Tune and ``Result`` see)."""
    return {k: v for k, v in metrics.items() if k not in (RECORDS, FINAL)}


def _quick_failing_mlflow() -> None:
    """MLflow's HTTP retries (7, exponential backoff: minutes per call; mlflow/mlflow#14247) off in this process:
    the writer retries."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = os.environ.get("SIAMIM_MLFLOW_REQUEST_TIMEOUT_S", "10")


def _size(item) -> int:
    return len(item["metrics"]) if isinstance(item, dict) else 0


def write_records(client: MlflowClient, run_id: str, records: list[dict], logged_upto: int) -> tuple[int, int]:
    """Write the ``records`` MLflow lacks (steps past ``logged_upto``; ``once`` keys not yet at their step);
    returns ``(values written, the new logged_upto)``."""
    metrics = []
    for rec in records:
        for key, value in rec["metrics"].items():
            if rec.get("once"):
                if any(m.step == rec["step"] for m in client.get_metric_history(run_id, key)):
                    continue
            elif rec["step"] <= logged_upto:
                continue
            metrics.append(Metric(key, float(value), int(rec["ms"]), int(rec["step"])))
    for i in range(0, len(metrics), BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[i : i + BATCH_METRICS])
    steps = [rec["step"] for rec in records if not rec.get("once") and rec["metrics"]]
    return len(metrics), max([logged_upto, *steps])


def logged_upto(client: MlflowClient, run_id: str) -> int:
    """The highest step MLflow holds for ``run_id`` (-1: none)."""
    return max((m.step for m in client.get_metric_history(run_id, STEP_KEY)), default=-1)


def spool(storage: st.Storage, run_name: str, run_id: str, records: list[dict], append: bool = False) -> None:
    """Keep ``records`` in the spool (``append``: after those it holds; a new end replaces an old one)."""
    if append and st.exists(storage, run_name, PENDING):
        ends = any("end" in r for r in records)
        old = st.read_json(storage, run_name, PENDING)["records"]
        records = [*(r for r in old if not (ends and "end" in r)), *records]
    st.write_json(storage, {"run_id": run_id, "records": records}, run_name, PENDING)


def flush_pending(
    storage: st.Storage,
    run_name: str,
    tracking_uri: str,
    log: Callable[[str], None] = print,
    on_end: Callable[[str, dict], bool] | None = None,
) -> int:
    """Write what a previous launch kept in the spool; its end record goes to ``on_end(run_id, end)`` (True: it is
    in MLflow now). The spool is removed once all is written; returns how many metric values were written."""
    if not st.exists(storage, run_name, PENDING):
        return 0
    pending = st.read_json(storage, run_name, PENDING)
    client, run_id = MlflowClient(tracking_uri), pending["run_id"]
    records = [r for r in pending["records"] if "end" not in r]
    written, _ = write_records(client, run_id, records, logged_upto(client, run_id))
    log(f"[siamim] wrote {written} metric values kept while MLflow was unreachable (MLflow run {run_id})")
    ends = [r["end"] for r in pending["records"] if "end" in r]
    if ends and (on_end is None or not on_end(run_id, ends[-1])):
        return written  # the end stays in the spool
    storage.fs.delete_file(storage.join(run_name, PENDING))
    return written


class MetricWriter:
    """Writes records to one MLflow run from its own thread, in order; keeps the unwritten ones in the spool.

    A queued callable ``fn(client)`` (e.g. logging a checkpoint's pictures) runs in its turn; its failure is a
    warning.
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
        self.put_upto = -1  # highest step record queued
        self.logged_upto: int | None = None  # highest step MLflow holds (learned at first contact)
        self.failing_since: float | None = None
        self.said_gone = self.spooled = self.closing = False
        self.done = False  # closed: what is left belongs to the spool (the driver may append the run's end)
        self.thread = threading.Thread(target=self._run, name="siamim-mlflow-writer", daemon=True)
        self.thread.start()

    def put(self, items: Iterable) -> None:
        """Queue records (a step record once per step) and callables."""
        with self.cond:
            for item in items:
                if isinstance(item, dict) and not item.get("once"):
                    if item["step"] <= self.put_upto:
                        continue
                    self.put_upto = item["step"]
                self.queue.append(item)
            if len(self.queue) > MAX_QUEUED:
                self._spool()
            self.cond.notify()

    def close(self, timeout_s: float | None = None) -> int:
        """Write what is queued, waiting up to ``timeout_s`` (default: the deadline) for the server;
        returns how many metric values are left (kept in the spool)."""
        deadline = time.time() + (self.deadline_s if timeout_s is None else timeout_s)
        with self.cond:
            self.closing = True
            self.cond.notify()
            while self.queue and time.time() < deadline:
                self.cond.wait(timeout=min(1.0, max(deadline - time.time(), 0.01)))
            left = sum(_size(item) for item in self.queue)
            self.done = True
            if left:
                self._spool()
                self.log(
                    f"[siamim] {left} metric values of MLflow run {self.run_id} are not in MLflow "
                    f"({self.tracking_uri} unreachable); they are kept in {self._where()} and written "
                    f"by: python jobs/pretrain.py --resume {self.run_name} --storage '{self.storage_uri}'"
                )
            return left

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until MLflow holds every queued record (not while the server is failing);
        what it does not hold by then is spooled. True when everything is written."""
        deadline = time.time() + timeout_s
        with self.cond:
            while self._records() and self.failing_since is None and time.time() < deadline:
                self.cond.wait(timeout=min(1.0, max(deadline - time.time(), 0.01)))
            if self._records():
                self._spool()
                return False
            return True

    def save_pending(self) -> None:
        """Spool what is queued now (a worker group that failed may not come back)."""
        with self.cond:
            if self._records():
                self._spool()

    def _run(self) -> None:
        _quick_failing_mlflow()
        attempt = 0
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue or self.done:
                    return
                batch = self._head()
            try:
                self._write(batch)
            except Exception as err:  # unreachable, 5xx, a locked sqlite store: keep, retry, tell once
                if self._failed(err):
                    return
                time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)] if not self.closing else 1.0)
                attempt += 1
                continue
            attempt = 0
            with self.cond:
                if self.done:
                    return
                for _ in batch:
                    self.queue.popleft()
                if self.failing_since is not None:
                    self.log(f"[siamim] MLflow at {self.tracking_uri} answers again; writing the queued metrics")
                self.failing_since, self.said_gone = None, False
                if self.spooled and not self._records():
                    self._drop_spool()
                self.cond.notify_all()

    def _head(self) -> list:
        """The next items to write together: records up to one request, or one callable."""
        if not isinstance(self.queue[0], dict):
            return [self.queue[0]]
        batch, values = [], 0
        for item in self.queue:
            if not isinstance(item, dict) or (batch and values + _size(item) > BATCH_METRICS):
                break
            batch.append(item)
            values += _size(item)
        return batch

    def _write(self, batch: list) -> None:
        if self.logged_upto is None:
            self.logged_upto = logged_upto(self.client, self.run_id)
        if isinstance(batch[0], dict):
            _, self.logged_upto = write_records(self.client, self.run_id, batch, self.logged_upto)
            return
        try:
            batch[0](self.client)
        except Exception as err:
            logger.warning("MLflow run %s: %s: %s", self.run_id, type(err).__name__, err)

    def _failed(self, err: Exception) -> bool:
        """Spool, say a long outage once; True when the writer is closed (the thread ends)."""
        now = time.time()
        with self.cond:
            if self.done:
                return True
            if self.failing_since is None:
                self.failing_since = now
                logger.warning("MLflow write failed (%s: %s); retrying with backoff", type(err).__name__, err)
            self._spool()
            if not self.said_gone and now - self.failing_since > self.deadline_s:
                self.said_gone = True
                self.log(
                    f"[siamim] MLflow at {self.tracking_uri} unreachable for {now - self.failing_since:.0f} s "
                    f"(run.tracking_deadline_s={self.deadline_s:g}); training goes on, its metrics wait in "
                    f"{self._where()} and are written when the server answers again, or by --resume"
                )
            return False

    # the spool (lock held)
    def _records(self) -> list[dict]:
        return [item for item in self.queue if isinstance(item, dict)]

    def _where(self) -> str:
        return st.resolve_storage(self.storage_uri).display(self.run_name, PENDING)

    def _spool(self) -> None:
        try:
            spool(st.resolve_storage(self.storage_uri), self.run_name, self.run_id, self._records())
            self.spooled = True
        except Exception as err:  # storage down too: the queue still holds them
            logger.warning("pending metrics not saved to storage: %s: %s", type(err).__name__, err)

    def _drop_spool(self) -> None:
        try:
            storage = st.resolve_storage(self.storage_uri)
            storage.fs.delete_file(storage.join(self.run_name, PENDING))
            self.spooled = False
        except Exception as err:
            logger.warning("pending-metrics file not removed: %s: %s", type(err).__name__, err)


class MlflowStream(UserCallback):
    """The driver-side tracking of one run: rank 0's reports -> MLflow (and Tune, in a Tune trial).

    Runs in Ray Train's controller. ``pictures``: a ``fn(checkpoint, step) -> fn(client)`` that logs a
    checkpoint's feature pictures, queued after that checkpoint's records (``--checkpoint-pictures``).
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
        self.args = (tracking_uri, run_id, storage_uri, run_name, deadline_s)
        self.pictures = pictures
        self.tune = None
        if tune:
            from ray.tune.integration.ray_train import TuneReportCallback

            self.tune = TuneReportCallback()
        self.writer: MetricWriter | None = None

    def __getstate__(self) -> dict:  # shipped to the controller before any writer exists
        return {**self.__dict__, "writer": None}

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = metrics[0]
        if self.writer is None:
            self.writer = MetricWriter(*self.args, log=lambda m: print(m, flush=True))
        writer = self.writer
        writer.put(report.get(RECORDS, ()))
        if checkpoint is not None and self.pictures is not None:
            writer.put([self.pictures(checkpoint, int(report["step"]))])
        if self.tune is not None:
            # Tune may stop the trial on this report (ASHA) and end this process with it: the report's records
            # are in MLflow (or the spool) before Tune sees them, else a stopped trial loses its last interval.
            writer.flush(TUNE_FLUSH_S)
            self.tune.after_report(run_context, [scalars(report)], checkpoint)
        if report.get(FINAL):
            writer.close()
            self.writer = None

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        if self.writer is not None:
            self.writer.save_pending()
