"""One config system: typed pydantic sections, YAML presets, dotted overrides.

The same dotted keys (``model.depth=4``) are CLI overrides, Ray Tune
``param_space`` entries and MLflow params. Every ablation switch of the paper
(docs/method.md, ablation rows a-k) is a key here. Validation runs before any
compute and in one place: each key's type and range is a pydantic field
constraint, every rule that spans keys is :meth:`Config._cross_checks`. An
unknown key or a bad value raises :class:`ConfigError` naming the key and, for a
typo, the closest valid one.

Presets are YAML files under ``configs/`` (``tiny``, ``ablation/i``); a preset may
name a ``_base_`` preset (a path relative to itself, or a preset name) whose
values it overrides key by key.
"""

from __future__ import annotations

import difflib
import importlib
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from siamim.eval.settings import EvalConfig  # common keys + one section per evaluation protocol (no torch)
from siamim.sections import ConfigError, Section, validated

PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


def _plugin_name(package: str, key: str, value: str) -> str:
    """``value`` if it names a plugin module of ``package`` (``siamim.losses``), else a ConfigError naming ``key``."""
    names = importlib.import_module(package).names()
    if value not in names:
        close = difflib.get_close_matches(value, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}={value!r} is not one of {names} (the modules of {package}){hint}")
    return value


class DataConfig(Section):
    dataset: Literal["fashion_mnist", "image_folder", "parquet"] = "fashion_mnist"
    # fashion_mnist: None -> Debian's /usr/share/datasets/fashion-mnist (or $SIAMIM_FASHION_MNIST);
    # parquet: a directory or s3://bucket/prefix[?endpoint_override=HOST:PORT&scheme=http] (jobs/prepare_data.py)
    root: str | None = None
    img_size: PositiveInt = 32
    num_workers: int = Field(1, ge=0)  # DataLoader worker processes per training process
    train_subset: PositiveInt | None = None  # use the first N training images (smoke tests)
    views_on: Literal["auto", "cpu", "device"] = "auto"  # where views are rendered; auto: device when on CUDA
    # map: batches a pure function of (seed, step), exact resume. ray_data: Ray Data streams parquet shards
    # (read -> decode + views + mask on the cluster's CPUs -> each Train worker); docs/platform.md
    loader: Literal["map", "ray_data"] = "map"
    stream_tasks: PositiveInt | None = None  # ray_data: concurrent decode/augment tasks (None: as many as CPUs allow)
    stream_batch: PositiveInt = 64  # ray_data: images per decode/augment task batch
    shuffle_buffer: int = Field(1024, ge=0)  # ray_data: rows in each Train worker's seeded shuffle buffer (0: off)


class ViewsConfig(Section):
    different_views: bool = True  # ablation: False -> view 2 is an exact copy of view 1 (same crop, flip, colour)
    color_aug: bool = True  # ablation: False -> no colour augmentation on either view
    crop_min: float = Field(0.08, gt=0.0, le=1.0)  # RandomResizedCrop scale [crop_min, 1]
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)


class MaskConfig(Section):
    type: str = "blockwise"  # a module of siamim.data.masks (blockwise, random, ...)
    ratio: float = Field(0.6, gt=0.0, lt=1.0)  # masked patches = round(ratio * G*G); 118/196 for ViT-B/16 at 224
    min_block: PositiveInt = 4  # smallest block (patches) of blockwise masking; BEiT uses 16 at 14x14

    @field_validator("type")
    @classmethod
    def _known_mask(cls, value: str) -> str:
        return _plugin_name("siamim.data.masks", "mask.type", value)


