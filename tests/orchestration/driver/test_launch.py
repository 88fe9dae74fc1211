"""Driver helpers of the launch: resume targets, overrides on a stored config, run names."""

from __future__ import annotations

import pytest

from siamim.config import ConfigError, load_config, to_dict
from siamim.orchestration.errors import LaunchInputError
from siamim.orchestration.runs import storage as st
from siamim.orchestration.runs.resume import apply_overrides, find_run, new_run_name


def test_find_run_by_name_and_latest(tmp_path):
    s = st.resolve_storage(str(tmp_path))
    with pytest.raises(LaunchInputError, match="no runs to resume"):
        find_run(s, "latest")
    st.write_json(s, {"name": "old", "created": 1.0}, "old", st.RUN_RECORD)
    st.write_json(s, {"name": "new", "created": 2.0}, "new", st.RUN_RECORD)
    assert find_run(s, None)["name"] == "new" and find_run(s, "latest")["name"] == "new"
    assert find_run(s, "old")["name"] == "old"
    with pytest.raises(LaunchInputError, match="runs there: old, new"):
        find_run(s, "missing")


def test_overrides_apply_on_top_of_a_stored_config():
    from siamim.config import from_dict

    stored = to_dict(load_config("tiny", {"train.max_steps": 2, "model.depth": 2}))
    cfg = apply_overrides(from_dict(stored), ["train.max_steps=8"])
    assert cfg.train.max_steps == 8 and cfg.model.depth == 2
    with pytest.raises(ConfigError, match="did you mean"):
        apply_overrides(from_dict(stored), {"train.max_stepz": 3})


def test_run_name_defaults_to_experiment_and_time():
    assert new_run_name(load_config("tiny", {"run.name": "mine"})) == "mine"
    assert new_run_name(load_config("tiny")).startswith("siamim-tiny-")


def test_more_steps_moves_the_stop_inside_the_plan_and_grows_it_past_the_end():
    from siamim.config import load_config
    from siamim.orchestration.runs.resume import plan_resume

    cmd = "python jobs/pretrain.py --resume r"
    cfg = plan_resume(load_config("tiny", ["train.max_steps=100"]), "r", 100, 234, 50, cmd, log=lambda m: None)
    assert cfg.train.epochs == 1 and cfg.train.max_steps == 150  # inside the 234-step plan: same schedules
    cfg = plan_resume(load_config("tiny", ["train.max_steps=100"]), "r", 100, 234, 134, cmd, log=lambda m: None)
    assert cfg.train.epochs == 1 and cfg.train.max_steps is None  # exactly to the end of the plan
    cfg = plan_resume(load_config("tiny"), "r", 234, 234, 100, cmd, log=lambda m: None)
    assert round(cfg.train.epochs * 234) == 334 and cfg.train.max_steps is None  # the plan grows
    with pytest.raises(LaunchInputError, match=r"already at step 234.*--more-steps N"):
        plan_resume(load_config("tiny"), "r", 234, 234, None, cmd)
    with pytest.raises(LaunchInputError, match=r"train.max_steps=400 lies past.*234 steps.*--more-steps 166"):
        plan_resume(load_config("tiny", ["train.max_steps=400"]), "r", 234, 234, None, cmd)
