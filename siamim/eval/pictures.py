"""Feature pictures of any representation: PCA maps, cross-view correspondence, cls attention (PNG images).

From a fixed, seeded set of test images (:func:`picture_indices`) and seeded view pairs
(:func:`view_pairs`, the training crops and flips), :func:`make_pictures` draws

* ``pca``: row 1 the images, row 2 the first three principal components of the patch
  features as RGB, background (first component <= 0) black (:func:`siamim.eval.feature_maps.pca_maps`);
* ``correspondence``: per pair, view 1, a colour key of view-1 positions, view 2, each view-2
  patch coloured by its **true** position in view 1 (geometry; grey: outside view 1) and by its
  **matched** position (most similar view-1 feature), and the fraction matched within one patch;
* ``attention`` (encoders only): per image, the image and the cls token's attention over the
  patches in the last block, one map per head.

Small images are upsampled for display (nearest neighbour, to ``display`` pixels a tile); the
code is size-agnostic. Core only: torch, numpy, PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from siamim.data.geometry import relative_geometry
from siamim.data.views import make_view_pair
from siamim.eval.feature_maps import cls_attention, correspondence, correspondence_score, pca_maps

GAP = 4  # pixels between tiles


def picture_indices(num_images: int, count: int, seed: int) -> list[int]:
    """``count`` distinct image indices of a split of ``num_images``, drawn by ``numpy.random.default_rng(seed)``."""
    return sorted(np.random.default_rng(seed).choice(num_images, size=min(count, num_images), replace=False).tolist())


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> float ``[B, 3, S, S]`` normalised by the dataset's statistics."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


def view_pairs(source, indices, img_size: int, seed: int, crop_min: float, flip_prob: float, color_aug: bool):
    """Seeded augmented pairs of ``source``'s images ``indices``.

    Returns:
        ``(view1 uint8 [B, 3, S, S], view2 uint8 [B, 3, S, S], geometry [B, 6])``.
    """
    gen = torch.Generator().manual_seed(seed)
    pairs = [
        make_view_pair(source.image(int(i)), img_size, gen, crop_min=crop_min, flip_prob=flip_prob, color_aug=color_aug)
        for i in indices
    ]
    geometry = relative_geometry(
        torch.tensor([p.box1 for p in pairs], dtype=torch.float32),
        torch.tensor([p.box2 for p in pairs], dtype=torch.float32),
        torch.tensor([p.flip1 for p in pairs]),
        torch.tensor([p.flip2 for p in pairs]),
        torch.tensor([float(p.width) for p in pairs]),
    )
    return torch.stack([p.view1 for p in pairs]), torch.stack([p.view2 for p in pairs]), geometry


@torch.no_grad()
def patch_tokens(rep, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``rep(x, "tokens")`` over normalised ``images [B, 3, S, S]`` in batches -> float CPU ``[B, L, D]``."""
    device = next(iter(rep.encoder.parameters())).device if getattr(rep, "encoder", None) is not None else "cpu"
    out = [rep(images[i : i + batch].to(device), "tokens").float().cpu() for i in range(0, len(images), batch)]
    return torch.cat(out)


# --------------------------------------------------------------------------- drawing
def _tile(array: np.ndarray, size: int) -> Image.Image:
    """``[h, w, 3]`` float in [0, 1] or uint8 -> an RGB tile of ``size x size`` pixels (nearest neighbour)."""
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((size, size), Image.NEAREST)


def _image_array(image_u8: torch.Tensor) -> np.ndarray:
    return image_u8.permute(1, 2, 0).numpy()


