"""Training data pipeline: deterministic per-step batches of view pairs + masks.

Batch composition is a pure function of ``(seed, global step)``: step ``s`` of
epoch ``e = s // steps_per_epoch`` takes slice ``s % steps_per_epoch`` of a
``(seed, e)`` permutation; rank ``r`` of ``R`` takes the ``r``-th of ``R`` equal
parts of that global batch. Each sample's augmentation and mask come from a
generator seeded by ``(seed, epoch, index)``. Hence a run resumes at any step
exactly, and a data-parallel run sees the same images as a single process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from siamim.data.device_views import render_views
from siamim.data.geometry import relative_geometry
from siamim.data.masks import make_mask
from siamim.data.sources import ImageSource
from siamim.data.views import draw_view_params, render_view_pair


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 100_000_007 + index) % (2**63 - 1)


class ViewPairDataset(Dataset):
    """Maps a key ``(epoch, index)`` to one sample: two views (or, ``on_device``, the source image and
    the drawn view parameters), their boxes and view 1's mask."""

    def __init__(self, source: ImageSource, cfg, on_device: bool = False):
        self.source = source
        self.cfg = cfg
        self.on_device = on_device

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        cfg = self.cfg
        gen = torch.Generator().manual_seed(sample_seed(cfg.train.seed, epoch, index))
        image = self.source.image(index)  # uint8 [3, H, W]
        params = draw_view_params(
            image.shape[1],
            image.shape[2],
            cfg.data.img_size,
            gen,
            crop_min=cfg.views.crop_min,
            flip_prob=cfg.views.flip_prob,
            different_views=cfg.views.different_views,
            color_aug=cfg.views.color_aug,
        )
        mask = make_mask(cfg.mask.type, cfg.grid_size, cfg.num_masked, gen, cfg.mask.min_block)
        sample = {
            "mask": mask,
            "box1": torch.tensor(params.box1, dtype=torch.float32),
            "box2": torch.tensor(params.box2, dtype=torch.float32),
            "flip1": torch.tensor(params.flip1),
            "flip2": torch.tensor(params.flip2),
            "width": torch.tensor(float(image.shape[2])),
        }
        if self.on_device:
            sample["image"] = image
            if params.colour1 is not None:
                sample["colour1"], sample["colour2"] = params.colour1.as_tensor(), params.colour2.as_tensor()
        else:
            pair = render_view_pair(image, params, cfg.data.img_size)
            sample["view1"], sample["view2"] = pair.view1, pair.view2
        return sample


