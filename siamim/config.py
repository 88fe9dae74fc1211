"""One config system: typed dataclasses, YAML presets, dotted overrides.

The same dotted keys (``model.depth=4``) are CLI overrides, Ray Tune
``param_space`` entries and MLflow params. Every ablation switch of the paper
(docs/method.md, ablation rows a-k) is a key here. Validation runs before any
compute: an unknown key or a bad value raises :class:`ConfigError` naming the
key and, for a typo, the closest valid one.

Presets are YAML files under ``configs/`` (``tiny``, ``ablation/i``); a preset may
name a ``_base_`` preset (a path relative to itself, or a preset name) whose
values it overrides key by key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key or value is invalid; the message names it and the fix."""


@dataclass
class DataConfig:
    dataset: Literal["fashion_mnist", "image_folder", "parquet"] = "fashion_mnist"
    # fashion_mnist: None -> Debian's /usr/share/datasets/fashion-mnist (or $SIAMIM_FASHION_MNIST);
    # parquet: a directory or s3://bucket/prefix[?endpoint_override=HOST:PORT&scheme=http] (jobs/prepare_data.py)
    root: str | None = None
    img_size: int = 32
    num_workers: int = 1  # DataLoader worker processes per training process
    train_subset: int | None = None  # use the first N training images (smoke tests)
    views_on: Literal["auto", "cpu", "device"] = "auto"  # where views are rendered; auto: device when on CUDA
    # map: batches a pure function of (seed, step), exact resume. ray_data: Ray Data streams parquet shards
    # (read -> decode + views + mask on the cluster's CPUs -> each Train worker); docs/platform.md
    loader: Literal["map", "ray_data"] = "map"
    stream_tasks: int | None = None  # ray_data: concurrent decode/augment tasks (None: as many as CPUs allow)
    stream_batch: int = 64  # ray_data: images per decode/augment task batch
    shuffle_buffer: int = 1024  # ray_data: rows in each Train worker's seeded local shuffle buffer (0: off)


@dataclass
class ViewsConfig:
    different_views: bool = True  # ablation: False -> view 2 is an exact copy of view 1 (same crop, flip, colour)
    color_aug: bool = True  # ablation: False -> no colour augmentation on either view
    crop_min: float = 0.08  # RandomResizedCrop scale [crop_min, 1]
    flip_prob: float = 0.5


@dataclass
class MaskConfig:
    type: Literal["blockwise", "random"] = "blockwise"
    ratio: float = 0.6  # masked patches = round(ratio * G*G); 118/196 for ViT-B/16 at 224
    min_block: int = 4  # smallest block (patches) of blockwise masking; BEiT uses 16 at 14x14


@dataclass
class ModelConfig:
    patch_size: int = 4
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    decoder_dim: int = 96  # projector output / predictor width / target feature width
    decoder_heads: int = 3
    projector_depth: int = 2
    predictor_depth: int = 2
    norm: Literal["bn", "ln"] = "bn"  # norm inside projector/predictor (ablation column "proj/dec norm")
    target: Literal["feature", "pixel"] = "feature"  # ablation column "target": EMA features or normalised pixels
    heads: Literal["mae_like", "moco_like"] = "mae_like"  # ablation column "proj & dec" (docs/method.md)
    train_patch_embed: bool = False  # False: frozen patch-embedding projection (MoCo v3 trick)
    drop_path: float = 0.0
    timm_name: str = "vit_tiny_patch16_224"  # timm architecture name the exported encoder loads into


@dataclass
class LossConfig:
    type: Literal["unigrad", "l2", "cosine"] = "unigrad"  # l2: MSE to the normalised target; cosine: 2 - 2 cos
    neg_weight: float = 0.02  # lambda of UniGrad
    scope: Literal["dense", "global"] = "dense"  # ablation column "loss": per view-2 token, or one vector per view
    global_pool: Literal["cls", "mean"] = "cls"  # the vector of a global loss: cls token or mean of patch tokens


