"""siamim/checkpoint.py: atomic save, integrity records, damaged-file errors, RNG state, the timm export."""

import json
import random

import numpy as np
import pytest
import torch

from siamim.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    integrity_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_checkpoint,
)


def _state(step: int = 3) -> dict:
    return {"format": FORMAT_VERSION, "step": step, "plan": {"total": 10}, "model": {"w": torch.arange(6.0)}}


def test_save_then_load_round_trips_with_a_record_written_after_the_data(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt" / "checkpoint.pt", _state())
    record = json.loads(integrity_path(path).read_text())
    assert record["size"] == path.stat().st_size and (record["step"], record["plan"]) == (3, {"total": 10})
    assert verify_checkpoint(path) == record
    loaded = load_checkpoint(path.parent)  # a directory holding checkpoint.pt
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(6.0))
    assert not list(path.parent.glob(".*.tmp*"))  # no temp files left behind


def test_a_second_save_replaces_the_first_and_its_record(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state(3))
    save_checkpoint(path, _state(7))
    assert load_checkpoint(path)["step"] == 7 and verify_checkpoint(path)["step"] == 7


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "empty"])
def test_damaged_files_fail_with_one_line_naming_the_file(tmp_path, damage):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state())
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    assert ("damaged" in str(err.value)) or ("truncated" in str(err.value))


def test_a_file_without_a_record_loads_unverified_and_a_foreign_file_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state())
    integrity_path(path).unlink()  # written before integrity records existed
    assert verify_checkpoint(path) is None and load_checkpoint(path)["step"] == 3
    foreign = tmp_path / "other.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(CheckpointError, match="not a siamim checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")


def test_rng_state_restores_every_generator():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
