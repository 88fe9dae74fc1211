"""Checkpoint metadata and the encoder export (no cluster needed)."""

from __future__ import annotations

import pyarrow.fs as pafs
import ray.train
import torch

from siamim.checkpoint import (
    CHECKPOINT_FILE,
    encoder_timm_spec,
    load_checkpoint,
    load_encoder,
    save_checkpoint,
    save_encoder,
)
from siamim.config import load_config, to_dict
from siamim.model.siamim import SiameseIM
from siamim.orchestration.runs.checkpoints import directory_run_id


def test_run_id_comes_from_ray_metadata_and_is_none_without_it(tmp_path):
    ckpt = ray.train.Checkpoint.from_directory(str(tmp_path))
    assert directory_run_id(pafs.LocalFileSystem(), str(tmp_path)) is None
    ckpt.set_metadata({"mlflow_run_id": "ab" * 16, "pending_metrics": []})
    assert directory_run_id(pafs.LocalFileSystem(), str(tmp_path)) == "ab" * 16
    assert directory_run_id(pafs.LocalFileSystem(), str(tmp_path / "missing")) is None


def test_encoder_export_is_the_online_encoder_alone_and_loads_like_a_checkpoint(tmp_path):
    import timm

    cfg = load_config("tiny")
    model = SiameseIM(cfg)
    state = {"format": 1, "step": 3, "config": to_dict(cfg), "model": model.state_dict(), "optimizer": {}}
    full = save_checkpoint(tmp_path / "full" / CHECKPOINT_FILE, state)
    path = save_encoder(tmp_path / "enc" / CHECKPOINT_FILE, state)
    assert path.stat().st_size < full.stat().st_size / 2  # no target network, no optimizer
    exported = load_checkpoint(path)
    assert exported["kind"] == "encoder" and exported["step"] == 3 and "optimizer" not in exported
    encoder, _ = load_encoder(exported)
    for key, value in model.online.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key
    name, kwargs = encoder_timm_spec(cfg)
    vit = timm.create_model(name, **kwargs)
    timm.models.load_checkpoint(vit, str(path), strict=True)  # timm reads it as it is