@dataclass
class OptimConfig:
    blr: float = 6.25e-5  # base lr per 256 images: lr = blr * batch_size / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 40.0
    clip_grad: float | None = 1.0
    ema_m0: float = 0.995  # EMA momentum, cosine from m0 to 1


@dataclass
class TrainConfig:
    epochs: float = 400.0
    batch_size: int = 4096  # global batch (all workers together)
    max_steps: int | None = None  # stop early; schedules still span `epochs`
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA with bf16 support, else fp32
    compile: bool = False  # torch.compile the online branch (not measured on a GPU yet: docs/benchmarks.md)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 10
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end)
    output_dir: str = "runs/default"  # checkpoints of single-process runs
    fail_at_step: int | None = None  # test-only: raise once at this step (fault-tolerance tests)


@dataclass
class EvalConfig:
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_train_subset: int | None = None  # None: all training images as the kNN memory bank
    knn_test_subset: int | None = None  # None: all test images as kNN queries (smoke tests: the first N)
    batch_size: int = 512
    # Evaluation suite (siamim/eval, jobs/evaluate.py; docs/evaluation.md). Checked by siamim.eval.settings.
    seed: int = 0  # seeds every subset, mosaic, corruption and probe of the suite
    device: Literal["auto", "cpu", "cuda"] = "auto"
    train_limit: int | None = None  # class-balanced seeded subset of the train split (quick runs); None: all
    test_limit: int | None = None  # same for the test split; None: all
    lin_steps: int = 2000  # LIN: MAE recipe (BN w/o affine + linear, LARS, warm-up + cosine), step budget
    lin_batch_size: int = 1024
    lin_blr: float = 1.6  # lr = blr * batch / 256 = 6.4 at batch 1024: MAE's LARS step (0.1 * 16384 / 256)
    lin_warmup_steps: int = 200
    fewshot_fraction: float = 0.01  # 1%: 60 images per class on Fashion-MNIST
    fewshot_seeds: int = 5  # number of seeded subsets averaged
    fewshot_lambd: float = 1e-4  # L2 weight of the logistic regression (MSN uses 0.0025 for 1000 classes)
    dense_train_mosaics: int = 4000
    dense_test_mosaics: int = 1000
    dense_epochs: int = 30
    dense_blr: float = 0.01
    longtail_imbalance: float = 100.0  # head/tail image-count ratio
    longtail_rare: int = 3  # number of rarest classes reported as "rare"
    robust_test_limit: int | None = 2000  # test images per corruption x severity; None: the whole test pool
    ft_epochs: float = 10.0  # FT epoch budget
    ft_batch_size: int = 256
    ft_blr: float = 5e-4
    ft_layer_decay: float = 0.65
    ft_weight_decay: float = 0.05
    ft_drop_path: float = 0.1
    ft_smoothing: float = 0.1
    ft_mixup: float = 0.8
    ft_cutmix: float = 1.0
    ft_warmup_epochs: float = 1.0


@dataclass
class RunConfig:
    """Platform settings, read by the Ray/MLflow layer only (never by the core loop)."""

    experiment: str = "siamim"
    name: str | None = None
    storage: str = "runs/ray"  # local path or URI (s3://bucket/prefix?endpoint_override=...)
    num_workers: int = 2
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    keep_checkpoints: int = 2


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def grid_size(self) -> int:
        return self.data.img_size // self.model.patch_size

    @property
    def num_masked(self) -> int:
        return round(self.mask.ratio * self.grid_size**2)


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


# --------------------------------------------------------------------------- conversion
def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_txt = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}={value!r} is not one of {list(args)}{hint_txt}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r} must be a list of {len(args)} values")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} must be true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be an integer")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be a number") from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} must be a string")
    raise ConfigError(f"{key}: unsupported type {hint}")


