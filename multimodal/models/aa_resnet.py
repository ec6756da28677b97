"""Attention-augmented ResNets (Bello et al. 2019) and their plain twins.

Built on timm's ``ResNet`` rather than a copy of it: the plain twin *is* timm's network (same modules, same
parameter names, so timm weights load and timm's training tricks apply), and the augmented network differs from it
only where the paper changes it. In every block of the stages listed in ``aa_stages``, the block's first 3 x 3
convolution (``conv1`` of a basic block, ``conv2`` of a bottleneck: the one that carries the stage's stride) becomes
an :class:`~multimodal.nn.AAConv2d` with the same input and output channels, d_k = kappa * C_out and d_v = upsilon *
C_out (rounded to multiples of the heads). The block's batch norm then normalises convolution and attention channels
together, as in the paper.

``stem="small"`` replaces timm's 7 x 7 stride-2 convolution and max-pool by one 3 x 3 convolution, the usual
CIFAR-style stem, so 32 px images keep a 32 x 32 map in stage 1 instead of 8 x 8 (16 x 16 with
``small_stem_stride=2``, the CPU recipes' choice: a quarter of the convolution cost and a sixteenth of
attention's). ``img_size`` only sizes the relative position tables of the attention layers: any input up to that
size works.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.resnet import ResNet as TimmResNet
from torch import nn

from ..config import Config
from ..nn import AAConv2d, aa_conv_channels
from .registry import register_model

__all__ = ["AAResNet", "ResNetConfig"]


@dataclasses.dataclass(frozen=True)
class ResNetConfig(Config):
    """Architecture of an :class:`AAResNet`; ``aa_stages=()`` is the plain ResNet."""

    block: Literal["basic", "bottleneck"] = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    channels: tuple[int, ...] = (64, 128, 256, 512)
    num_classes: int = 1000
    in_chans: int = 3
    img_size: int = 224  # largest input side: sizes the relative position tables
    stem: Literal["imagenet", "small"] = "imagenet"  # small: one 3x3 conv of stride small_stem_stride, no max-pool
    small_stem_stride: int = 1  # 2 quarters the cost of every stage (and attention's by 16) on 32 px images
    aa_stages: tuple[int, ...] = ()  # 1-based stages whose blocks get attention-augmented 3x3 convolutions
    kappa: float = 0.2  # d_k / C_out
    upsilon: float = 0.1  # d_v / C_out
    heads: int = 8
    relative: bool = True
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.channels):
            raise ValueError(f"layers {self.layers} and channels {self.channels} must have one entry per stage")
        if self.small_stem_stride not in (1, 2):
            raise ValueError(f"small_stem_stride must be 1 or 2, got {self.small_stem_stride}")
        bad = [s for s in self.aa_stages if not 1 <= s <= len(self.layers)]
        if bad:
            raise ValueError(f"aa_stages {bad} out of range: stages are numbered 1..{len(self.layers)}")

    def stage_map_size(self, stage: int) -> int:
        """Side of stage ``stage``'s output map for an ``img_size`` input."""
        stride = (self.small_stem_stride if self.stem == "small" else 4) * 2 ** (stage - 1)
        return math.ceil(self.img_size / stride)


class AAResNet(TimmResNet):
    """timm's ResNet with attention-augmented 3 x 3 convolutions in ``cfg.aa_stages`` (none: the plain twin)."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__(
            BasicBlock if cfg.block == "basic" else Bottleneck,
            cfg.layers,
            num_classes=cfg.num_classes,
            in_chans=cfg.in_chans,
            channels=cfg.channels,
            drop_rate=cfg.drop_rate,
            drop_path_rate=cfg.drop_path_rate,
        )
        self.cfg = cfg
        if cfg.stem == "small":
            self.conv1 = nn.Conv2d(cfg.in_chans, self.bn1.num_features, 3, cfg.small_stem_stride, 1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()
        for stage in cfg.aa_stages:
            for block in getattr(self, f"layer{stage}"):
                name = "conv1" if isinstance(block, BasicBlock) else "conv2"
                setattr(block, name, self._augmented(getattr(block, name), cfg.stage_map_size(stage)))

    def _augmented(self, conv: nn.Conv2d, map_size: int) -> AAConv2d:
        cfg = self.cfg
        dk, dv = aa_conv_channels(conv.out_channels, kappa=cfg.kappa, upsilon=cfg.upsilon, heads=cfg.heads)
        layer = AAConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            dk=dk,
            dv=dv,
            heads=cfg.heads,
            stride=conv.stride[0],
            relative=cfg.relative,
            max_size=map_size,
        )
        for m in (layer.conv, layer.qkv, layer.attn_out):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        return layer

    def no_weight_decay(self) -> set[str]:
        """The relative position tables, besides norms and biases."""
        return {name for name, _ in self.named_parameters() if name.endswith(("rel_h", "rel_w"))}


_PRESETS = {
    "resnet18": ResNetConfig(block="basic", layers=(2, 2, 2, 2)),
    "resnet26": ResNetConfig(block="bottleneck", layers=(2, 2, 2, 2)),
    "resnet50": ResNetConfig(block="bottleneck", layers=(3, 4, 6, 3)),
}
_AA_STAGES = (2, 3, 4)  # stage 1 maps are 4x larger (16x the attention cost) and mostly low-level features


def _build(name: str, aa: bool, overrides: dict[str, Any]) -> AAResNet:
    preset = _PRESETS[name].replace(aa_stages=_AA_STAGES) if aa else _PRESETS[name]
    return AAResNet(preset.replace(**overrides))


@register_model
def resnet18(**overrides: Any) -> AAResNet:
    """timm's ResNet-18 (basic blocks, 2-2-2-2): the plain twin of ``aa_resnet18``."""
    return _build("resnet18", False, overrides)


@register_model
def aa_resnet18(**overrides: Any) -> AAResNet:
    """ResNet-18 with attention-augmented 3x3 convolutions in stages 2-4 (kappa 0.2, upsilon 0.1, 8 heads)."""
    return _build("resnet18", True, overrides)


@register_model
def resnet26(**overrides: Any) -> AAResNet:
    """timm's ResNet-26 (bottlenecks, 2-2-2-2): the plain twin of ``aa_resnet26``."""
    return _build("resnet26", False, overrides)


@register_model
def aa_resnet26(**overrides: Any) -> AAResNet:
    """ResNet-26 with attention-augmented bottleneck 3x3 convolutions in stages 2-4."""
    return _build("resnet26", True, overrides)


@register_model
def resnet50(**overrides: Any) -> AAResNet:
    """timm's ResNet-50 (bottlenecks, 3-4-6-3): the plain twin of ``aa_resnet50``."""
    return _build("resnet50", False, overrides)


@register_model
def aa_resnet50(**overrides: Any) -> AAResNet:
    """ResNet-50 with attention-augmented bottleneck 3x3 convolutions in stages 2-4, the paper's main model."""
    return _build("resnet50", True, overrides)