def _sheet(rows: list[list[Image.Image]], size: int, captions: list[str] | None = None) -> Image.Image:
    """Tiles in rows (each ``size`` square), one optional caption line above each row."""
    cap = 14 if captions else 0
    width = max(len(r) for r in rows) * (size + GAP) + GAP
    sheet = Image.new("RGB", (width, len(rows) * (size + GAP + cap) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        top = GAP + r * (size + GAP + cap)
        if captions:
            draw.text((GAP, top), captions[r], fill="black")
        for c, tile in enumerate(row):
            sheet.paste(tile, (GAP + c * (size + GAP), top + cap))
    return sheet


def _position_colours(pos: torch.Tensor, grid: int) -> np.ndarray:
    """View-1 positions ``[..., 2]`` (patch units) -> RGB in [0, 1]: red = row, green = column, blue 0.5."""
    unit = (pos.float() + 0.5) / grid
    rgb = torch.stack([unit[..., 0], unit[..., 1], torch.full_like(unit[..., 0], 0.5)], dim=-1)
    return rgb.clamp(0, 1).numpy()


def _heat(values: torch.Tensor) -> np.ndarray:
    """``[h, w]`` -> RGB in [0, 1] (min-max scaled; dark blue -> yellow)."""
    v = (values - values.min()) / (values.max() - values.min()).clamp(min=1e-12)
    return torch.stack([v, v**0.5 * 0.9, (1 - v) * 0.6], dim=-1).numpy()


def pca_picture(images: torch.Tensor, rgb: torch.Tensor, size: int) -> Image.Image:
    """Images ``uint8 [N, 3, S, S]`` above their PCA maps ``[N, G, G, 3]``."""
    top = [_tile(_image_array(im), size) for im in images]
    return _sheet([top, [_tile(m.numpy(), size) for m in rgb]], size, ["images", "PCA of patch features (RGB = PC1-3)"])


def correspondence_picture(view1, view2, result: dict, grid: int, size: int, count: int) -> Image.Image:
    """Per pair: view 1, its position key, view 2, true and matched positions of view 2's patches."""
    rows, captions = [], []
    centres = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).float()
    key = _tile(_position_colours(centres, grid), size)
    for b in range(min(count, len(view1))):
        inside = result["inside"][b].reshape(grid, grid, 1).numpy()
        true = np.where(inside, _position_colours(result["true"][b].reshape(grid, grid, 2), grid), 0.5)
        match = _position_colours(result["match"][b].reshape(grid, grid, 2), grid)
        hits = int(result["hit"][b].sum())
        rows.append(
            [
                _tile(_image_array(view1[b]), size),
                key,
                _tile(_image_array(view2[b]), size),
                _tile(true, size),
                _tile(match, size),
            ]
        )
        captions.append(f"view1 | key | view2 | true | matched: {hits}/{int(result['inside'][b].sum())} within 1 patch")
    return _sheet(rows, size, captions)


def attention_picture(images: torch.Tensor, attn: torch.Tensor, grid: int, size: int) -> Image.Image:
    """Per image: the image and its last-block cls attention ``[N, H, L]``, one tile per head."""
    rows = [
        [_tile(_image_array(im), size)] + [_tile(_heat(a.reshape(grid, grid)), size) for a in heads]
        for im, heads in zip(images, attn, strict=True)
    ]
    return _sheet(rows, size, [f"image | cls attention, last block, heads 1-{attn.shape[1]}"] + [""] * (len(rows) - 1))


def make_pictures(
    rep, cfg, source, seed: int = 0, count: int = 6, pairs: int = 4, display: int = 112
) -> tuple[dict[str, Image.Image], dict[str, float]]:
    """The pictures of representation ``rep`` on ``source``'s images; ``(images by name, numbers)``.

    ``rep``: an :class:`~siamim.eval.representation.EncoderRepresentation` or the pixel baseline
    (no attention picture then). Numbers: ``correspondence`` and ``correspondence_chance``
    (fractions, over the drawn pairs).
    """
    size = cfg.data.img_size
    grid = size // cfg.model.patch_size
    tile = max(size, display // size * size) if size < display else size
    indices = picture_indices(len(source), count, seed)
    images = torch.stack([_resize(source.image(i), size) for i in indices])  # uint8 [N, 3, S, S]
    feats = patch_tokens(rep, normalise(images, source.mean, source.std))  # [N, L, D]
    rgb, _ = pca_maps(feats, grid)
    out = {"pca": pca_picture(images, rgb, tile)}
    v1, v2, geometry = view_pairs(
        source, indices[:pairs], size, seed, max(cfg.views.crop_min, 0.35), cfg.views.flip_prob, cfg.views.color_aug
    )
    result = correspondence(
        patch_tokens(rep, normalise(v1, source.mean, source.std)),
        patch_tokens(rep, normalise(v2, source.mean, source.std)),
        geometry,
        grid,
    )
    score, chance, _ = correspondence_score(result)
    out["correspondence"] = correspondence_picture(v1, v2, result, grid, tile, pairs)
    if getattr(rep, "encoder", None) is not None:
        device = next(iter(rep.encoder.parameters())).device
        attn = cls_attention(rep.encoder, normalise(images, source.mean, source.std).to(device)).cpu()
        out["attention"] = attention_picture(images, attn, grid, tile)
    return out, {"correspondence": score, "correspondence_chance": chance}


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> uint8 ``[3, size, size]`` (antialiased, as the evaluation image sets)."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    import torch.nn.functional as F

    x = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def write_pictures(pictures: dict[str, Image.Image], directory: str | Path) -> list[Path]:
    """Save each picture as ``<directory>/<name>.png``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in pictures.items():
        path = directory / f"{name}.png"
        image.save(path)
        paths.append(path)
    return paths
