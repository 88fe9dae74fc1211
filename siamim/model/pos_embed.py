"""Fixed sin-cos position embeddings: 2-D grid (MAE style) and continuous 1-D."""

from __future__ import annotations

import torch


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos embedding of continuous positions.

    Args:
        pos: ``[...]`` float positions (any real values).
        dim: even output width; half sines, half cosines.
    Returns:
        ``[..., dim]`` float32: ``[sin(pos * w_k), cos(pos * w_k)]``, ``w_k = 10000^(-k / (dim/2))``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = pos.to(torch.float64).unsqueeze(-1) * omega  # [..., dim/2]
    return torch.cat([out.sin(), out.cos()], dim=-1).float()


def sincos_2d_grid(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """2-D sin-cos embedding of a ``grid x grid`` patch grid (row-major).

    Returns:
        ``[1 + grid*grid, dim]`` with a zero row for the cls token first when
        ``cls_token``, else ``[grid*grid, dim]``. First half encodes the row,
        second half the column.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos width must be divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([sincos_1d(rows.flatten().float(), dim // 2), sincos_1d(cols.flatten().float(), dim // 2)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb
