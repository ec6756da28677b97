"""Images from text prompts with a trained unCLIP stack:

    python -m multimodal.generate --checkpoint runs/unclip-shapes "a red circle" "a blue star" --out grid.png --n 4

``--checkpoint`` is a saved pipeline (a folder with ``model_index.json``, from ``save_pretrained`` or ``--save``) or
an unCLIP run root holding ``prior/``, ``decoder/`` and optionally ``upsampler/`` training runs. The grid has one row
per prompt and ``--n`` images per row; it is written through a temporary file, so it is complete or absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import HelpFormatter, add_device_argument, add_threads_argument, run_cli
from .config import ConfigError
from .models.samplers import SAMPLERS

if TYPE_CHECKING:
    from .pipelines.unclip import UnclipPipeline

__all__ = ["default_cell", "load_pipeline", "main"]

_WANTED = "an unCLIP run root (the folder holding prior/ and decoder/ runs) or a saved pipeline (model_index.json)"


def load_pipeline(
    checkpoint: str | Path, *, sampler: str = "dpmsolver++", decoder: str | Path | None = None
) -> UnclipPipeline:
    """An :class:`~multimodal.pipelines.unclip.UnclipPipeline` from a saved pipeline or an unCLIP run root; with an
    unCLIP run root, ``decoder`` may name another decoder run or checkpoint (e.g. ``decoder/checkpoints/step-N``)."""
    from .pipelines.unclip import UnclipPipeline
    from .runs import describe_run, load_unclip_pipeline, read_run_config

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; pass {_WANTED}")
    if (path / "config.yaml").is_file():  # one training run, not the folder of an unCLIP stack
        raise ConfigError(f"{path} is {describe_run(read_run_config(path))}, not {_WANTED}")
    if (path / "model_index.json").is_file():
        if decoder is not None:
            raise ValueError("decoder= applies to an unCLIP run root, not to a saved pipeline")
        pipe = UnclipPipeline.from_pretrained(str(path))
        if sampler != "dpmsolver++":
            pipe = UnclipPipeline.from_components(pipe.clip, pipe.prior, pipe.decoder, pipe.upsampler, sampler=sampler)
        return pipe
    return load_unclip_pipeline(path, sampler=sampler, decoder=decoder)


def default_cell(size: int, minimum: int = 128) -> int:
    """The size a grid shows ``size``-px images at by default: the smallest whole multiple that is >= ``minimum``
    (16 px -> 128 px, 64 -> 128, 256 -> 256), nearest-neighbour, so every generated pixel stays a crisp square."""
    return size * max(1, -(-minimum // size))


def run(args: argparse.Namespace) -> None:
    """Check the arguments (prompts first: a bad one fails before anything loads), generate, and write the grid."""
    import torch
    from PIL import Image

    from .io import atomic_save_image
    from .pipelines.grid import make_grid
    from .tokenizers import check_prompts

    check_prompts(args.prompts)
    out = Path(args.out)
    if args.n < 1 or args.steps < 1:
        raise ValueError("--n and --steps must be >= 1")
    if args.cell is not None and args.cell < 1:
        raise ValueError(f"--cell must be >= 1 pixels, got {args.cell}")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"--out must end in .png, .jpg or .jpeg, got {str(out)!r}")
    pipe = load_pipeline(args.checkpoint, sampler=args.sampler).to(args.device)
    images = pipe(
        args.prompts,
        num_images_per_prompt=args.n,
        prior_guidance_scale=args.prior_guidance,
        decoder_guidance_scale=args.decoder_guidance,
        num_inference_steps=args.steps,
        upsample=not args.no_upsample,
        generator=torch.Generator().manual_seed(args.seed),
    ).images
    size = images[0].size[0]
    cell = args.cell or default_cell(size)
    if cell != size:
        images = [im.resize((cell, cell), Image.Resampling.NEAREST) for im in images]
    labels = None if args.no_labels else args.prompts
    atomic_save_image(make_grid(images, columns=args.n, labels=labels), out)
    shown = f", shown at {cell} px" if cell != size else ""
    print(f"wrote {out}: {len(args.prompts)} prompt(s) x {args.n} images of {size} px{shown}")
    if args.save:
        pipe.save_pretrained(args.save)
        print(f"saved the pipeline to {args.save}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multimodal.generate",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("prompts", nargs="+", help="one or more text prompts")
    parser.add_argument("--checkpoint", required=True, help="saved pipeline folder or unCLIP run root")
    parser.add_argument("--out", default="grid.png", help="grid image path (PNG or JPEG)")
    parser.add_argument("--n", type=int, default=4, help="images per prompt")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps of each stage")
    parser.add_argument("--prior-guidance", type=float, default=4.0, help="classifier-free guidance of the prior")
    parser.add_argument("--decoder-guidance", type=float, default=3.0, help="classifier-free guidance of the decoder")
    parser.add_argument("--sampler", choices=SAMPLERS, default="dpmsolver++", help="the scheduler of every stage")
    parser.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution")
    parser.add_argument(
        "--cell",
        type=int,
        help="show each image at this many pixels in the grid, nearest-neighbour (default: the smallest whole "
        "multiple of the image size that is at least 128 px)",
    )
    parser.add_argument("--no-labels", action="store_true", help="leave out the prompt written left of each row")
    parser.add_argument("--save", help="also save the assembled pipeline here (save_pretrained)")
    add_device_argument(parser)
    add_threads_argument(parser)
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
