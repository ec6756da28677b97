"""Text-to-image with unCLIP (DALL-E 2): a diffusers ``DiffusionPipeline`` over this suite's CLIP, prior, decoder
and upsampler.

    text -> CLIP text embedding -> prior -> CLIP image embedding -> decoder -> image -> upsampler -> larger image

>>> pipe = UnclipPipeline.from_components(clip, prior, decoder, upsampler)  # doctest: +SKIP
>>> images = pipe(["a red circle"], num_images_per_prompt=4, generator=torch.Generator().manual_seed(0)).images
>>> pipe.save_pretrained("unclip-shapes"); UnclipPipeline.from_pretrained("unclip-shapes")

Besides text-to-image: image variations (an image's CLIP embedding decoded with new noise), interpolation between two
images (slerp of their embeddings) and text diffs (the paper's section 3.3: an image embedding rotated towards the
difference of two captions' text embeddings). Schedulers are components, swapped the diffusers way:
``pipe.decoder_scheduler = DDIMScheduler.from_config(pipe.decoder_scheduler.config)``.

The pipeline takes models; :func:`multimodal.runs.load_unclip_pipeline` assembles one from training runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from torch import Tensor, nn

from ..models.decoder import UnclipDecoder, UnclipUpsampler
from ..models.diffusion import make_sampler
from ..models.prior import DiffusionPrior
from ..models.registry import create_model
from ..tokenizers import ClipTokenizer

__all__ = ["ClipEncoder", "UnclipPipeline", "clip_image_embeddings", "slerp", "to_pil_images"]


class ClipEncoder(ModelMixin, ConfigMixin):
    """This suite's CLIP (any registered CLIP and its overrides) with its image preprocessing, as a diffusers model
    so the pipeline saves and loads it like its other components."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        model: str = "clip_nano",
        model_args: dict[str, Any] | None = None,
        mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
        std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711),
    ) -> None:
        super().__init__()
        self.clip = create_model(model, **(model_args or {}))

    @property
    def context_length(self) -> int:
        return self.clip.cfg.text.context_length

    def encode_text(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids (B, L) -> unit text embeddings (B, E), per-token encodings (B, L, W), padding mask (B, L)."""
        return self.clip.encode_text_tokens(tokens)

    def encode_images(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1], any size -> unit CLIP image embeddings (B, E)."""
        return clip_image_embeddings(self.clip, images, mean=self.config.mean, std=self.config.std)


def clip_image_embeddings(clip: nn.Module, images: Tensor, *, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Unit CLIP image embeddings (B, E) of images (B, 3, H, W) in [-1, 1] of any size: resized to the image tower's
    side and normalised with the CLIP run's ``mean`` and ``std``."""
    size = clip.cfg.vision.img_size
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return clip.encode_image(((x * 0.5 + 0.5) - m) / s, normalize=True).float()


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between unit vectors a and b (..., E) at fraction t (0 -> a, 1 -> b)."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    dot = (a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(dot)
    if float(theta.abs().max()) < 1e-4:  # (nearly) the same direction: the linear path is the arc
        return F.normalize(a + t * (b - a), dim=-1)
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


def to_pil_images(images: Tensor) -> list[Image.Image]:
    """Images (B, 3, H, W) in [-1, 1] -> B RGB PIL images."""
    arr = ((images.float().clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8)
    return [Image.fromarray(a) for a in arr.permute(0, 2, 3, 1).cpu().numpy()]


def _to_tensor(images: Sequence[Image.Image] | Tensor) -> Tensor:
    """PIL images (any mode, any size) or a (B, 3, H, W) tensor in [-1, 1] -> a float tensor in [-1, 1]."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        return images.float()
    if isinstance(images, Image.Image):
        images = [images]
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for im in images]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("images of different sizes: resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


class UnclipPipeline(DiffusionPipeline):
    """unCLIP text-to-image: ``pipe(prompts, ...)`` returns an ``ImagePipelineOutput`` of PIL images."""

    model_cpu_offload_seq = "clip->prior->decoder->upsampler"
    # A stack may stop at the decoder: its saved folder records these as null and loads back without them.
    _optional_components: ClassVar[list[str]] = ["upsampler", "upsampler_scheduler"]

    def __init__(
        self,
        clip: ClipEncoder,
        prior: DiffusionPrior,
        decoder: UnclipDecoder,
        upsampler: UnclipUpsampler | None,
        prior_scheduler: SchedulerMixin,
        decoder_scheduler: SchedulerMixin,
        upsampler_scheduler: SchedulerMixin | None,
    ) -> None:
        super().__init__()
        if (upsampler is None) != (upsampler_scheduler is None):
            raise ValueError("give the upsampler and its scheduler together, or neither (a stack without upsampler)")
        size = decoder.config.image_size
        if upsampler is not None and size * upsampler.config.scale != upsampler.config.image_size:
            raise ValueError(
                f"the decoder makes {size} px images, which the upsampler's {upsampler.config.scale}x turns into "
                f"{size * upsampler.config.scale} px, but it was built for {upsampler.config.image_size} px: "
                "train an upsampler with image_size = the decoder's image_size x scale"
            )
        if prior.config.embed_dim != decoder.config.embed_dim:
            raise ValueError(
                f"the prior makes {prior.config.embed_dim}-d embeddings, the decoder reads "
                f"{decoder.config.embed_dim}-d ones: both must be the CLIP's embed_dim"
            )
        self.register_modules(
            clip=clip,
            prior=prior,
            decoder=decoder,
            upsampler=upsampler,
            prior_scheduler=prior_scheduler,
            decoder_scheduler=decoder_scheduler,
            upsampler_scheduler=upsampler_scheduler,
        )

    @classmethod
    def from_components(
        cls,
        clip: ClipEncoder,
        prior: DiffusionPrior,
        decoder: UnclipDecoder,
        upsampler: UnclipUpsampler | None = None,
        *,
        sampler: str = "dpmsolver++",
    ) -> UnclipPipeline:
        """A pipeline with ``sampler`` ("dpmsolver++", "ddim" or "ddpm") for every stage."""
        return cls(
            clip=clip,
            prior=prior,
            decoder=decoder,
            upsampler=upsampler,
            prior_scheduler=make_sampler(sampler, prior.noise_scheduler),
            decoder_scheduler=make_sampler(sampler, decoder.noise_scheduler),
            upsampler_scheduler=None if upsampler is None else make_sampler(sampler, upsampler.noise_scheduler),
        )

    # -- the stages ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Prompts -> CLIP text embeddings (B, E), per-token encodings (B, L, W) and padding masks (B, L).

        A bad prompt (empty, blank, control characters) is a ValueError; one longer than the CLIP's context is cut,
        with a warning."""
        tokens = ClipTokenizer(context_length=self.clip.context_length).encode_prompts(prompts)
        return self.clip.encode_text(tokens.to(self._execution_device))

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image] | Tensor) -> Tensor:
        """Unit CLIP image embeddings (B, E) of PIL images or a (B, 3, H, W) tensor in [-1, 1]."""
        return self.clip.encode_images(_to_tensor(images).to(self._execution_device))

    @torch.no_grad()
    def decode(
        self,
        image_embeds: Tensor,
        text_encodings: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        *,
        decoder_guidance_scale: float = 3.0,
        num_inference_steps: int = 25,
        upsample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Image embeddings (B, E) (and optional caption encodings) -> images (B, 3, H, W) in [-1, 1], upsampled
        when the pipeline has an upsampler and ``upsample``."""
        images = self.decoder.sample(
            image_embeds.to(self._execution_device), text_encodings, text_padding_mask,
            guidance_scale=decoder_guidance_scale, num_inference_steps=num_inference_steps,
            sampler=self.decoder_scheduler, generator=generator,
        )  # fmt: skip
        if upsample and self.upsampler is not None:
            images = self.upsampler.sample(
                images, num_inference_steps=num_inference_steps, sampler=self.upsampler_scheduler, generator=generator
            )
        return images

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        num_images_per_prompt: int = 1,
        prior_guidance_scale: float = 4.0,
        decoder_guidance_scale: float = 3.0,
        num_inference_steps: int = 25,
        prior_num_inference_steps: int | None = None,
        num_candidates: int = 2,
        upsample: bool = True,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Images for each prompt, prompt-major: prompt 0's ``num_images_per_prompt`` images first.

        ``output_type``: "pil", "np" (float arrays in [0, 1], (N, H, W, 3)) or "pt" (a tensor in [-1, 1]).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        text, enc, pad = self.encode_prompt(prompts)
        text, enc, pad = (x.repeat_interleave(num_images_per_prompt, dim=0) for x in (text, enc, pad))
        image_embeds = self.prior.sample(
            text, enc, pad, guidance_scale=prior_guidance_scale,
            num_inference_steps=prior_num_inference_steps or num_inference_steps, sampler=self.prior_scheduler,
            num_candidates=num_candidates, generator=generator,
        )  # fmt: skip
        images = self.decode(
            image_embeds, enc, pad, decoder_guidance_scale=decoder_guidance_scale,
            num_inference_steps=num_inference_steps, upsample=upsample, generator=generator,
        )  # fmt: skip
        out = self._output(images, output_type)
        return ImagePipelineOutput(images=out) if return_dict else (out,)

    @staticmethod
    def _output(images: Tensor, output_type: str) -> Any:
        if output_type == "pt":
            return images
        if output_type == "np":
            return (images.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return to_pil_images(images)

    # -- what else the paper does with the embeddings ------------------------------------------------------------

    @torch.no_grad()
    def variations(
        self,
        image: Image.Image | Sequence[Image.Image] | Tensor,
        *,
        num_images: int = 4,
        decoder_guidance_scale: float = 3.0,
        num_inference_steps: int = 25,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
    ) -> Any:
        """``num_images`` variations of each image: its CLIP image embedding decoded with fresh noise (no caption)."""
        embeds = self.image_embeddings(image).repeat_interleave(num_images, dim=0)
        images = self.decode(embeds, decoder_guidance_scale=decoder_guidance_scale,
                             num_inference_steps=num_inference_steps, generator=generator)  # fmt: skip
        return self._output(images, output_type)

    @torch.no_grad()
    def interpolate(
        self,
        image_a: Image.Image | Tensor,
        image_b: Image.Image | Tensor,
        *,
        steps: int = 5,
        decoder_guidance_scale: float = 3.0,
        num_inference_steps: int = 25,
        seed: int = 0,
        output_type: str = "pil",
    ) -> Any:
        """``steps`` images along the slerp from image_a's CLIP embedding to image_b's, each decoded from the same
        noise (seed) so only the embedding changes."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        a, b = self.image_embeddings(image_a)[:1], self.image_embeddings(image_b)[:1]
        embeds = torch.cat([slerp(a, b, t) for t in torch.linspace(0, 1, steps).tolist()])
        return self._decode_same_noise(embeds, decoder_guidance_scale, num_inference_steps, seed, output_type)

    @torch.no_grad()
    def text_diff(
        self,
        image: Image.Image | Tensor,
        caption: str,
        target_caption: str,
        *,
        steps: int = 5,
        max_angle: float = 0.5,
        decoder_guidance_scale: float = 3.0,
        num_inference_steps: int = 25,
        seed: int = 0,
        output_type: str = "pil",
    ) -> Any:
        """The paper's text diff: the image embedding slerped towards z_d = normalize(z_target - z_caption), the
        difference of the two captions' text embeddings, by fractions 0 .. ``max_angle`` in ``steps`` steps; each
        decoded from the same noise."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        z_i = self.image_embeddings(image)[:1]
        text, _, _ = self.encode_prompt([caption, target_caption])
        z_d = F.normalize(text[1:] - text[:1], dim=-1)
        embeds = torch.cat([slerp(z_i, z_d, t) for t in torch.linspace(0, max_angle, steps).tolist()])
        return self._decode_same_noise(embeds, decoder_guidance_scale, num_inference_steps, seed, output_type)

    def _decode_same_noise(self, embeds: Tensor, guidance: float, steps: int, seed: int, output_type: str) -> Any:
        images = [
            self.decode(
                e[None],
                decoder_guidance_scale=guidance,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed),
            )
            for e in embeds
        ]
        return self._output(torch.cat(images), output_type)