def mask_indices(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``[B, L]`` (same masked count per row) -> ``(ids_keep [B, L - M], ids_masked [B, M])``, ascending."""
    return torch.nonzero(~mask)[:, 1].view(mask.shape[0], -1), torch.nonzero(mask)[:, 1].view(mask.shape[0], -1)


class Collate:
    """Stacks samples into a model batch (picklable for DataLoader workers).

    Output keys: ``view1``/``view2`` float ``[B, 3, S, S]`` normalised;
    ``geometry`` ``[B, 6]`` (see :func:`relative_geometry`); ``mask`` bool
    ``[B, L]``; ``ids_keep`` long ``[B, L - num_masked]`` (visible patches,
    ascending); ``ids_masked`` long ``[B, num_masked]`` (masked patches, ascending).

    Samples of ``ViewPairDataset(on_device=True)`` instead give ``image`` uint8
    ``[B, 3, H, W]`` (sources padded to the batch's largest by edge replication),
    ``box1``/``box2``, ``flip1``/``flip2``, ``width`` and ``colour1``/``colour2``
    ``[B, 12]``: :func:`prepare_batch` renders the views from them on the device.
    """

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, samples: list[dict]) -> dict:
        images = [s.pop("image") for s in samples] if "image" in samples[0] else None
        stack = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        mask = stack["mask"]
        # Same count per row, so the visible indices form a dense [B, Lv] tensor.
        ids_keep, ids_masked = mask_indices(mask)
        out = {
            "mask": mask,
            "ids_keep": ids_keep,
            "ids_masked": ids_masked,
            "geometry": relative_geometry(stack["box1"], stack["box2"], stack["flip1"], stack["flip2"], stack["width"]),
        }
        if images is None:
            norm = lambda v: (v.float().div_(255.0) - self.mean) / self.std  # noqa: E731
            out["view1"], out["view2"] = norm(stack["view1"]), norm(stack["view2"])
            return out
        out["image"] = pad_images(images)
        out.update(
            {k: stack[k] for k in ("box1", "box2", "flip1", "flip2", "width", "colour1", "colour2") if k in stack}
        )
        return out


def pad_images(images: list[torch.Tensor]) -> torch.Tensor:
    """uint8 ``[3, H_b, W_b]`` images -> ``[B, 3, max H, max W]``, padded right/bottom by edge replication."""
    height, width = max(x.shape[1] for x in images), max(x.shape[2] for x in images)
    out = []
    for x in images:
        dh, dw = height - x.shape[1], width - x.shape[2]
        if dh or dw:
            x = torch.nn.functional.pad(x[None].float(), (0, dw, 0, dh), mode="replicate")[0].to(torch.uint8)
        out.append(x)
    return torch.stack(out)


def views_on_device(cfg, device: torch.device) -> bool:
    """``data.views_on``: ``device`` / ``cpu``; ``auto`` renders on the device when it is a GPU."""
    if cfg.data.views_on == "auto":
        return device.type == "cuda"
    return cfg.data.views_on == "device"


def prepare_batch(batch: dict, device: torch.device, img_size: int, mean, std) -> dict:
    """Move a collated batch to ``device``; render its views there when it carries source images."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "image" in batch:
        batch = render_views(
            batch, img_size, torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        )
    return batch


@dataclass
class StepBatchSampler:
    """Yields, for steps ``start_step .. total_steps-1``, this rank's list of ``(epoch, index)`` keys."""

    num_samples: int
    global_batch: int
    rank: int
    world_size: int
    seed: int
    start_step: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"train.batch_size={self.global_batch} exceeds the {self.num_samples} training images; "
                "lower train.batch_size or use more data"
            )

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        per_rank = self.global_batch // self.world_size
        epoch, perm = None, None
        for step in range(self.start_step, self.total_steps):
            e, b = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 7919 + e))
            batch = perm[b * self.global_batch : (b + 1) * self.global_batch]
            mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            yield [(e, int(i)) for i in mine]


# Loaders other than the map-style one, by ``data.loader`` name. The platform layer registers them
# (``ray_data``: siamim/orchestration/data/streaming.py, inside Ray Train workers); the core imports no Ray.
LOADERS: dict = {}


def register_loader(name: str, factory) -> None:
    """``factory(source, cfg, rank, world_size, start_step, total_steps)`` -> iterable of collated batches."""
    LOADERS[name] = factory


def build_loader(
    source: ImageSource, cfg, rank: int, world_size: int, start_step: int, total_steps: int, on_device: bool = False
) -> DataLoader:
    """The training DataLoader of one rank, starting at ``start_step``.

    ``on_device``: the loader hands over source images + view parameters; :func:`prepare_batch`
    renders the views on the training device (``data.views_on``).
    """
    if getattr(cfg.data, "loader", "map") != "map":  # e.g. ray_data: views rendered by the stream's CPU tasks
        if cfg.data.loader not in LOADERS:
            raise RuntimeError(
                f"data.loader={cfg.data.loader!r} streams through Ray Data inside Ray Train workers "
                "(jobs/pretrain.py); run it there, or use data.loader=map"
            )
        return LOADERS[cfg.data.loader](source, cfg, rank, world_size, start_step, total_steps)
    sampler = StepBatchSampler(
        len(source), cfg.train.batch_size, rank, world_size, cfg.train.seed, start_step, total_steps
    )
    workers = cfg.data.num_workers
    return DataLoader(
        ViewPairDataset(source, cfg, on_device),
        batch_sampler=sampler,
        collate_fn=Collate(source.mean, source.std),
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
