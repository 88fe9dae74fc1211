"""The batched device view path has the CPU path's semantics (checked here on CPU tensors)."""

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from siamim.config import load_config
from siamim.data import device_views as dv
from siamim.data.pipeline import Collate, ViewPairDataset, prepare_batch
from siamim.data.sources import ArraySource
from siamim.data.views import VIEW1_COLOUR, VIEW2_COLOUR, draw_colour, sample_crop, spatial_view
from tests.data.test_geometry import GRID, SIZE, check_pair, coordinate_image

B = 6


def _images(seed=0, size=24) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(B, 3, 6, 6, generator=gen)  # smooth colourful images (upsampled noise)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def test_each_jitter_op_equals_torchvision_per_image():
    x = _images()
    gen = torch.Generator().manual_seed(1)
    cases = {
        "brightness": (dv.adjust_brightness, torch.rand(B, generator=gen) * 0.8 + 0.6),
        "contrast": (dv.adjust_contrast, torch.rand(B, generator=gen) * 0.8 + 0.6),
        "saturation": (dv.adjust_saturation, torch.rand(B, generator=gen) * 0.4 + 0.8),
        "hue": (dv.adjust_hue, torch.rand(B, generator=gen) * 0.2 - 0.1),
    }
    for name, (fn, factors) in cases.items():
        got = fn(x, factors)
        want = torch.stack([getattr(TF, f"adjust_{name}")(x[b], float(factors[b])) for b in range(B)])
        assert torch.allclose(got, want, atol=1e-5), name
        assert not torch.allclose(got, x, atol=1e-3), name  # the op did something


def test_blur_with_per_sample_sigma_equals_torchvision():
    x = _images(size=32)
    sigmas = torch.tensor([0.0, 0.3, 0.7, 1.0, 1.6, 2.0])
    got = dv.gaussian_blur(x, sigmas, dv.blur_kernel_size(2.0))
    for b in range(B):
        s = float(sigmas[b])
        want = x[b] if s == 0 else TF.gaussian_blur(x[b], [dv.blur_kernel_size(s)] * 2, [s, s])
        assert torch.allclose(got[b], want, atol=1e-5), s


def test_colour_pipeline_equals_the_per_image_pipeline():
    """Whole recipes (random op order, gray, blur, solarize) from the same draws as the CPU path."""
    from siamim.data.views import apply_colour

    x = _images(seed=3, size=32)
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        params = [draw_colour(VIEW2_COLOUR if b % 2 else VIEW1_COLOUR, gen, 224) for b in range(B)]
        got = dv.apply_colour_batch(x, torch.stack([p.as_tensor() for p in params]), dv.max_blur_kernel(224))
        want = torch.stack([apply_colour(x[b], params[b]) for b in range(B)])
        assert torch.allclose(got, want, atol=1e-4), seed


def test_crops_equal_the_cpu_crops():
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(B, 3, 10, 14, generator=gen)  # natural-image-like: smooth at the pixel scale
    src = (F.interpolate(coarse, size=(40, 56), mode="bicubic", align_corners=False).clamp(0, 1) * 255).round()
    for size in (64, 16):  # upscaling and downscaling (antialiased bicubic): the same weights as torchvision
        boxes = torch.tensor([sample_crop(40, 56, (0.2, 1.0), gen) for _ in range(B)], dtype=torch.float32)
        flips = torch.tensor([b % 2 == 0 for b in range(B)])
        got = dv.crop_resize_flip(src / 255, boxes, flips, torch.full((B,), 56.0), size)
        want = torch.stack(
            [spatial_view(src[b] / 255, tuple(int(v) for v in boxes[b]), bool(flips[b]), size) for b in range(B)]
        )
        assert (got - want).abs().max() < 1e-5, size  # measured 2.4e-7 (64) and 4.8e-7 (16)
        bilinear = torch.stack(
            [TF.resized_crop(src[b] / 255, *[int(v) for v in boxes[b]], [size, size], antialias=True) for b in range(B)]
        )
        assert (got[1::2] - bilinear[1::2]).abs().max() > 1e-3, size  # bicubic, not the bilinear filter


def test_geometry_holds_on_the_device_path():
    """The coordinate-encoding image: view-2 patch centres land where view 1 shows the same pixels."""
    img = coordinate_image()  # [3, H, W] float
    gen = torch.Generator().manual_seed(5)
    for flip1 in (False, True):
        for flip2 in (False, True):
            for _ in range(5):
                box1, box2 = sample_crop(96, 96, (0.3, 1.0), gen), sample_crop(96, 96, (0.3, 1.0), gen)
                rendered = []
                for box, flip in ((box1, flip1), (box2, flip2)):
                    rendered.append(
                        dv.crop_resize_flip(
                            img[None],
                            torch.tensor([box], dtype=torch.float32),
                            torch.tensor([flip]),
                            torch.tensor([96.0]),
                            SIZE,
                        )[0]
                    )
                check_pair(rendered[0], rendered[1], box1, box2, flip1, flip2, min_points=0)
    assert GRID == SIZE // 8


def _batch(cfg, on_device: bool, source) -> dict:
    ds = ViewPairDataset(source, cfg, on_device=on_device)
    return Collate(source.mean, source.std)([ds[(0, i)] for i in range(8)])


def test_device_batches_match_cpu_batches_from_the_same_draws():
    gen = torch.Generator().manual_seed(0)
    small = torch.nn.functional.interpolate(torch.rand(8, 3, 5, 7, generator=gen), size=(30, 42), mode="bilinear")
    images = (small * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    source = ArraySource(images, torch.zeros(8).long().numpy(), ["x"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for overrides in ([], ["views.different_views=false"], ["views.color_aug=false"]):
        cfg = load_config("tiny", ["data.img_size=32", "model.patch_size=4", *overrides])
        cpu = _batch(cfg, False, source)
        dev = prepare_batch(_batch(cfg, True, source), torch.device("cpu"), 32, source.mean, source.std)
        assert set(dev) == set(cpu)
        for key in ("mask", "ids_keep", "ids_masked", "geometry"):
            assert torch.equal(dev[key], cpu[key]), key
        for key in ("view1", "view2"):
            # The CPU path rounds to uint8 after every op; in [0, 1] units the difference stays small
            # (measured: mean <= 0.0048, max <= 0.022 with colour; mean 0.0012, max 0.0039 without).
            err = ((dev[key] - cpu[key]) * 0.25).abs()
            assert err.mean() < 0.008 and err.max() < 0.05, (overrides, key, err.mean(), err.max())
        if overrides == ["views.different_views=false"]:
            assert torch.equal(dev["view1"], dev["view2"])


def test_training_with_device_views_learns_like_the_cpu_path(small_cfg):
    """``data.views_on=device`` on CPU: same batches up to rounding, so a similar loss curve."""
    from siamim.train.loop import pretrain

    curves = {}
    for where in ("cpu", "device"):
        cfg = small_cfg(
            f"data.views_on={where}",
            "data.train_subset=64",
            "train.max_steps=16",
            "train.epochs=8",
            "optim.warmup_epochs=1",
            "optim.blr=1e-3",
        )
        curves[where] = []
        pretrain(cfg, reporter=lambda m, out=curves[where]: out.append(m["loss"]), verbose=False)
    cpu, dev = curves["cpu"], curves["device"]
    assert sum(dev[-4:]) < 0.9 * sum(dev[:4])  # it learns
    assert abs(dev[0] - cpu[0]) < 0.02 * cpu[0]  # same first batch up to uint8 rounding (same init)
