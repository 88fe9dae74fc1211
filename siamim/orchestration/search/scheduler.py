"""ASHA for a resumable search: its rung records survive a killed driver.

Ray Tune's ``Tuner.restore`` brings back the trials and the searcher's state, but the scheduler comes back as
it was pickled when the experiment started (Ray 2.60's ``TuneController.save_to_dir`` saves the searcher only):
an ASHA with empty rungs, which compares nothing after a ``--resume`` until new trials fill them again, so a
bad trial that reaches a rung first is not stopped. :class:`ResumableASHA` writes its rung records
(``{bracket: {milestone: {trial_id: value}}}``) to ``<storage>/<search>/asha_rungs.json`` whenever one is
added and reads them back on its first decision after being unpickled.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler

from siamim.orchestration.runs import storage as st

RUNGS_FILE = "asha_rungs.json"


class ResumableASHA(ASHAScheduler):
    """:class:`ray.tune.schedulers.ASHAScheduler` (same arguments) that keeps its rungs in ``storage_uri/name``."""

    def __init__(self, storage_uri: str, name: str, **asha):
        super().__init__(**asha)
        self._where = (storage_uri, name)
        self._loaded = False

    def _records(self) -> list[list]:
        return [[(milestone, recorded) for milestone, recorded in b._rungs] for b in self._brackets]

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        root = st.resolve_storage(self._where[0])
        if not st.exists(root, self._where[1], RUNGS_FILE):
            return
        saved = st.read_json(root, self._where[1], RUNGS_FILE)
        for bracket, rungs in zip(self._records(), saved, strict=False):
            for (_, recorded), (_, values) in zip(bracket, rungs, strict=False):
                for trial_id, value in values.items():
                    recorded.setdefault(trial_id, value)

    def _count(self) -> int:
        return sum(len(recorded) for bracket in self._records() for _, recorded in bracket)

    def _save(self) -> None:
        root = st.resolve_storage(self._where[0])
        st.write_json(root, self._records(), self._where[1], RUNGS_FILE)

    def _tracked(self, call, *args):
        self._load()
        before = self._count()
        out = call(*args)
        if self._count() != before:
            self._save()
        return out

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._tracked(super().on_trial_result, tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._tracked(super().on_trial_complete, tune_controller, trial, result)
