"""View-pair throughput: the per-sample CPU path vs the batched device path.

    python benchmarks/views.py                       # 224 px from 500x375 sources, and the tiny preset's 28 px
    python benchmarks/views.py --loader-workers 2    # also the CPU path through N DataLoader workers
    python benchmarks/views.py --smoke               # a few pairs (CI: the script runs)

Both paths draw the same parameters (``draw_view_params``, full colour recipe of
both views). "Per core" figures run with one intra-op thread. The device path
is timed on CPU tensors here and on CUDA when a GPU is visible (``--device``).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset

from siamim.data.device_views import render_views
from siamim.data.pipeline import Collate
from siamim.data.views import draw_view_params, render_view_pair

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sources(count: int, height: int, width: int) -> torch.Tensor:
    """Natural-looking uint8 images ``[count, 3, H, W]`` (smooth colour fields plus texture)."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, max(2, height // 16), max(2, width // 16), generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noise = torch.rand(count, 3, height, width, generator=gen) * 0.1
    return ((smooth + noise).clamp(0, 1) * 255).to(torch.uint8)


def draw(images: torch.Tensor, size: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [draw_view_params(img.shape[1], img.shape[2], size, gen) for img in images]


class _PairSet(Dataset):
    def __init__(self, images: torch.Tensor, size: int):
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(index)
        img = self.images[index]
        pair = render_view_pair(img, draw_view_params(img.shape[1], img.shape[2], self.size, gen), self.size)
        return {"view1": pair.view1, "view2": pair.view2}


def cpu_per_sample(images: torch.Tensor, size: int) -> float:
    """Pairs/s of ``render_view_pair`` one image at a time, one thread."""
    params = draw(images, size, 1)
    start = time.perf_counter()
    for img, p in zip(images, params, strict=True):
        render_view_pair(img, p, size)
    return len(images) / (time.perf_counter() - start)


def cpu_loader(images: torch.Tensor, size: int, workers: int, batch: int) -> float:
    """Pairs/s of the per-sample path through a DataLoader with ``workers`` processes."""
    loader = DataLoader(_PairSet(images, size), batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(b["view1"]) for b in loader)
    return count / (time.perf_counter() - start)


def device_batched(
    images: torch.Tensor, size: int, device: torch.device, batch: int, repeats: int, crops_only: bool = False
) -> float:
    """Pairs/s of :func:`render_views` on ``device`` (uint8 sources already there), batches of ``batch``."""
    params = draw(images[:batch], size, 2)
    samples = [
        {
            "mask": torch.zeros(4, dtype=torch.bool),
            "box1": torch.tensor(p.box1, dtype=torch.float32),
            "box2": torch.tensor(p.box2, dtype=torch.float32),
            "flip1": torch.tensor(p.flip1),
            "flip2": torch.tensor(p.flip2),
            "width": torch.tensor(float(images.shape[-1])),
            "colour1": p.colour1.as_tensor(),
            "colour2": p.colour2.as_tensor(),
            "image": img,
        }
        for p, img in zip(params, images[:batch], strict=True)
    ]
    for s in samples:
        s["mask"][:2] = True
    cpu_batch = Collate(MEAN, STD)(samples)
    dev_batch = {k: v.to(device) for k, v in cpu_batch.items()}
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    if crops_only:  # the spatial part alone: where the time goes
        dev_batch = {k: v for k, v in dev_batch.items() if not k.startswith("colour")}
    render_views(dev_batch, size, mean, std)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        render_views(dev_batch, size, mean, std)
    sync()
    return repeats * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pairs", type=int, default=64, help="pairs per CPU measurement")
    parser.add_argument("--batch", type=int, default=64, help="device-path batch")
    parser.add_argument("--loader-workers", type=int, nargs="*", default=[], help="DataLoader worker counts to time")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, just check that everything runs")
    args = parser.parse_args()
    pairs, batch, repeats = (4, 4, 1) if args.smoke else (args.pairs, args.batch, 3)
    device = torch.device(args.device)
    cases = [("224 px from 500x375", 375, 500, 224), ("tiny: 28 px from 28x28", 28, 28, 28)]
    print(
        f"device path on {device}; per-core figures with torch.set_num_threads(1); {torch.get_num_threads()} "
        "threads otherwise"
    )
    for name, height, width, size in cases:
        images = sources(max(pairs, batch), height, width)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        per_sample = cpu_per_sample(images[:pairs], size)
        batched_1 = device_batched(images, size, torch.device("cpu"), batch, repeats)
        crops_1 = device_batched(images, size, torch.device("cpu"), batch, repeats, crops_only=True)
        torch.set_num_threads(threads)
        line = (
            f"{name}: CPU per-sample {per_sample:8.1f} pairs/s/core | batched on CPU {batched_1:8.1f} "
            f"pairs/s/core ({batched_1 / per_sample:4.2f}x; crops alone {crops_1:8.1f})"
        )
        if device.type != "cpu":
            line += f" | batched on {device} {device_batched(images, size, device, batch, repeats * 10):10.1f} pairs/s"
        print(line, flush=True)
        for workers in args.loader_workers:
            rate = cpu_loader(images[:pairs], size, workers, max(1, pairs // 8))
            print(f"{name}: CPU per-sample through {workers} DataLoader workers {rate:8.1f} pairs/s", flush=True)


if __name__ == "__main__":
    main()