class ModelConfig(Section):
    patch_size: PositiveInt = 4
    embed_dim: PositiveInt = 96
    depth: PositiveInt = 4
    num_heads: PositiveInt = 3
    mlp_ratio: float = Field(4.0, gt=0.0)
    decoder_dim: PositiveInt = 96  # projector output / predictor width / target feature width
    decoder_heads: PositiveInt = 3
    projector_depth: int = Field(2, ge=0)  # 0: the projector is its linear layer only (MAE's decoder_embed)
    predictor_depth: PositiveInt = 2
    norm: Literal["bn", "ln"] = "bn"  # norm inside projector/predictor (ablation column "proj/dec norm")
    target: Literal["feature", "pixel"] = "feature"  # ablation column "target": EMA features or normalised pixels
    heads: Literal["mae_like", "moco_like"] = "mae_like"  # ablation column "proj & dec" (docs/method.md)
    # MAE-like predictor queries: relative = mask token + learned embedding of the view-2 position relative to
    # view 1 (SiameseIM); grid = mask token + the decoder's fixed sin-cos position of the masked view-1 patch
    # (MAE's decoder, same-view only; configs/baselines/mae.yaml)
    query_pos: Literal["relative", "grid"] = "relative"
    train_patch_embed: bool = False  # False: frozen patch-embedding projection (MoCo v3 trick)
    drop_path: Fraction = 0.0
    timm_name: str = "vit_tiny_patch16_224"  # timm architecture name the exported encoder loads into


class LossConfig(Section):
    type: str = "unigrad"  # a module of siamim.losses (unigrad, l2: MSE to the normalised target, cosine, ...)
    neg_weight: float = Field(0.02, ge=0.0)  # lambda of UniGrad
    scope: Literal["dense", "global"] = "dense"  # ablation column "loss": per view-2 token, or one vector per view
    global_pool: Literal["cls", "mean"] = "cls"  # the vector of a global loss: cls token or mean of patch tokens

    @field_validator("type")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        return _plugin_name("siamim.losses", "loss.type", value)


