"""Which torch device a ``*.device`` config key (``auto``, ``cpu``, ``cuda``) means here."""

from __future__ import annotations

import torch


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``"auto"`` -> CUDA when visible, else CPU; ``"cuda"`` without a visible GPU raises naming ``key``.

    Args:
        name: ``"auto"``, ``"cpu"``, ``"cuda"`` or an indexed device such as ``"cuda:1"``.
        key: the config key the value came from (``train.device``, ``eval.device``), for the error.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{key}={name} but no CUDA device is visible; use {key}=auto or cpu")
    return torch.device(name)
