"""Position embeddings: learned absolute, 1D sinusoidal (positions or diffusion timesteps) and MAE-style 2D sin-cos.

Sinusoidal layout is ``[sin(p * w_0..w_{h-1}) | cos(p * w_0..w_{h-1})]`` with ``w_i = max_period ** (-i / h)`` and
h = dim // 2: the frequencies of Vaswani et al. 2017, concatenated rather than interleaved (as in MAE, DDPM and
diffusers' ``get_timestep_embedding``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LearnedPositionalEmbedding(nn.Module):
    """Learned absolute position embeddings for up to ``num_positions`` tokens, added to (B, N, dim) inputs."""

    def __init__(self, num_positions: int, dim: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        if num_positions < 1 or dim < 1:
            raise ValueError(f"num_positions and dim must be positive, got {num_positions} and {dim}")
        self.num_positions = num_positions
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(num_positions, dim))
        nn.init.trunc_normal_(self.weight, std=init_std, a=-2 * init_std, b=2 * init_std)

    def embedding(self, length: int, *, offset: int = 0) -> Tensor:
        """Embeddings of positions offset .. offset + length - 1: (length, dim)."""
        if offset < 0 or offset + length > self.num_positions:
            raise ValueError(
                f"positions {offset}..{offset + length - 1} exceed the {self.num_positions} learned positions; "
                f"shorten the sequence or build the embedding with num_positions >= {offset + length}"
            )
        return self.weight[offset : offset + length]

    def forward(self, x: Tensor, *, offset: int = 0) -> Tensor:
        """x (B, N, dim) plus the embeddings of positions offset .. offset + N - 1."""
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (B, N, {self.dim}), got {tuple(x.shape)}")
        return x + self.embedding(x.shape[1], offset=offset).to(x.dtype)  # (B, N, dim)


def sinusoidal_embedding(positions: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer or float positions (..., ) -> (..., dim), float32.

    Works for token positions and for diffusion timesteps (float t allowed). An odd dim gets a zero last column.
    """
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)  # (h,)
    angles = positions.float()[..., None] * freqs  # (..., h)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (..., 2h)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(*emb.shape[:-1], 1)], dim=-1)  # (..., dim)
    return emb


def sincos_2d_embedding(grid_h: int, grid_w: int, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """MAE-style fixed 2D sin-cos embedding of a grid_h x grid_w patch grid: (grid_h * grid_w, dim), float32.

    Rows are in raster order (index = row * grid_w + col). As in MAE's ``get_2d_sincos_pos_embed``, the first
    dim / 2 channels are the 1D embedding of the column index and the last dim / 2 that of the row index.
    """
    if dim % 4 != 0:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4 (sin and cos per axis), got {dim}")
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"grid size must be positive, got {grid_h} x {grid_w}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")  # 2 x (H, W)
    emb_col = sinusoidal_embedding(cols.reshape(-1), dim // 2, max_period=max_period)  # (H*W, dim/2)
    emb_row = sinusoidal_embedding(rows.reshape(-1), dim // 2, max_period=max_period)  # (H*W, dim/2)
    return torch.cat([emb_col, emb_row], dim=1)  # (H*W, dim)
