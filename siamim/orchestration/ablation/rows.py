"""The paper's ablation rows (a-k): their switches, published numbers and configs.

SiameseIM (Tao et al., CVPR 2023), Table "ablation" (ViT-B, 400 epochs; FT / LIN
top-1 on ImageNet, AP box / AP mask on COCO). Row (i) is SiameseIM, row (a) is
MAE, row (k) an instance-discrimination method (one vector per view). The
numbers are kept here so the assembled ablation table can show them beside our
measurements (orientation only: our scale is Fashion-MNIST on CPUs).

A row's config is the preset ``configs/ablation/<row>.yaml``
(``load_config("ablation/<row>")``); :data:`ROWS` restates each row's switches
as the paper's table gives them (a test checks the presets against it). The
switches that go to MLflow are read back from the *resolved* config
(:data:`SWITCH_KEYS`), so every child run of a grid has the same param names.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from siamim.config import Config, flatten, load_config

# The config keys of the table's switch columns (docs/method.md), in the paper's column order.
SWITCH_KEYS = (
    "model.target",
    "views.different_views",
    "views.color_aug",
    "mask.type",
    "model.norm",
    "model.heads",
    "loss.scope",
    "loss.type",
)


@dataclass(frozen=True)
class Row:
    """One ablation row: its switches (dotted config keys, as the paper's table) and the paper's numbers."""

    name: str
    switches: dict
    ft: float
    lin: float
    ap_box: float
    ap_mask: float

    @property
    def paper(self) -> dict[str, float]:
        return {"FT": self.ft, "LIN": self.lin, "AP box": self.ap_box, "AP mask": self.ap_mask}


def _row(name, target, different, colour, mask, norm, heads, scope, loss, ft, lin, box, mask_ap) -> Row:
    return Row(
        name,
        {
            "model.target": target,
            "views.different_views": different,
            "views.color_aug": colour,
            "mask.type": mask,
            "model.norm": norm,
            "model.heads": heads,
            "loss.scope": scope,
            "loss.type": loss,
        },
        ft,
        lin,
        box,
        mask_ap,
    )


ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        #    target     diff.  colour mask         norm  proj&dec     loss      type       FT    LIN   APb   APm
        _row("a", "pixel", False, False, "random", "ln", "mae_like", "dense", "l2", 82.8, 62.3, 47.3, 42.5),
        _row("b", "feature", False, False, "random", "ln", "moco_like", "dense", "unigrad", 81.0, 48.7, 43.5, 39.2),
        _row("c", "pixel", False, True, "random", "ln", "mae_like", "dense", "l2", 82.0, 59.9, 46.3, 41.8),
        _row("d", "pixel", True, False, "random", "ln", "mae_like", "dense", "l2", 78.7, 46.2, 38.1, 34.8),
        _row("e", "feature", True, False, "random", "ln", "moco_like", "dense", "unigrad", 82.9, 69.6, 48.5, 43.4),
        _row("f", "feature", True, True, "random", "ln", "moco_like", "dense", "unigrad", 83.0, 73.1, 47.9, 43.2),
        _row("g", "feature", True, True, "random", "bn", "moco_like", "dense", "unigrad", 83.2, 73.6, 48.7, 43.7),
        _row("h", "feature", True, True, "blockwise", "bn", "moco_like", "dense", "unigrad", 83.5, 74.7, 50.0, 44.5),
        _row("i", "feature", True, True, "blockwise", "bn", "mae_like", "dense", "unigrad", 83.7, 76.8, 49.8, 44.2),
        _row("j", "feature", True, True, "blockwise", "bn", "mae_like", "dense", "l2", 83.3, 76.5, 49.8, 44.2),
        _row("k", "feature", True, True, "random", "bn", "moco_like", "global", "unigrad", 82.7, 72.0, 45.9, 41.4),
    )
}

# Baselines that run in the grid beside the rows (``--rows a,mae,i``), each its preset
# ``configs/baselines/<name>.yaml``. Their paper numbers come from the paper's main table (ViT-B,
# 400 epochs), not from the ablation table.
BASELINES: dict[str, Row] = {
    # MAE's own recipe (facebookresearch/mae); row (a) is row (i)'s architecture with a pixel target.
    "mae": _row("mae", "pixel", False, False, "random", "ln", "mae_like", "dense", "l2", 83.1, 62.5, 50.6, 45.1),
}

# Every name the grid accepts, in table order (the paper's rows, then the baselines).
GRID_ROWS: dict[str, Row] = {**ROWS, **BASELINES}

# The paper's key comparisons (first minus second) and what each one isolates.
KEY_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("e", "a", "feature target + different views vs MAE (semantic alignment)"),
    ("d", "a", "different views with a pixel target (hurts)"),
    ("h", "k", "dense vs global loss (spatial sensitivity)"),
    ("i", "h", "MAE-like vs MoCo-like projector & decoder"),
    ("i", "j", "UniGrad vs L2 loss"),
    ("g", "f", "BN vs LN in projector & decoder"),
)


def parse_rows(text: str) -> list[str]:
    """``"a,b,k"`` / ``"all"`` / ``"a-e"`` / ``"a,mae,i"`` -> row names in table order.

    ``all`` and ranges cover the paper's rows (a-k); a baseline (:data:`BASELINES`) is named on its
    own. Unknown names raise ``ValueError``.
    """
    items = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    valid = f"the paper's rows are {','.join(ROWS)} (or 'all'), the baselines {','.join(BASELINES)}"
    if not items:
        raise ValueError(f"--rows: no row given; {valid}")
    names: set[str] = set()
    for item in items:
        if item == "all":
            names.update(ROWS)
            continue
        if item in BASELINES:
            names.add(item)
            continue
        lo, _, hi = item.partition("-")
        for end in (lo, hi) if hi else (lo,):
            if end not in ROWS:
                close = difflib.get_close_matches(end, list(GRID_ROWS), n=1)
                raise ValueError(
                    f"--rows: unknown row {end!r}; {valid}" + (f"; did you mean {close[0]!r}?" if close else "")
                )
        keys = list(ROWS)
        names.update(keys[keys.index(lo) : keys.index(hi) + 1] if hi else [lo])
    return [r for r in GRID_ROWS if r in names]


def row_source(row: str) -> str:
    """The preset a row's settings come from (for logs and MLflow): ``ablation/<row>`` or ``baselines/<name>``."""
    return f"baselines/{row}" if row in BASELINES else f"ablation/{row}"


def row_config(row: str, overrides: list[str] | None = None) -> Config:
    """The resolved config of ``row``: its preset, then ``overrides``.

    Raises :class:`~siamim.config.ConfigError` for a bad override, naming the key.
    """
    return load_config(row_source(row), list(overrides or []))


def switches_of(cfg: Config) -> dict:
    """The switch columns as read from a resolved config (flat dotted keys present in this version)."""
    flat = flatten(cfg)
    return {k: flat[k] for k in SWITCH_KEYS if k in flat}
