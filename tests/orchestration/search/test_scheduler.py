"""The search's ASHA keeps its rungs across a pickle (what Tune's restore does to a scheduler): after it, a trial
behind the recorded ones is stopped at the rung, as before; Tune's own ASHA, restored, would let it run on."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from siamim.orchestration.search.scheduler import RUNGS_FILE, ResumableASHA

ASHA = {"time_attr": "step", "metric": "knn_monitor", "mode": "max", "max_t": 7, "grace_period": 2}


def feed(scheduler, trial_id: str, step: int, value: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id)  # ASHA reads the trial's id only
    if trial_id not in scheduler._trial_info:
        scheduler.on_trial_add(None, trial)
    return scheduler.on_trial_result(None, trial, {"step": step, "knn_monitor": value})


def test_rungs_survive_a_pickle_and_still_stop_a_worse_trial(tmp_path):
    fresh = ResumableASHA(str(tmp_path), "s", reduction_factor=2, stop_last_trials=False, **ASHA)
    stored = pickle.dumps(fresh)  # Tune pickles the scheduler when the experiment starts (tuner.pkl)
    assert feed(fresh, "a", 2, 40.0) == TrialScheduler.CONTINUE  # first at the rung: nothing to compare
    assert feed(fresh, "b", 2, 41.0) == TrialScheduler.CONTINUE
    assert (tmp_path / "s" / RUNGS_FILE).is_file()

    restored = pickle.loads(stored)  # the driver was killed; --resume unpickles the scheduler as it started
    assert feed(restored, "c", 2, 10.0) == TrialScheduler.STOP  # below the median of 40 and 41
    assert feed(restored, "d", 2, 45.0) == TrialScheduler.CONTINUE

    plain = pickle.loads(pickle.dumps(ASHAScheduler(reduction_factor=2, stop_last_trials=False, **ASHA)))
    assert feed(plain, "a", 2, 40.0) == TrialScheduler.CONTINUE
    assert feed(plain, "c", 2, 10.0) == TrialScheduler.STOP  # with the rung filled in this process, Tune's stops
    blank = pickle.loads(pickle.dumps(ASHAScheduler(reduction_factor=2, stop_last_trials=False, **ASHA)))
    assert feed(blank, "c", 2, 10.0) == TrialScheduler.CONTINUE  # restored empty: nothing to compare against
