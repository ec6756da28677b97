"""A spatial transformer network (Jaderberg et al. 2015): a :class:`~multimodal.nn.SpatialTransformer` in front of any
registered image model, trained end to end by that model's loss alone.

    create_model("stn", model="resnet18", channels=[16, 32, 64, 128], num_classes=10)   # a classifier
    model.args.vision.model=stn, vision.model_kwargs={model: vitc_nano_patch8_32}           # a CLIP image tower

Every argument but ``model`` and ``st`` goes to the model behind the transformer; ``st`` holds the transformer's
(``channels`` and ``hidden`` of its localisation net, ``padding_mode``). The transformer starts at the identity, so
an untrained STN is exactly its backbone.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..nn import LocalisationNet, SpatialTransformer
from .registry import check_model_name, create_model, register_model

__all__ = ["SpatialTransformerNet"]


class SpatialTransformerNet(nn.Module):
    """``backbone(st(x))``: the image warped by the transformer, then the model."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        in_chans: int = 3,
        channels: tuple[int, int] = (8, 16),
        hidden: int = 32,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        localisation = LocalisationNet(in_chans, channels=tuple(channels), hidden=hidden)
        self.st = SpatialTransformer(in_chans, localisation=localisation, padding_mode=padding_mode)
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(self.st(x))

    def get_classifier(self) -> nn.Module:
        """The backbone's head (what evaluation hooks read the penultimate features from)."""
        return self.backbone.get_classifier() if hasattr(self.backbone, "get_classifier") else self.backbone.head

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in inner}


@register_model
def stn(model: str, st: dict[str, Any] | None = None, **overrides: Any) -> SpatialTransformerNet:
    """A spatial transformer in front of the registered image model ``model`` (built with ``overrides``)."""
    check_model_name(model, key="stn model")
    if model == "stn":
        raise ValueError("stn model must be an image model, not another stn")
    st = dict(st or {})
    unknown = set(st) - {"channels", "hidden", "padding_mode"}
    if unknown:
        raise ValueError(f"stn st options are channels, hidden and padding_mode; got {sorted(unknown)}")
    return SpatialTransformerNet(create_model(model, **overrides), in_chans=overrides.get("in_chans", 3), **st)