def _field_hints(obj) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``cfg.<section>.<key>`` from a dotted key, type-checked."""
    parts = dotted.split(".")
    obj = cfg
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        if part not in names:
            raise _unknown(".".join(parts[: depth + 1]), names)
        if depth == len(parts) - 1:
            hint = _field_hints(obj)[part]
            if dataclasses.is_dataclass(getattr(obj, part)):
                if not isinstance(value, dict):
                    raise ConfigError(f"{dotted} is a section; set its keys, e.g. {dotted}.<key>=...")
                for k, v in value.items():
                    set_value(cfg, f"{dotted}.{k}", v)
            else:
                setattr(obj, part, _coerce(dotted, value, hint))
            return
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section")


def _apply_mapping(cfg: Config, mapping: dict, prefix: str = "", dropped: list[str] | None = None) -> None:
    """Apply nested ``mapping``; with ``dropped`` given, unknown keys are collected there instead of raising."""
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        try:
            if isinstance(value, dict):
                _apply_mapping(cfg, value, dotted + ".", dropped)
            else:
                set_value(cfg, dotted, value)
        except ConfigError as err:
            if dropped is None or not str(err).startswith("unknown config key"):
                raise
            dropped.append(dotted)


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


def _preset_names() -> list[str]:
    return sorted(
        str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("_")
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
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: _base_ must be one preset name or path, got {base!r}")
    return _merge(read_preset(base, (*_chain, path)), data)


def load_config(preset: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- YAML preset (with its ``_base_`` chain) <- overrides (``["model.depth=4"]`` or ``{"model.depth": 4}``), validated."""
    cfg = Config()
    if preset is not None:
        _apply_mapping(cfg, read_preset(preset))
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = [parse_override(o) for o in overrides or []]
    for key, value in items:
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    d["optim"]["betas"] = list(d["optim"]["betas"])
    return d


def from_dict(data: dict) -> Config:
    """Rebuild a stored (resolved) config, e.g. from a checkpoint.

    Keys this version no longer has are dropped with a warning, so checkpoints
    written before a schema change still load; bad values still raise.
    """
    cfg = Config()
    dropped: list[str] = []
    _apply_mapping(cfg, data, dropped=dropped)
    if dropped:
        warnings.warn(f"stored config keys unknown to this version were ignored: {', '.join(dropped)}", stacklevel=2)
    validate(cfg)
    return cfg


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


