"""unCLIP's diffusion prior (Ramesh et al. 2022, section 2.1): a CLIP text embedding -> a CLIP image embedding.

A causal transformer from the shared backbone reads, in order, the caption's per-token encodings from the CLIP text
tower, the CLIP text embedding, a timestep embedding, the noised CLIP image embedding and a final learned query;
the query's output is the prediction of the un-noised image embedding (x0 prediction, MSE loss). Embeddings are
unit-normalised and scaled by sqrt(embed_dim), so each component has unit variance, as the diffusion noise does.
Classifier-free guidance: the text conditioning (token encodings and text embedding) is replaced by a learned null
embedding ``cond_drop_prob`` of the time during training, and the two predictions are mixed when sampling. Sampling
draws ``num_candidates`` embeddings per caption and keeps the one with the higher dot product with the text
embedding.

:class:`PriorTransformer` is the plain denoiser network; :class:`DiffusionPrior` (a diffusers ``ModelMixin`` so a
pipeline can ``save_pretrained`` it) owns the noise schedule, ``loss()`` and ``sample()``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn

from ..nn import Transformer, sinusoidal_embedding
from .diffusion import guided_sample, make_noise_scheduler, make_sampler
from .registry import register_model

__all__ = ["DiffusionPrior", "PriorTransformer"]

NUM_SPECIAL_TOKENS = 4  # text embedding, timestep, noised image embedding, query


class PriorTransformer(nn.Module):
    """Denoiser: (noised image embedding, t, text conditioning) -> predicted clean image embedding (B, embed_dim)."""

    def __init__(
        self,
        *,
        embed_dim: int,
        text_width: int,
        text_context: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.width = width
        self.text_context = text_context
        self.text_proj = nn.Linear(text_width, width)
        self.text_embed_proj = nn.Linear(embed_dim, width)
        self.image_embed_proj = nn.Linear(embed_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.null_text_embed = nn.Parameter(torch.zeros(embed_dim))
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, text_context + NUM_SPECIAL_TOKENS, width) * 0.02)
        self.transformer = Transformer(width, depth, heads=heads, mlp_ratio=mlp_ratio)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, embed_dim)

    def forward(
        self,
        noised: Tensor,
        t: Tensor,
        text_embed: Tensor,
        text_encodings: Tensor,
        text_padding_mask: Tensor,
        *,
        uncond: Tensor | None = None,
    ) -> Tensor:
        """noised (B, E) at timesteps t (B,), text_embed (B, E), text_encodings (B, L, text_width) with
        text_padding_mask (B, L) True at padding; rows where ``uncond`` (B,) is True see the null conditioning
        instead of their text. Returns the predicted clean embedding (B, E)."""
        B, L, _ = text_encodings.shape
        if self.text_context < L:
            raise ValueError(f"{L} text tokens exceed the prior's text_context of {self.text_context}")
        if uncond is not None:
            text_embed = torch.where(uncond[:, None], self.null_text_embed.to(text_embed.dtype), text_embed)
            text_padding_mask = text_padding_mask | uncond[:, None]
        time = self.time_mlp(sinusoidal_embedding(t, self.width).to(noised.dtype))  # (B, W)
        special = torch.stack(
            [self.text_embed_proj(text_embed), time, self.image_embed_proj(noised), self.query[:, 0].expand(B, -1)],
            dim=1,
        )  # (B, 4, W)
        pos = torch.cat([self.pos_embed[:, :L], self.pos_embed[:, self.text_context :]], dim=1)  # (1, L + 4, W)
        x = torch.cat([self.text_proj(text_encodings), special], dim=1) + pos  # (B, L + 4, W)
        padding = torch.cat([text_padding_mask, text_padding_mask.new_zeros(B, NUM_SPECIAL_TOKENS)], dim=1)
        x = self.transformer(x, key_padding_mask=padding, causal=True)
        return self.head(self.norm(x[:, -1]))  # (B, E) read at the query


class DiffusionPrior(ModelMixin, ConfigMixin):
    """The prior with its noise schedule: ``loss()`` for training, ``sample()`` for text -> image embeddings.

    Inputs are the frozen CLIP's outputs: ``image_embeds`` and ``text_embeds`` (B, E), normalised or not (they are
    normalised here), and the text tower's per-token ``text_encodings`` (B, L, text_width) with
    ``text_padding_mask`` (B, L) True after the end-of-text token.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        embed_dim: int = 128,
        text_width: int = 128,
        text_context: int = 16,
        width: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        cond_drop_prob: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.net = PriorTransformer(
            embed_dim=embed_dim,
            text_width=text_width,
            text_context=text_context,
            width=width,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
        )
        self.noise_scheduler = make_noise_scheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type="sample"
        )
        self.embed_scale = embed_dim**0.5

    def _scaled(self, embeds: Tensor) -> Tensor:
        return F.normalize(embeds.float(), dim=-1) * self.embed_scale

    def forward(
        self, image_embeds: Tensor, text_embeds: Tensor, text_encodings: Tensor, text_padding_mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss (``loss``); calling the model computes it, so DDP and FSDP wrappers see a forward."""
        return self.loss(image_embeds, text_embeds, text_encodings, text_padding_mask)

    def loss(
        self, image_embeds: Tensor, text_embeds: Tensor, text_encodings: Tensor, text_padding_mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """MSE of the predicted clean image embedding at uniformly drawn timesteps, and detached cosines to log:
        prediction vs. its image embedding, vs. its text embedding, and vs. another row's image embedding (the
        shuffled-caption baseline a model that ignores its text would match)."""
        x0 = self._scaled(image_embeds)  # (B, E)
        B = x0.shape[0]
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        noised = self.noise_scheduler.add_noise(x0, noise, t)
        uncond = torch.rand(B, device=x0.device) < self.config.cond_drop_prob
        pred = self.net(noised, t, self._scaled(text_embeds), text_encodings, text_padding_mask, uncond=uncond)
        loss = F.mse_loss(pred.float(), x0)
        with torch.no_grad():
            shuffled = x0.roll(1, dims=0)
            logs = {
                "cos_image": F.cosine_similarity(pred.float(), x0).mean(),
                "cos_text": F.cosine_similarity(pred.float(), text_embeds.float()).mean(),
                "cos_image_shuffled": F.cosine_similarity(pred.float(), shuffled).mean(),
            }
        return loss, logs

    @torch.no_grad()
    def sample(
        self,
        text_embeds: Tensor,
        text_encodings: Tensor,
        text_padding_mask: Tensor,
        *,
        guidance_scale: float = 4.0,
        num_inference_steps: int = 25,
        sampler: str | SchedulerMixin = "dpmsolver++",
        num_candidates: int = 2,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Unit-norm image embeddings (B, E) for B captions: ``num_candidates`` samples each, guided by
        ``guidance_scale`` (1 = no guidance), keeping the one closest to the caption's text embedding."""
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if isinstance(sampler, str):
            sampler = make_sampler(sampler, self.noise_scheduler)
        B, E = text_embeds.shape
        text = self._scaled(text_embeds).repeat_interleave(num_candidates, dim=0)  # (B*K, E)
        enc = text_encodings.repeat_interleave(num_candidates, dim=0)
        pad = text_padding_mask.repeat_interleave(num_candidates, dim=0)
        n = text.shape[0]
        guided = guidance_scale != 1.0
        uncond = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(text.device)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            ts = t.expand(x.shape[0]).to(x.device)
            if not guided:
                return self.net(x, ts, text, enc, pad)
            both = self.net(x.repeat(2, 1), ts.repeat(2), text.repeat(2, 1), enc.repeat(2, 1, 1), pad.repeat(2, 1),
                            uncond=uncond)  # fmt: skip
            cond, free = both.chunk(2)
            return free + guidance_scale * (cond - free)

        x = guided_sample(
            denoise, sampler, (n, E), num_inference_steps=num_inference_steps, generator=generator, device=text.device
        )
        x = F.normalize(x, dim=-1).view(B, num_candidates, E)
        score = (x * F.normalize(text_embeds.float(), dim=-1)[:, None]).sum(-1)  # (B, K)
        return x[torch.arange(B, device=x.device), score.argmax(dim=1)]  # (B, E)


PRESETS: dict[str, dict[str, Any]] = {
    # for clip_nano (128-d embeddings, 128-wide text tower, 16 tokens): 2.4M parameters, trains in minutes on a CPU
    "nano": dict(embed_dim=128, text_width=128, text_context=16, width=256, depth=4, heads=4),
    # for clip_vit_b32 (512-d embeddings, 512-wide text tower, 77 tokens); the paper's prior is 1B parameters
    "vit-b32": dict(embed_dim=512, text_width=512, text_context=77, width=768, depth=12, heads=12),
}


@register_model
def unclip_prior_nano(**overrides: Any) -> DiffusionPrior:
    """The prior for the clip_nano recipes (shapes): 4 x 256 causal blocks."""
    return DiffusionPrior(**{**PRESETS["nano"], **overrides})


@register_model
def unclip_prior_vit_b32(**overrides: Any) -> DiffusionPrior:
    """The prior for a ViT-B/32 CLIP: 12 x 768 causal blocks over 77 text tokens."""
    return DiffusionPrior(**{**PRESETS["vit-b32"], **overrides})
