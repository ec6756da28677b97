"""Spatial transformer (Jaderberg et al. 2015, "Spatial Transformer Networks"): a localisation network regresses an
affine transform from the image, ``F.affine_grid`` turns it into a sampling grid and ``F.grid_sample`` samples the
image there, bilinearly. Differentiable end to end, so the network that follows teaches it what to undo."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # theta row-major: [[1, 0, 0], [0, 1, 0]]


class LocalisationNet(nn.Module):
    """The paper's small CNN for the localisation network: two conv / max-pool / ReLU stages, a fixed 3 x 3 pooled
    map, then a two-layer regressor of the 6 affine parameters whose last layer starts at the identity (zero
    weights, identity bias), so that an untrained spatial transformer passes its input through."""

    def __init__(self, in_chans: int, *, channels: tuple[int, int] = (8, 16), hidden: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, channels[0], 7, padding=3),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 5, padding=2),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(3),
        )
        self.regressor = nn.Sequential(nn.Linear(channels[1] * 9, hidden), nn.ReLU(), nn.Linear(hidden, 6))
        nn.init.zeros_(self.regressor[-1].weight)
        with torch.no_grad():
            self.regressor[-1].bias.copy_(torch.tensor(IDENTITY))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> theta (B, 2, 3)."""
        return self.regressor(self.features(x).flatten(1)).view(-1, 2, 3)


class SpatialTransformer(nn.Module):
    """Warp (B, C, H, W) images by the affine transform a localisation network reads off each of them.

    ``theta`` maps output coordinates to input coordinates in [-1, 1] (``F.affine_grid``'s convention): the output
    pixel at (x, y) is the input sampled at theta @ (x, y, 1). Samples outside the image are ``padding_mode``
    ("zeros" by default). ``out_size`` (H', W') defaults to the input's. ``localisation`` is any module mapping
    the images to (B, 2, 3) or (B, 6); the default is :class:`LocalisationNet`. After each forward ``last_theta``
    holds the transforms (B, 2, 3), detached, to look at what it learned.
    """

    def __init__(
        self,
        in_chans: int,
        *,
        out_size: tuple[int, int] | None = None,
        localisation: nn.Module | None = None,
        padding_mode: str = "zeros",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"padding_mode must be zeros, border or reflection, got {padding_mode!r}")
        if out_size is not None and (len(out_size) != 2 or min(out_size) < 1):
            raise ValueError(f"out_size must be (height, width) of positive sizes, got {out_size}")
        self.in_chans = in_chans
        self.out_size = None if out_size is None else tuple(out_size)
        self.localisation = LocalisationNet(in_chans) if localisation is None else localisation
        self.padding_mode = padding_mode
        self.align_corners = align_corners
        self.last_theta: Tensor | None = None

    def theta(self, x: Tensor) -> Tensor:
        """The affine transform of each image: (B, 2, 3)."""
        theta = self.localisation(x)
        if theta.shape not in ((x.shape[0], 2, 3), (x.shape[0], 6)):
            raise ValueError(f"the localisation network must give (B, 2, 3) or (B, 6), got {tuple(theta.shape)}")
        return theta.reshape(-1, 2, 3)

    def forward(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, C, H', W'), warped by ``theta`` (B, 2, 3) when given, else by the localisation net's."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        theta = self.theta(x) if theta is None else theta
        if theta.shape != (x.shape[0], 2, 3):
            raise ValueError(f"theta must be ({x.shape[0]}, 2, 3), got {tuple(theta.shape)}")
        self.last_theta = theta.detach()
        size = (x.shape[0], x.shape[1], *(self.out_size or x.shape[-2:]))
        grid = F.affine_grid(theta.to(x.dtype), size, align_corners=self.align_corners)  # (B, H', W', 2)
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=self.align_corners
        )

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, out_size={self.out_size}, padding_mode={self.padding_mode!r}"
