"""The exported encoder in timm's own format: ``timm.models.save_for_hf``'s folder.

A folder written by :func:`save_timm_encoder` holds

* ``model.safetensors``: the online encoder's state dict (timm key names,
  :func:`siamim.checkpoint.export_encoder`);
* ``config.json``: timm's config (``architecture``, ``model_args`` = every
  constructor argument of the ViT, ``pretrained_cfg`` with the input size and
  the dataset's normalisation), plus one key of ours, ``"siamim"``:
  ``{"format", "kind": "encoder", "step", "config"}`` (the run's resolved config).

So ``timm.create_model("local-dir:<folder>", pretrained=True)`` rebuilds the encoder
with no code of this project (timm ignores the ``siamim`` key), and
:func:`load_timm_export` gives back the state dict :func:`siamim.checkpoint.load_encoder`
reads (a folder without the ``siamim`` key, any timm ViT export, gets a config inferred
from its weights in :func:`siamim.foreign.read_checkpoint`).

torch, timm and safetensors are imported inside the functions (the file names serve
torch-free callers).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TIMM_CONFIG = "config.json"
TIMM_WEIGHTS = "model.safetensors"
SIAMIM_KEY = "siamim"  # our entry in config.json (timm reads only its own keys)


def is_timm_export(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding ``config.json`` and ``model.safetensors``."""
    path = Path(path)
    return path.is_dir() and (path / TIMM_CONFIG).is_file() and (path / TIMM_WEIGHTS).is_file()


def _data_config(cfg) -> dict | None:
    """The normalisation the encoder was trained with, for timm's ``pretrained_cfg`` (None: timm's default)."""
    if cfg.data.dataset == "fashion_mnist":
        from siamim.data import fashion_mnist

        return {"mean": (fashion_mnist.MEAN,) * 3, "std": (fashion_mnist.STD,) * 3}
    if cfg.data.dataset == "image_folder":
        from siamim.data.sources import IMAGENET_MEAN, IMAGENET_STD

        return {"mean": tuple(IMAGENET_MEAN), "std": tuple(IMAGENET_STD)}
    return None  # parquet shards: their statistics live in the shard manifest


def save_timm_encoder(directory: str | os.PathLike, state: dict) -> Path:
    """Write the encoder of ``state`` (a training state or an encoder file's dict) as timm's folder.

    Written into a temporary sibling and renamed, so ``directory`` is either complete or absent.
    Returns ``directory``.
    """
    from timm.models import save_for_hf

    from siamim.checkpoint import ENCODER_KIND, FORMAT_VERSION, load_encoder

    directory = Path(directory)
    encoder, cfg = load_encoder(state)
    extra = {SIAMIM_KEY: {"format": FORMAT_VERSION, "kind": ENCODER_KIND, "step": int(state.get("step", 0))}}
    extra[SIAMIM_KEY]["config"] = state["config"]
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        save_for_hf(encoder, tmp, model_config=extra, safe_serialization=True, data_config=_data_config(cfg))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_timm_export(path: str | os.PathLike) -> dict:
    """A timm export folder as a siamim encoder state ``{"format", "kind": "encoder", "step", "config", "model"}``.

    A folder without our ``siamim`` entry (any timm ``save_for_hf`` export) has ``config: None`` and
    timm's ``model_args``: :func:`siamim.foreign.read_checkpoint` infers the config from the weights.
    """
    from safetensors.torch import load_file

    from siamim.checkpoint import ENCODER_KIND, FORMAT_VERSION

    path = Path(path)
    meta = json.loads((path / TIMM_CONFIG).read_text())
    ours = meta.get(SIAMIM_KEY) or {}
    return {
        "format": FORMAT_VERSION,
        "kind": ENCODER_KIND,
        "step": int(ours.get("step", 0)),
        "config": ours.get("config"),
        "model": load_file(str(path / TIMM_WEIGHTS)),  # {timm key: tensor}
        "model_args": meta.get("model_args", {}),
    }
