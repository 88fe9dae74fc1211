"""Protocol names and the checks on ``cfg.eval`` the suite runs before any compute."""

from __future__ import annotations

import difflib

from siamim.config import ConfigError

# Run order: FT before robust (robust also evaluates the fine-tuned classifier when FT ran).
PROTOCOLS = ("knn", "lin", "fewshot", "longtail", "dense", "ft", "robust")


def parse_protocols(text: str | list[str]) -> list[str]:
    """``"knn,lin"`` (or a list, or ``"all"``) -> protocol names in run order.

    An unknown name raises ``ValueError`` listing the valid ones and the closest match.
    """
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        raise ValueError(f"no protocol given; choose from {', '.join(PROTOCOLS)} (or 'all')")
    if names == ["all"]:
        return list(PROTOCOLS)
    for n in names:
        if n not in PROTOCOLS:
            close = difflib.get_close_matches(n, PROTOCOLS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown protocol {n!r}: choose from {', '.join(PROTOCOLS)} (or 'all'){hint}")
    return [p for p in PROTOCOLS if p in names]


def _need(ok: bool, key: str, value, need: str) -> None:
    if not ok:
        raise ConfigError(f"eval.{key}={value!r} is invalid: {need}")


def check_eval_config(e) -> None:
    """Range checks of the suite's ``cfg.eval`` fields; raises :class:`ConfigError` naming the key and the fix."""
    for key in (
        "batch_size",
        "lin_steps",
        "lin_batch_size",
        "fewshot_seeds",
        "dense_train_mosaics",
        "dense_test_mosaics",
        "dense_epochs",
        "longtail_rare",
        "ft_batch_size",
        "knn_k",
    ):
        _need(getattr(e, key) >= 1, key, getattr(e, key), "must be >= 1")
    for key in ("train_limit", "test_limit", "robust_test_limit", "knn_train_subset"):
        v = getattr(e, key)
        _need(v is None or v >= 10, key, v, "must be null (everything) or >= 10 (one image per class at least)")
    for key in ("lin_blr", "dense_blr", "ft_blr", "ft_epochs", "knn_temperature"):
        _need(getattr(e, key) > 0, key, getattr(e, key), "must be positive")
    for key in ("lin_warmup_steps", "ft_warmup_epochs", "ft_weight_decay", "ft_mixup", "ft_cutmix", "fewshot_lambd"):
        _need(getattr(e, key) >= 0, key, getattr(e, key), "must be >= 0")
    _need(0 < e.fewshot_fraction <= 1, "fewshot_fraction", e.fewshot_fraction, "must be in (0, 1]; 0.01 is 1%")
    _need(e.longtail_imbalance >= 1, "longtail_imbalance", e.longtail_imbalance, "must be >= 1 (100 is the protocol)")
    _need(0 < e.ft_layer_decay <= 1, "ft_layer_decay", e.ft_layer_decay, "must be in (0, 1] (1: no decay)")
    _need(0 <= e.ft_drop_path < 1, "ft_drop_path", e.ft_drop_path, "must be in [0, 1)")
    _need(0 <= e.ft_smoothing < 1, "ft_smoothing", e.ft_smoothing, "must be in [0, 1)")
    _need(e.device in ("auto", "cpu", "cuda"), "device", e.device, "must be auto, cpu or cuda")
