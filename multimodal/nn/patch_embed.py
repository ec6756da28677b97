"""Image to patch tokens: a strided convolution, as in ViT (Dosovitskiy et al. 2021) and timm's ``PatchEmbed``."""

from __future__ import annotations

from torch import Tensor, nn


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair


class PatchEmbed(nn.Module):
    """Split a (B, C, H, W) image into non-overlapping patches and project each to dim: (B, N, dim).

    ``proj`` is the ``nn.Conv2d`` of timm's PatchEmbed (same name and shape), so timm / open_clip weights copy over.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        in_chans: int = 3,
        dim: int = 768,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size, "img_size")
        self.patch_size = _pair(patch_size, "patch_size")
        if any(i % p for i, p in zip(self.img_size, self.patch_size, strict=True)):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        self.in_chans = in_chans
        self.dim = dim
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, dim) with N = grid_h * grid_w in raster order."""
        expected = (self.in_chans, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}; "
                f"resize inputs to {self.img_size[0]}x{self.img_size[1]} or build PatchEmbed with that img_size"
            )
        x = self.proj(x)  # (B, dim, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, dim)
