"""Attention-augmented convolution (Bello et al. 2019, arXiv 1904.09925).

The output concatenates a k x k convolution (``out_channels - dv`` channels) with multi-head self-attention over
all positions of the feature map (``dv`` channels). Queries, keys and values come from one 1 x 1 convolution; each
head adds 2D relative position logits to its content logits,

    logit((i, j) -> (i', j')) = q_ij . k_i'j' + q_ij . r^H_{i'-i} + q_ij . r^W_{j'-j}      (q scaled by d_kh^-1/2)

with learned relative height and width embeddings r^H (2H - 1 offsets) and r^W (2W - 1 offsets) shared by the heads
of the layer. The relative logits are an additive bias of :func:`multimodal.nn.attention`: S_H (B, heads, H, W, H)
and S_W (B, heads, H, W, W) are computed from two small (H, H, d) and (W, W, d) tables and broadcast-added into the
(HW x HW) bias, never tiled. The attention output is put back on the map, channels-first, by a permute (not a bare
reshape, which scrambles positions) and mixed by a 1 x 1 convolution.

With stride s > 1 the attention branch runs on the input average-pooled by s (ceil mode), so both branches produce
the ceil(H / s) x ceil(W / s) map of a k x k convolution with padding k // 2. Maps need not be square; the relative
tables are sized for ``max_size`` and any map up to that size can be used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import attention


class AAConv2d(nn.Module):
    """Attention-augmented convolution ``concat([conv(x), attn(x)], dim=1)``: (B, C_in, H, W) -> (B, C_out, H', W').

    Args:
        in_channels, out_channels: channels of input and output (the attention branch's ``dv`` included).
        kernel_size, stride: of the convolution branch (odd kernel, padding ``kernel_size // 2``).
        dk, dv: total key and value depth over all heads, e.g. ``0.2 * out_channels`` and ``0.1 * out_channels``
            (the paper's kappa and upsilon); both divisible by ``heads``; ``dv < out_channels``.
        heads: attention heads (the paper uses 8).
        relative: add the 2D relative position logits.
        max_size: largest (H, W) of the attention map (after striding) the relative tables cover.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dk: int,
        dv: int,
        heads: int = 8,
        stride: int = 1,
        relative: bool = True,
        max_size: int | tuple[int, int] = 64,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if heads < 1 or dk % heads or dv % heads:
            raise ValueError(f"dk ({dk}) and dv ({dv}) must be divisible by heads ({heads})")
        if dk < heads or dv < heads:
            raise ValueError(f"dk ({dk}) and dv ({dv}) must give each of the {heads} heads at least one channel")
        if not 0 < dv < out_channels:
            raise ValueError(
                f"dv ({dv}) must be in (0, out_channels={out_channels}): the convolution keeps out_channels - dv"
            )
        if kernel_size % 2 == 0 or stride < 1:
            raise ValueError(
                f"kernel_size must be odd and stride >= 1, got kernel_size={kernel_size}, stride={stride}"
            )
        self.heads, self.dk, self.dv, self.stride = heads, dk, dv, stride
        self.conv = nn.Conv2d(in_channels, out_channels - dv, kernel_size, stride, kernel_size // 2, bias=bias)
        self.qkv = nn.Conv2d(in_channels, 2 * dk + dv, 1)
        self.attn_out = nn.Conv2d(dv, dv, 1)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.max_size = (max_size, max_size) if isinstance(max_size, int) else tuple(max_size)
        if relative:
            d = dk // heads
            self.rel_h = nn.Parameter(torch.randn(2 * self.max_size[0] - 1, d) * d**-0.5)  # offsets -(H-1) .. H-1
            self.rel_w = nn.Parameter(torch.randn(2 * self.max_size[1] - 1, d) * d**-0.5)
        else:
            self.register_parameter("rel_h", None)
            self.register_parameter("rel_w", None)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        conv = self.conv(x)  # (B, C_out - dv, H', W')
        return torch.cat([conv, self.attend(self.pool(x))], dim=1)

    def attend(self, x: Tensor) -> Tensor:
        """The attention branch on an already-strided map: (B, C_in, H, W) -> (B, dv, H, W)."""
        B, _, H, W = x.shape
        too_large = x.shape[2] > self.max_size[0] or x.shape[3] > self.max_size[1]
        if self.rel_h is not None and too_large:
            raise ValueError(
                f"attention map {H}x{W} is larger than the relative tables' max_size {self.max_size}; "
                "build the layer with a larger max_size"
            )
        heads, dkh, dvh = self.heads, self.dk // self.heads, self.dv // self.heads
        q, k, v = self.qkv(x).flatten(2).split([self.dk, self.dk, self.dv], dim=1)  # (B, dk|dk|dv, HW)
        q = q.reshape(B, heads, dkh, H * W).transpose(2, 3)  # (B, heads, HW, dkh)
        k = k.reshape(B, heads, dkh, H * W).transpose(2, 3)
        v = v.reshape(B, heads, dvh, H * W).transpose(2, 3)  # (B, heads, HW, dvh)
        bias = self.relative_logits(q * dkh**-0.5, H, W) if self.rel_h is not None else None  # (B, heads, HW, HW)
        out = attention(q, k, v, attn_mask=bias)  # (B, heads, HW, dvh)
        return self.attn_out(self._to_map(out, H, W))

    def _to_map(self, out: Tensor, H: int, W: int) -> Tensor:
        """Per-head outputs (B, heads, HW, dvh) back on the map as (B, dv, H, W), channels heads-major."""
        return out.transpose(2, 3).reshape(out.shape[0], self.dv, H, W)  # the permute keeps positions in place

    def relative_logits(self, q: Tensor, H: int, W: int) -> Tensor:
        """S_H + S_W for (already scaled) queries (B, heads, HW, d) on an H x W map: (B, heads, HW, HW)."""
        B, heads, _, d = q.shape
        q = q.reshape(B, heads, H, W, d)
        table_h = self.rel_h[_offsets(H, self.max_size[0], q.device)]  # (H, H, d): [i, i'] -> r^H_{i'-i}
        table_w = self.rel_w[_offsets(W, self.max_size[1], q.device)]  # (W, W, d): [j, j'] -> r^W_{j'-j}
        s_h = torch.einsum("bnijd,ikd->bnijk", q, table_h.to(q.dtype))  # (B, heads, H, W, H)
        s_w = torch.einsum("bnijd,jld->bnijl", q, table_w.to(q.dtype))  # (B, heads, H, W, W)
        return (s_h[..., :, None] + s_w[..., None, :]).reshape(B, heads, H * W, H * W)

    def extra_repr(self) -> str:
        return (
            f"dk={self.dk}, dv={self.dv}, heads={self.heads}, stride={self.stride}, "
            f"relative={self.rel_h is not None}, max_size={self.max_size}"
        )


def _offsets(n: int, max_n: int, device: torch.device) -> Tensor:
    """(n, n) indices into a (2 * max_n - 1)-row table of offsets: entry [a, b] is row (b - a) + max_n - 1."""
    pos = torch.arange(n, device=device)
    return pos[None, :] - pos[:, None] + max_n - 1


def aa_conv_channels(
    out_channels: int, *, kappa: float = 0.2, upsilon: float = 0.1, heads: int = 8
) -> tuple[int, int]:
    """(dk, dv) of the paper's ratios, rounded to multiples of ``heads`` (at least one channel per head)."""
    if kappa <= 0 or not 0 < upsilon < 1:
        raise ValueError(f"kappa must be > 0 and upsilon in (0, 1), got kappa={kappa}, upsilon={upsilon}")

    def rounded(x: float) -> int:
        return max(heads, round(x / heads) * heads)

    dk, dv = rounded(kappa * out_channels), rounded(upsilon * out_channels)
    if dv >= out_channels:
        raise ValueError(f"upsilon={upsilon} leaves no convolution channels of out_channels={out_channels}")
    return dk, dv
