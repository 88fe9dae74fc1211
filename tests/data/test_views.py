"""The view switches of the ablation (rows a-c: same view; rows a, b, d, e: no colour)."""

import torch

from siamim.data.geometry import relative_geometry, view2_patch_centres
from siamim.data.views import make_view_pair, spatial_view


def _colour_image(seed: int) -> torch.Tensor:
    """A chromatic uint8 [3, 40, 50] image (so every colour op changes it)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(3, 40, 50, generator=gen) * 255).to(torch.uint8)


def test_same_view_is_an_exact_copy_with_identity_geometry():
    for seed in range(8):
        for colour in (False, True):
            pair = make_view_pair(
                _colour_image(seed), 16, torch.Generator().manual_seed(seed), different_views=False, color_aug=colour
            )
            assert pair.box1 == pair.box2 and pair.flip1 == pair.flip2
            assert torch.equal(pair.view1, pair.view2)
            geo = relative_geometry(
                torch.tensor([pair.box1], dtype=torch.float32),
                torch.tensor([pair.box2], dtype=torch.float32),
                torch.tensor([pair.flip1]),
                torch.tensor([pair.flip2]),
                torch.tensor([float(pair.width)]),
            )
            assert torch.allclose(geo[0, :4], torch.tensor([0.0, 0.0, 1.0, 1.0])) and geo[0, 4] == 0
            rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
            assert torch.allclose(view2_patch_centres(geo, 4)[0], torch.stack([rows, cols], -1).view(-1, 2), atol=1e-5)


def test_no_colour_gives_the_unjittered_crops_and_colour_changes_them():
    changed = 0
    for seed in range(8):
        img = _colour_image(seed)
        plain = make_view_pair(img, 16, torch.Generator().manual_seed(seed), color_aug=False)
        assert torch.equal(plain.view1, spatial_view(img, plain.box1, plain.flip1, 16))
        assert torch.equal(plain.view2, spatial_view(img, plain.box2, plain.flip2, 16))
        jittered = make_view_pair(img, 16, torch.Generator().manual_seed(seed), color_aug=True)
        assert jittered.box1 == plain.box1  # the crop is drawn first, colour after
        changed += not torch.equal(jittered.view1, plain.view1)
    assert changed >= 5  # jitter p=0.8 (the blur at 16 px is often below one grey level)


def test_crops_are_resized_bicubically_as_the_release_does():
    """``spatial_view`` = torchvision's antialiased bicubic resize of the (flipped) image's box."""
    from torchvision.transforms.v2 import functional as TF

    img = _colour_image(0)
    for box, flip, size in (((3, 5, 20, 30), False, 16), ((0, 2, 12, 10), True, 28)):
        src = TF.horizontal_flip(img) if flip else img
        i, j, h, w = box
        want = TF.resize(
            src[:, i : i + h, j : j + w], [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
        )
        assert torch.equal(spatial_view(img, box, flip, size), want)
        bilinear = TF.resize(src[:, i : i + h, j : j + w], [size, size], antialias=True)
        assert not torch.equal(want, bilinear)
