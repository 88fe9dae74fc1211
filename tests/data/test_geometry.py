"""The public geometry function against pixels: view-2 patch centres land on the
view-1 locations that show the same image content."""

import torch
import torch.nn.functional as F

from siamim.data.geometry import relative_geometry, view2_patch_centres
from siamim.data.views import make_view_pair, sample_crop, spatial_view

H = W = 96
SIZE, PATCH = 64, 8
GRID = SIZE // PATCH


def coordinate_image() -> torch.Tensor:
    """float [3, H, W]: channel 0 = row, channel 1 = column of each pixel centre (original image)."""
    rows, cols = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return torch.stack([rows, cols, torch.zeros_like(rows)]).float()


def check_pair(v1, v2, box1, box2, flip1, flip2, min_points=1):
    geo = relative_geometry(
        torch.tensor([box1], dtype=torch.float32),
        torch.tensor([box2], dtype=torch.float32),
        torch.tensor([flip1]),
        torch.tensor([flip2]),
        torch.tensor([float(W)]),
    )
    centres = view2_patch_centres(geo, GRID)[0]  # [G*G, 2] in view-1 patch units
    # Encoded coordinate at each view-2 patch centre: mean of the patch's 2x2 central pixels.
    c = PATCH // 2
    v2_centres = v2.unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH)[:2, :, :, c - 1 : c + 1, c - 1 : c + 1]
    v2_centres = v2_centres.mean(dim=(-1, -2)).permute(1, 2, 0).reshape(-1, 2)  # [G*G, 2]
    # Sample view 1 at the mapped positions (pixel coords = (patch coord + 0.5) * PATCH).
    pix = (centres + 0.5) * PATCH  # [G*G, 2] (row, col)
    margin = 2.0
    inside = ((pix > margin) & (pix < SIZE - margin)).all(dim=1)
    norm = pix / SIZE * 2 - 1
    grid = norm.flip(-1).view(1, 1, -1, 2)  # grid_sample wants (x, y)
    v1_vals = F.grid_sample(v1[None, :2], grid, mode="bilinear", align_corners=False)[0, :, 0].T  # [G*G, 2]
    err = (v1_vals - v2_centres).abs()[inside]
    assert int(inside.sum()) >= min_points
    # Within resampling tolerance: a fraction of one source pixel.
    assert err.max().item() < 0.75, (box1, box2, flip1, flip2, err.max().item())
    return int(inside.sum())


def test_every_flip_combination_and_scale_change():
    img = coordinate_image()
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for flip1 in (False, True):
        for flip2 in (False, True):
            for _ in range(10):
                box1 = sample_crop(H, W, (0.3, 1.0), gen)
                box2 = sample_crop(H, W, (0.3, 1.0), gen)
                v1, v2 = spatial_view(img, box1, flip1, SIZE), spatial_view(img, box2, flip2, SIZE)
                checked += check_pair(v1, v2, box1, box2, flip1, flip2, min_points=0)
    assert checked > 500  # most pairs overlap: the check ran on many points


def test_make_view_pair_geometry():
    img = coordinate_image()
    for seed in range(10):
        pair = make_view_pair(img, SIZE, torch.Generator().manual_seed(seed), crop_min=0.3, color_aug=False)
        check_pair(pair.view1, pair.view2, pair.box1, pair.box2, pair.flip1, pair.flip2, min_points=0)


def test_mapping_detects_a_wrong_flip():
    """The check is sensitive: telling the geometry the wrong flip breaks it."""
    img = coordinate_image()
    box1, box2 = (10, 5, 70, 60), (20, 30, 60, 50)
    v1, v2 = spatial_view(img, box1, False, SIZE), spatial_view(img, box2, True, SIZE)
    check_pair(v1, v2, box1, box2, False, True, min_points=10)
    try:
        check_pair(v1, v2, box1, box2, False, False, min_points=0)
    except AssertionError:
        return
    raise AssertionError("a wrong flip flag went unnoticed")


def test_identity_geometry_maps_to_own_grid():
    box = torch.tensor([[3.0, 7.0, 20.0, 20.0]])
    geo = relative_geometry(box, box, torch.tensor([True]), torch.tensor([True]), torch.tensor([28.0]))
    centres = view2_patch_centres(geo, 4)[0]
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    assert torch.allclose(centres, torch.stack([rows, cols], -1).view(-1, 2), atol=1e-5)
    assert centres.shape == (16, 2)


def test_hue_skip_on_grey_images_is_exact():
    """views.colour_view skips hue rotation on R=G=B images because it is the identity there."""
    from torchvision.transforms.v2 import functional as TF

    from siamim.data.sources import build_source

    src = build_source("fashion_mnist", None, "train")
    for i in range(20):
        x = TF.resize(src.image(i), [28, 28], antialias=True)
        assert torch.equal(TF.adjust_hue(x, 0.1 - 0.01 * i), x)