class OptimConfig(Section):
    blr: float = Field(6.25e-5, gt=0.0)  # base lr per 256 images: lr = blr * batch_size / 256
    min_lr: float = Field(0.0, ge=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    warmup_epochs: float = Field(40.0, ge=0.0)
    clip_grad: float | None = Field(1.0, gt=0.0)  # None: no clipping
    ema_m0: float = Field(0.995, ge=0.0, le=1.0)  # EMA momentum, cosine from m0 to 1
    decay_tokens: bool = True  # the release: cls/mask tokens are weight-decayed (False: exempt, as 1-D params)


class TrainConfig(Section):
    epochs: float = Field(400.0, gt=0.0)
    batch_size: int = Field(4096, ge=2)  # global batch (all workers together); BatchNorm and UniGrad need a batch
    max_steps: PositiveInt | None = None  # stop early; schedules still span `epochs`
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA with bf16 support, else fp32
    compile: bool = False  # torch.compile the online branch (not measured on a GPU yet: docs/benchmarks.md)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: PositiveInt = 10
    checkpoint_every: int = Field(500, ge=0)  # steps between checkpoints (0: only at the end)
    output_dir: str = "runs/default"  # checkpoints of single-process runs
    init_from: str | None = None  # start from this checkpoint's encoder (ours, timm folder, official/MAE .pth)


# A run name is a directory (local or S3), a Ray Train run, an MLflow run name and a word in the commands we
# print (--resume NAME): letters, digits, '.', '_', '-', starting with a letter or digit.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_name(value: str, key: str = "run.name") -> str:
    """``value`` if it is a valid run name (:data:`RUN_NAME`), else a :class:`ConfigError` naming ``key``."""
    if not RUN_NAME.fullmatch(value):
        raise ConfigError(
            f"{key}={value!r} is invalid: a run name is a directory, a Ray run and a shell word; use letters, "
            "digits, '.', '_' and '-' (starting with a letter or digit, at most 100), e.g. fmnist-s3_2"
        )
    return value


class PlatformConfig(Section):
    """Platform settings (the ``run`` section), read by the Ray/MLflow layer only (never by the core loop)."""

    experiment: str = "siamim"
    name: str | None = None
    storage: str = "runs/ray"  # local path or URI (s3://bucket/prefix?endpoint_override=...)
    num_workers: PositiveInt = 2
    # elastic training: Ray Train runs between min_workers and num_workers workers, as the cluster allows
    # (a lost node shrinks the group, a joining one grows it back); None: a fixed group of num_workers
    min_workers: PositiveInt | None = None
    # elastic: how often Ray Train checks whether the cluster fits a larger group (ScalingConfig's
    # elastic_resize_monitor_interval_s; a joining node grows the group at the next check:
    # https://docs.ray.io/en/latest/train/user-guides/elastic-training.html)
    elastic_resize_s: float = Field(60.0, ge=0.0)
    use_gpu: bool = False
    gpus_per_worker: float = Field(1.0, gt=0.0)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    max_failures: int = Field(0, ge=-1)  # -1: retry forever
    keep_checkpoints: PositiveInt = 2
    # An MLflow server gone this long is reported once (training goes on; its metrics wait in storage);
    # at the end of a run, how long to wait for it before leaving them to --resume.
    tracking_deadline_s: float = Field(300.0, ge=0.0)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        return value if value is None else check_run_name(value)


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: PlatformConfig = Field(default_factory=PlatformConfig)

    @property
    def grid_size(self) -> int:
        return self.data.img_size // self.model.patch_size

    @property
    def num_masked(self) -> int:
        return round(self.mask.ratio * self.grid_size**2)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        """Every rule that spans keys (each key's own range is its field's constraint)."""
        d, m, mk, t, r, loss, v = self.data, self.model, self.mask, self.train, self.run, self.loss, self.views
        _check(
            d.img_size % m.patch_size == 0, "model.patch_size", m.patch_size, f"must divide data.img_size={d.img_size}"
        )
        _check(
            d.dataset == "parquet" or d.loader == "map",
            "data.loader",
            d.loader,
            "ray_data streams Parquet shards; set data.dataset=parquet (convert with jobs/prepare_data.py)",
        )
        _check(
            d.dataset != "parquet" or bool(d.root),
            "data.root",
            d.root,
            "data.dataset=parquet needs data.root=<directory or s3://bucket/prefix of shards>",
        )
        _check(
            0 < self.num_masked < self.grid_size**2,
            "mask.ratio",
            mk.ratio,
            f"masks {self.num_masked} of {self.grid_size**2} patches; at least one must be masked and one visible",
        )
        _check(
            mk.min_block <= self.num_masked,
            "mask.min_block",
            mk.min_block,
            f"must be in [1, number of masked patches = {self.num_masked}]",
        )
        for key, dim, heads in (
            ("model.num_heads", m.embed_dim, m.num_heads),
            ("model.decoder_heads", m.decoder_dim, m.decoder_heads),
        ):
            _check(dim % heads == 0, key, heads, f"must divide the width {dim}")
        _check(
            m.decoder_dim % 4 == 0,
            "model.decoder_dim",
            m.decoder_dim,
            "must be divisible by 4 (relative position embedding has 4 sin-cos parts)",
        )
        _check(
            m.embed_dim % 4 == 0,
            "model.embed_dim",
            m.embed_dim,
            "must be divisible by 4 (2-D sin-cos position embedding)",
        )
        _check(
            m.target == "feature" or m.heads == "mae_like",
            "model.target",
            m.target,
            "a pixel target is predicted by the MAE-like decoder; set model.heads=mae_like",
        )
        _check(
            loss.scope == "dense" or m.target == "feature",
            "loss.scope",
            loss.scope,
            "a global loss compares pooled features; it needs model.target=feature",
        )
        _check(
            loss.scope == "dense" or m.heads == "moco_like",
            "loss.scope",
            loss.scope,
            "the global loss (ablation row k) is built on the MoCo-like heads; set model.heads=moco_like",
        )
        _check(
            m.query_pos == "relative" or (m.heads == "mae_like" and not v.different_views and loss.scope == "dense"),
            "model.query_pos",
            m.query_pos,
            "grid queries (MAE's decoder) predict view 1's masked patches; they need model.heads=mae_like, "
            "views.different_views=false and loss.scope=dense",
        )
        low = r.num_workers if r.min_workers is None else r.min_workers
        _check(low <= r.num_workers, "run.min_workers", r.min_workers, f"must be <= run.num_workers={r.num_workers}")
        bad = [n for n in range(low, r.num_workers + 1) if t.batch_size % n]
        fixed = f"must be divisible by run.num_workers={r.num_workers} (it is the global batch)"
        elastic = (
            f"must be divisible by every worker count the run may have: {', '.join(map(str, bad))} of "
            f"run.min_workers..run.num_workers = {low}..{r.num_workers} do not divide it (it is the global batch); "
            "pick a batch size they all divide, or narrow the range"
        )
        _check(not bad, "train.batch_size", t.batch_size, fixed if low == r.num_workers else elastic)
        return self


def _check(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {need}")


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


# --------------------------------------------------------------------------- conversion
def _nest(dotted: str, value: Any) -> dict:
    """``("model.depth", 4)`` -> ``{"model": {"depth": 4}}``."""
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``'model.depth=4'`` -> ``('model.depth', 4)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


SPACES_DIR = CONFIG_DIR / "spaces"  # search spaces of jobs/search.py (not presets); found presets: configs/found/


def _preset_names() -> list[str]:
    return sorted(
        str(p.relative_to(CONFIG_DIR).with_suffix(""))
        for p in CONFIG_DIR.rglob("*.yaml")
        if not p.name.startswith("_") and SPACES_DIR not in p.parents
    )


def resolve_preset(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A preset name (``tiny``, ``ablation/i``) or a YAML path to a file path.

    ``relative_to``: directory a relative ``_base_`` path is resolved against first.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        for candidate in ([relative_to / path] if relative_to is not None else []) + [path]:
            if candidate.is_file():
                return candidate.resolve()
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate.resolve()
    presets = _preset_names()
    close = difflib.get_close_matches(str(name_or_path), presets, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"config preset {str(name_or_path)!r} not found (presets: {presets}){hint}")


def _merge(base: dict, over: dict) -> dict:
    """Recursive dict merge: ``over``'s values win, sections merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_preset(name_or_path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The preset's mapping with its ``_base_`` chain merged in (base first, the preset's keys win)."""
    path = resolve_preset(name_or_path, _chain[-1].parent if _chain else None)
    if path in _chain:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in (*_chain, path))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{path} is not valid YAML{where}: {problem}; fix the file or pass another --config"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: _base_ must be one preset name or path, got {base!r}")
    return _merge(read_preset(base, (*_chain, path)), data)


def _with_overrides(data: dict, overrides: list[str] | dict | None) -> dict:
    """``data`` with ``["model.depth=4", ...]`` or ``{"model.depth": 4, ...}`` merged in key by key."""
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        data = _merge(data, _nest(key, value))
    return data


def load_config(preset: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- YAML preset (with its ``_base_`` chain) <- overrides, validated once.

    ``overrides``: ``["model.depth=4", ...]`` or ``{"model.depth": 4, ...}``.
    """
    return validated(Config, _with_overrides(read_preset(preset) if preset is not None else {}, overrides))


def apply_overrides(cfg: Config, overrides: list[str] | dict | None) -> Config:
    """A new config: ``cfg`` with dotted overrides applied, validated once (e.g. over a stored config)."""
    return validated(Config, _with_overrides(to_dict(cfg), overrides))


def to_dict(cfg: Config) -> dict:
    """The plain nested mapping (lists, no tuples): what checkpoints, YAML and MLflow store."""
    return cfg.model_dump(mode="json")


def _drop_unknown(model: type[BaseModel], data: dict, prefix: str, dropped: list[str]) -> dict:
    out = {}
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            dropped.append(prefix + key)
            continue
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(value, dict):
            value = _drop_unknown(sub, value, f"{prefix}{key}.", dropped)
        out[key] = value
    return out


def from_dict(data: dict) -> Config:
    """Rebuild a stored (resolved) config, e.g. from a checkpoint.

    Keys this version no longer has are dropped with a warning, so checkpoints
    written before a schema change still load; bad values still raise.
    """
    dropped: list[str] = []
    cleaned = _drop_unknown(Config, data, "", dropped)
    if dropped:
        warnings.warn(f"stored config keys unknown to this version were ignored: {', '.join(dropped)}", stacklevel=2)
    return validated(Config, cleaned)


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"model.depth": 4, ...}``: the dotted keys, as logged to MLflow."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(cfg), "")
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
