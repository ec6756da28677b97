"""unCLIP's diffusion decoder (Ramesh et al. 2022, section 2.1): a CLIP image embedding (and caption) -> an image.

A diffusers ``UNet2DConditionModel`` conditioned GLIDE-style on the CLIP image embedding twice: projected and added to
the timestep embedding (the UNet's ``class_embed_type="projection"``), and projected into ``num_image_tokens`` extra
context tokens that the cross-attention layers read next to the caption's per-token encodings from the CLIP text
tower. Classifier-free guidance: in training the image embedding is replaced by a learned null embedding
``image_drop_prob`` of the time and the caption is dropped ``text_drop_prob`` of the time; sampling mixes the
prediction with both against the prediction with neither.

The loss is the MSE on the UNet's prediction target (v by default) with min-SNR-gamma weighting; sampling uses a
diffusers scheduler (DPM-Solver++ by default, DDIM and DDPM selectable). Images are (B, 3, H, W) in [-1, 1].

:class:`UnclipDecoder` and :class:`UnclipUpsampler` (the second stage, a ``UNet2DModel`` fed the low-resolution image)
are diffusers ``ModelMixin`` s, so a pipeline ``save_pretrained`` s them with a ``config.json``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

from ..nn import composite_is_faster
from .diffusion import guided_sample, loss_weights, make_noise_scheduler, make_sampler, prediction_target
from .registry import register_model

__all__ = ["UnclipDecoder", "UnclipUpsampler"]


def _unet_blocks(attention: list[bool], *, cross: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    attn_down, attn_up = (
        ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") if cross else ("AttnDownBlock2D", "AttnUpBlock2D")
    )
    down = tuple(attn_down if a else "DownBlock2D" for a in attention)
    up = tuple(attn_up if a else "UpBlock2D" for a in reversed(attention))
    return down, up


class CpuAwareAttnProcessor:
    """The UNets' attention: diffusers' fused ``AttnProcessor2_0`` (``F.scaled_dot_product_attention``), except on the
    CPU in bf16/fp16, autocast included, where diffusers' composite ``AttnProcessor`` runs (baddbmm, softmax, bmm).

    PyTorch's fused CPU kernel is slow in reduced precision at these sizes: in a training step of the nano decoder
    (batch 64, bf16, 1 thread) its forward and backward took 177 of 548 ms (``bench/profile_step.py``), for 4x4-token
    self-attention and 28-token cross-attention, as :func:`multimodal.nn.attention` measured for the backbone.
    """

    def __init__(self) -> None:
        self.fused, self.composite = AttnProcessor2_0(), AttnProcessor()

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:
        # named as AttnProcessor2_0 names them: diffusers' Attention passes a processor only the keywords its
        # signature lists (the mid-blocks' temb included) and warns about the rest
        device, dtype = hidden_states.device, hidden_states.dtype
        if torch.is_autocast_enabled(device.type):  # the projections' dtype, not that of their (often fp32) input
            dtype = torch.get_autocast_dtype(device.type)
        processor = self.composite if composite_is_faster(device, dtype) else self.fused
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _use_cpu_aware_attention(unet: nn.Module) -> None:
    processor = CpuAwareAttnProcessor()
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(processor)


def _diffusion_loss(
    model_out: Tensor, x0: Tensor, noise: Tensor, t: Tensor, scheduler: Any, min_snr_gamma: float | None
) -> Tensor:
    target = prediction_target(scheduler, x0, noise, t)
    per_sample = (model_out.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return (loss_weights(scheduler, t, min_snr_gamma=min_snr_gamma) * per_sample).mean()


class UnclipDecoder(ModelMixin, ConfigMixin):
    """CLIP image embedding (+ caption token encodings) -> image, with its noise schedule, ``loss()`` and
    ``sample()``."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        embed_dim: int = 128,
        text_width: int = 128,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        attention: tuple[bool, ...] = (False, False, True),
        layers_per_block: int = 1,
        attention_head_dim: int = 8,
        context_dim: int = 128,
        num_image_tokens: int = 4,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "v_prediction",
        min_snr_gamma: float | None = 5.0,
        image_drop_prob: float = 0.1,
        text_drop_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if len(attention) != len(block_out_channels):
            raise ValueError(
                f"attention has {len(attention)} flags but there are {len(block_out_channels)} resolution levels "
                "(block_out_channels); give one flag per level"
            )
        for name, p in (("image_drop_prob", image_drop_prob), ("text_drop_prob", text_drop_prob)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        down, up = _unet_blocks(list(attention), cross=True)
        self.unet = UNet2DConditionModel(
            sample_size=image_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(block_out_channels),
            down_block_types=down,
            up_block_types=up,
            layers_per_block=layers_per_block,
            cross_attention_dim=context_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=embed_dim,
        )
        _use_cpu_aware_attention(self.unet)
        self.image_tokens = nn.Linear(embed_dim, num_image_tokens * context_dim)
        self.text_proj = nn.Linear(text_width, context_dim)
        self.null_image_embed = nn.Parameter(torch.zeros(embed_dim))
        self.noise_scheduler = make_noise_scheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type
        )
        self.embed_scale = embed_dim**0.5

    def forward(
        self,
        images: Tensor,
        image_embeds: Tensor,
        text_encodings: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss (``loss``); calling the model computes it, so DDP and FSDP wrappers see a forward."""
        return self.loss(images, image_embeds, text_encodings, text_padding_mask)

    def denoise(
        self,
        x: Tensor,
        t: Tensor,
        image_embeds: Tensor,
        text_encodings: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        *,
        drop_image: Tensor | None = None,
        drop_text: Tensor | None = None,
    ) -> Tensor:
        """The UNet's prediction (B, 3, H, W) for noised images x at timesteps t (B,), conditioned on image_embeds
        (B, E) and, when given, the caption's text_encodings (B, L, text_width) with text_padding_mask (B, L) True at
        padding. Rows flagged in drop_image / drop_text (B,) bool get the null image embedding / no caption."""
        B = x.shape[0]
        embeds = F.normalize(image_embeds.float(), dim=-1) * self.embed_scale
        if drop_image is not None:
            embeds = torch.where(drop_image[:, None], self.null_image_embed.float(), embeds)
        embeds = embeds.to(x.dtype)
        context = self.image_tokens(embeds).view(B, self.config.num_image_tokens, -1)  # (B, T, C)
        keep = torch.ones(B, context.shape[1], dtype=torch.bool, device=x.device)
        if text_encodings is not None:
            if text_padding_mask is None:
                raise ValueError("text_encodings need their text_padding_mask (B, L), True at padding")
            text_keep = ~text_padding_mask
            if drop_text is not None:
                text_keep = text_keep & ~drop_text[:, None]
            context = torch.cat([context, self.text_proj(text_encodings.to(x.dtype))], dim=1)  # (B, T + L, C)
            keep = torch.cat([keep, text_keep], dim=1)
        return self.unet(
            x, t, encoder_hidden_states=context, class_labels=embeds, encoder_attention_mask=keep.to(x.dtype)
        ).sample

    def loss(
        self,
        images: Tensor,
        image_embeds: Tensor,
        text_encodings: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted diffusion loss of a batch of images (B, 3, H, W) in [-1, 1] and their conditioning."""
        B = images.shape[0]
        sched = self.noise_scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (B,), device=images.device)
        noise = torch.randn_like(images)
        noised = sched.add_noise(images, noise, t)
        drop_image = torch.rand(B, device=images.device) < self.config.image_drop_prob
        drop_text = torch.rand(B, device=images.device) < self.config.text_drop_prob
        out = self.denoise(noised, t, image_embeds, text_encodings, text_padding_mask, drop_image=drop_image,
                           drop_text=drop_text)  # fmt: skip
        loss = _diffusion_loss(out, images, noise, t, sched, self.config.min_snr_gamma)
        return loss, {}

    @torch.no_grad()
    def sample(
        self,
        image_embeds: Tensor,
        text_encodings: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        *,
        guidance_scale: float = 3.0,
        num_inference_steps: int = 25,
        sampler: str | SchedulerMixin = "dpmsolver++",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] for B image embeddings, guided by ``guidance_scale`` (1 = no guidance)."""
        if isinstance(sampler, str):
            sampler = make_sampler(sampler, self.noise_scheduler)
        B = image_embeds.shape[0]
        size = self.config.image_size
        device, dtype = image_embeds.device, self.dtype
        guided = guidance_scale != 1.0
        if guided:
            drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(device)
            embeds, enc = image_embeds.repeat(2, 1), None if text_encodings is None else text_encodings.repeat(2, 1, 1)
            pad = None if text_padding_mask is None else text_padding_mask.repeat(2, 1)
        else:
            drop, embeds, enc, pad = None, image_embeds, text_encodings, text_padding_mask

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            xs = x.repeat(2, 1, 1, 1) if guided else x
            out = self.denoise(xs, t.expand(xs.shape[0]).to(device), embeds, enc, pad, drop_image=drop, drop_text=drop)
            if not guided:
                return out
            cond, free = out.chunk(2)
            return free + guidance_scale * (cond - free)

        x = guided_sample(denoise, sampler, (B, 3, size, size), num_inference_steps=num_inference_steps,
                          generator=generator, device=device, dtype=dtype)  # fmt: skip
        return x.float().clamp(-1, 1)


class UnclipUpsampler(ModelMixin, ConfigMixin):
    """Second diffusion stage: a low-resolution image -> the image ``scale`` times larger, with its noise schedule,
    ``loss()`` and ``sample()``.

    A diffusers ``UNet2DModel`` sees the noised high-resolution image concatenated with the low-resolution one
    upsampled bilinearly (6 channels). Without attention it is fully convolutional, so, as in the paper, it trains on
    random ``crop_size`` crops and samples at any size. The low-resolution input is corrupted in training (the
    paper's Gaussian blur, sigma drawn up to ``blur_sigma``, plus Gaussian noise with std up to ``noise_std``) so the
    upsampler tolerates the decoder's imperfect samples; sampling blurs it with half of ``blur_sigma``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        scale: int = 2,
        crop_size: int | None = 32,
        block_out_channels: tuple[int, ...] = (32, 64),
        attention: tuple[bool, ...] = (False, False),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "v_prediction",
        min_snr_gamma: float | None = 5.0,
        blur_sigma: float = 0.6,
        noise_std: float = 0.05,
    ) -> None:
        super().__init__()
        if scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {scale}")
        if image_size % scale:
            raise ValueError(f"image_size ({image_size}) must be divisible by scale ({scale})")
        if crop_size is not None and (crop_size > image_size or crop_size % scale):
            raise ValueError(f"crop_size ({crop_size}) must divide by scale ({scale}) and be <= image_size")
        if crop_size is not None and crop_size != image_size and any(attention):
            raise ValueError("training on crops needs a fully convolutional UNet: set attention to all false")
        down, up = _unet_blocks(list(attention), cross=False)
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=6,
            out_channels=3,
            block_out_channels=tuple(block_out_channels),
            down_block_types=down,
            up_block_types=up,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
        )
        _use_cpu_aware_attention(self.unet)
        self.noise_scheduler = make_noise_scheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type
        )

    def degrade(self, low: Tensor, *, sigma: Tensor | float, noise_std: Tensor | float = 0.0) -> Tensor:
        """Blur (per-sample sigma allowed) and add Gaussian noise to low-resolution images (B, 3, h, w)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32).expand(low.shape[0])
        out = torch.stack(
            [gaussian_blur(im, [5, 5], [float(s)] * 2) if s > 0 else im for im, s in zip(low, sigma, strict=False)]
        )
        std = torch.as_tensor(noise_std, dtype=low.dtype, device=low.device).reshape(-1, 1, 1, 1)
        return out + std * torch.randn_like(out)

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss (``loss``); calling the model computes it, so DDP and FSDP wrappers see a forward."""
        return self.loss(images)

    def denoise(self, x: Tensor, t: Tensor, low: Tensor) -> Tensor:
        """The UNet's prediction (B, 3, H, W) for noised images x at timesteps t given low-resolution images low."""
        cond = F.interpolate(low.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.unet(torch.cat([x, cond], dim=1), t).sample

    def loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted diffusion loss of high-resolution images (B, 3, H, W) in [-1, 1]; their low-resolution
        inputs are made here (a random crop, area downsampling, blur and noise)."""
        B, _, H, W = images.shape
        crop = self.config.crop_size
        if crop is not None and crop < min(H, W):
            top = torch.randint(0, (H - crop) // self.config.scale + 1, ()).item() * self.config.scale
            left = torch.randint(0, (W - crop) // self.config.scale + 1, ()).item() * self.config.scale
            images = images[:, :, top : top + crop, left : left + crop]
        low = F.avg_pool2d(images, self.config.scale)
        sigma = torch.rand(B) * self.config.blur_sigma
        noise_std = torch.rand(B, device=images.device) * self.config.noise_std
        low = self.degrade(low, sigma=sigma, noise_std=noise_std)
        sched = self.noise_scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (B,), device=images.device)
        noise = torch.randn_like(images)
        out = self.denoise(sched.add_noise(images, noise, t), t, low)
        return _diffusion_loss(out, images, noise, t, sched, self.config.min_snr_gamma), {}

    @torch.no_grad()
    def sample(
        self,
        low: Tensor,
        *,
        num_inference_steps: int = 25,
        sampler: str | SchedulerMixin = "dpmsolver++",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Images (B, 3, scale*h, scale*w) in [-1, 1] from low-resolution images (B, 3, h, w) in [-1, 1]."""
        if isinstance(sampler, str):
            sampler = make_sampler(sampler, self.noise_scheduler)
        B, _, h, w = low.shape
        s = self.config.scale
        low = self.degrade(low.float(), sigma=self.config.blur_sigma / 2).to(self.dtype)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            return self.denoise(x, t.expand(B).to(x.device), low)

        x = guided_sample(denoise, sampler, (B, 3, h * s, w * s), num_inference_steps=num_inference_steps,
                          generator=generator, device=low.device, dtype=self.dtype)  # fmt: skip
        return x.float().clamp(-1, 1)


DECODER_PRESETS: dict[str, dict[str, Any]] = {
    # 16 px for clip_nano (128-d embeddings, 128-wide text tower): CPU-trainable in minutes
    "nano": dict(image_size=16, embed_dim=128, text_width=128, block_out_channels=(32, 64, 128), context_dim=128),
    # the paper's 64 px decoder shape, scaled to a ViT-B/32 CLIP (GPU)
    "base": dict(
        image_size=64,
        embed_dim=512,
        text_width=512,
        block_out_channels=(192, 384, 576, 768),
        attention=(False, True, True, True),
        layers_per_block=2,
        attention_head_dim=64,
        context_dim=512,
        norm_num_groups=32,
    ),
}
UPSAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    "nano": dict(image_size=64, scale=4, crop_size=32, block_out_channels=(32, 64)),
    # 64 -> 256 (the paper's first upsampler), trained on 64 px crops (GPU)
    "base": dict(
        image_size=256,
        scale=4,
        crop_size=64,
        block_out_channels=(128, 256, 384, 512),
        layers_per_block=2,
        attention=(False, False, False, False),
        norm_num_groups=32,
    ),
}


@register_model
def unclip_decoder_nano(**overrides: Any) -> UnclipDecoder:
    """16 px decoder for the clip_nano recipes: 32-64-128 channels, cross attention at 4 x 4."""
    return UnclipDecoder(**{**DECODER_PRESETS["nano"], **overrides})


@register_model
def unclip_decoder_base(**overrides: Any) -> UnclipDecoder:
    """64 px decoder for a ViT-B/32 CLIP: 192-384-576-768 channels, attention at 32, 16 and 8 px."""
    return UnclipDecoder(**{**DECODER_PRESETS["base"], **overrides})


@register_model
def unclip_upsampler_nano(**overrides: Any) -> UnclipUpsampler:
    """16 -> 64 px, fully convolutional, 32-64 channels, trained on 32 px crops."""
    return UnclipUpsampler(**{**UPSAMPLER_PRESETS["nano"], **overrides})


@register_model
def unclip_upsampler_base(**overrides: Any) -> UnclipUpsampler:
    """64 -> 256 px, fully convolutional, trained on 64 px crops."""
    return UnclipUpsampler(**{**UPSAMPLER_PRESETS["base"], **overrides})