# --------------------------------------------------------------------------- validation
def _check(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {need}")


def validate(cfg: Config) -> None:
    """Range and consistency checks; raises :class:`ConfigError` naming the key."""
    d, m, mk, o, t = cfg.data, cfg.model, cfg.mask, cfg.optim, cfg.train
    _check(d.img_size > 0, "data.img_size", d.img_size, "must be positive")
    _check(
        m.patch_size > 0 and d.img_size % m.patch_size == 0,
        "model.patch_size",
        m.patch_size,
        f"must divide data.img_size={d.img_size}",
    )
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    _check(d.train_subset is None or d.train_subset > 0, "data.train_subset", d.train_subset, "must be positive")
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
    _check(d.stream_tasks is None or d.stream_tasks >= 1, "data.stream_tasks", d.stream_tasks, "must be >= 1 or null")
    _check(d.stream_batch >= 1, "data.stream_batch", d.stream_batch, "must be >= 1")
    _check(d.shuffle_buffer >= 0, "data.shuffle_buffer", d.shuffle_buffer, "must be >= 0")
    _check(0.0 < cfg.views.crop_min <= 1.0, "views.crop_min", cfg.views.crop_min, "must be in (0, 1]")
    _check(0.0 <= cfg.views.flip_prob <= 1.0, "views.flip_prob", cfg.views.flip_prob, "must be in [0, 1]")
    _check(0.0 < mk.ratio < 1.0, "mask.ratio", mk.ratio, "must be in (0, 1)")
    _check(
        0 < cfg.num_masked < cfg.grid_size**2,
        "mask.ratio",
        mk.ratio,
        f"masks {cfg.num_masked} of {cfg.grid_size**2} patches; at least one must be masked and one visible",
    )
    _check(
        1 <= mk.min_block <= cfg.num_masked,
        "mask.min_block",
        mk.min_block,
        f"must be in [1, number of masked patches = {cfg.num_masked}]",
    )
    for key, dim, heads in (
        ("model.num_heads", m.embed_dim, m.num_heads),
        ("model.decoder_heads", m.decoder_dim, m.decoder_heads),
    ):
        _check(heads > 0 and dim % heads == 0, key, heads, f"must divide the width {dim}")
    _check(
        m.decoder_dim % 4 == 0,
        "model.decoder_dim",
        m.decoder_dim,
        "must be divisible by 4 (relative position embedding has 4 sin-cos parts)",
    )
    _check(
        m.embed_dim % 4 == 0, "model.embed_dim", m.embed_dim, "must be divisible by 4 (2-D sin-cos position embedding)"
    )
    for key in ("depth", "projector_depth", "predictor_depth"):
        _check(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "must be >= 1")
    _check(0.0 <= m.drop_path < 1.0, "model.drop_path", m.drop_path, "must be in [0, 1)")
    _check(cfg.loss.neg_weight >= 0.0, "loss.neg_weight", cfg.loss.neg_weight, "must be >= 0")
    _check(
        m.target == "feature" or m.heads == "mae_like",
        "model.target",
        m.target,
        "a pixel target is predicted by the MAE-like decoder; set model.heads=mae_like",
    )
    _check(
        cfg.loss.scope == "dense" or m.target == "feature",
        "loss.scope",
        cfg.loss.scope,
        "a global loss compares pooled features; it needs model.target=feature",
    )
    _check(
        cfg.loss.scope == "dense" or m.heads == "moco_like",
        "loss.scope",
        cfg.loss.scope,
        "the global loss (ablation row k) is built on the MoCo-like heads; set model.heads=moco_like",
    )
    _check(o.blr > 0.0, "optim.blr", o.blr, "must be positive")
    _check(0.0 <= o.min_lr, "optim.min_lr", o.min_lr, "must be >= 0")
    _check(o.weight_decay >= 0.0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", o.betas, "each must be in [0, 1)")
    _check(o.warmup_epochs >= 0.0, "optim.warmup_epochs", o.warmup_epochs, "must be >= 0")
    _check(o.clip_grad is None or o.clip_grad > 0, "optim.clip_grad", o.clip_grad, "must be positive or null")
    _check(0.0 <= o.ema_m0 <= 1.0, "optim.ema_m0", o.ema_m0, "must be in [0, 1]")
    _check(t.epochs > 0, "train.epochs", t.epochs, "must be positive")
    _check(t.batch_size > 1, "train.batch_size", t.batch_size, "must be > 1 (BatchNorm and UniGrad need a batch)")
    _check(t.max_steps is None or t.max_steps > 0, "train.max_steps", t.max_steps, "must be positive or null")
    _check(t.log_every > 0, "train.log_every", t.log_every, "must be positive")
    _check(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every, "must be >= 0")
    _check(cfg.eval.knn_k > 0, "eval.knn_k", cfg.eval.knn_k, "must be positive")
    for key in ("knn_train_subset", "knn_test_subset"):
        value = getattr(cfg.eval, key)
        _check(
            value is None or value >= cfg.eval.knn_k,
            f"eval.{key}",
            value,
            f"must be null or at least eval.knn_k={cfg.eval.knn_k}",
        )
    _check(cfg.eval.knn_temperature > 0, "eval.knn_temperature", cfg.eval.knn_temperature, "must be positive")
    r = cfg.run
    _check(r.num_workers >= 1, "run.num_workers", r.num_workers, "must be >= 1")
    _check(
        t.batch_size % r.num_workers == 0,
        "train.batch_size",
        t.batch_size,
        f"must be divisible by run.num_workers={r.num_workers} (it is the global batch)",
    )
    _check(r.max_failures >= -1, "run.max_failures", r.max_failures, "must be >= -1 (-1: retry forever)")
    _check(r.keep_checkpoints >= 1, "run.keep_checkpoints", r.keep_checkpoints, "must be >= 1")
