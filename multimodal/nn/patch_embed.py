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


class ConvStem(nn.Module):
    """A convolutional stem in place of the patchify layer (Xiao et al. 2021, "Early Convolutions Help
    Transformers See Better"): stride-2 3x3 conv + BatchNorm + ReLU stages down to ``patch_size``, then a 1x1
    projection to dim. Same interface and token grid as :class:`PatchEmbed`; it trains faster and more stably.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int,
        in_chans: int = 3,
        dim: int = 768,
        *,
        width: int = 32,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size, "img_size")
        if not isinstance(patch_size, int) or patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"a conv stem needs a power-of-two patch_size >= 2, got {patch_size!r}")
        self.patch_size = (patch_size, patch_size)
        if any(i % patch_size for i in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {patch_size}")
        self.in_chans = in_chans
        self.dim = dim
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        channels = in_chans
        for stage in range(patch_size.bit_length() - 1):  # log2(patch_size) stride-2 stages
            out = width * 2**stage
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.stages = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, dim) with N = grid_h * grid_w in raster order."""
        expected = (self.in_chans, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        x = self.proj(self.stages(x))  # (B, dim, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, dim)
