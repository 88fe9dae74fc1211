"""Relative geometry of view 2 inside view 1 (docs/method.md, "Views and geometry").

Crop boxes are ``(i, j, h, w)`` = (top, left, height, width) in pixels of the
image *after* that view's horizontal flip; ``W`` is the full image width.
Everything here is a pure function of crop parameters, so the CPU collate path
and a future GPU view generator share it.
"""

from __future__ import annotations

import torch


def relative_geometry(
    box1: torch.Tensor, box2: torch.Tensor, flip1: torch.Tensor, flip2: torch.Tensor, width: torch.Tensor
) -> torch.Tensor:
    """Geometry of view 2 relative to view 1.

    Args:
        box1, box2: float ``[B, 4]`` crop boxes ``(i, j, h, w)``.
        flip1, flip2: bool ``[B]`` horizontal flips of the views.
        width: float ``[B]`` full-image widths ``W``.
    Returns:
        float32 ``[B, 6]``: ``(di, dj, dh, dw, rel_flip, flip_dj)`` with
        ``di=(i2-i1)/h1``, ``dj=(j2-j1)/w1``, ``dh=h2/h1``, ``dw=w2/w1``,
        ``rel_flip=flip1 xor flip2`` (0/1) and ``flip_dj=(W-j1-j2)/w1``.
    """
    i1, j1, h1, w1 = box1.double().unbind(-1)
    i2, j2, h2, w2 = box2.double().unbind(-1)
    rel_flip = (flip1.bool() ^ flip2.bool()).double()
    geo = torch.stack(
        [(i2 - i1) / h1, (j2 - j1) / w1, h2 / h1, w2 / w1, rel_flip, (width.double() - j1 - j2) / w1], dim=-1
    )
    return geo.float()


def view2_patch_centres(geometry: torch.Tensor, grid: int) -> torch.Tensor:
    """Centre of every view-2 patch in view-1 patch coordinates.

    Patch ``(r, c)`` of view 2 (row-major index ``r*G + c``) lies at row
    ``dh*(r+0.5) + di*G - 0.5`` and column ``dw*(c+0.5) + dj*G - 0.5``, or, when
    ``rel_flip``, column ``-dw*(c+0.5) + flip_dj*G - 0.5``. In these units view-1
    patch ``(a, b)`` has its centre at ``(a, b)``; values outside ``[-0.5, G-0.5]``
    fall outside view 1, which is allowed.

    Args:
        geometry: ``[B, 6]`` from :func:`relative_geometry`.
        grid: ``G``, patches per side (both views share it).
    Returns:
        float32 ``[B, G*G, 2]`` of ``(row, col)``.
    """
    di, dj, dh, dw, rel_flip, flip_dj = geometry.float().unbind(-1)  # each [B]
    idx = torch.arange(grid, dtype=torch.float32, device=geometry.device) + 0.5  # [G]
    rows = dh[:, None] * idx + di[:, None] * grid - 0.5  # [B, G]
    cols_plain = dw[:, None] * idx + dj[:, None] * grid - 0.5
    cols_flip = -dw[:, None] * idx + flip_dj[:, None] * grid - 0.5
    cols = torch.where(rel_flip[:, None] > 0.5, cols_flip, cols_plain)  # [B, G]
    rr = rows[:, :, None].expand(-1, grid, grid)  # [B, G(r), G(c)]
    cc = cols[:, None, :].expand(-1, grid, grid)
    return torch.stack([rr, cc], dim=-1).reshape(geometry.shape[0], grid * grid, 2)
