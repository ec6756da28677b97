"""Text-to-image throughput of the unCLIP pipeline: DPM-Solver++ (25 steps) against DDPM (250 steps), in one run.

    python bench/generate.py --checkpoint runs/unclip-shapes [--prompts 6] [--n 4] [--repeats 2] [--threads N]

Each configuration generates ``--prompts`` prompts x ``--n`` images through every stage (prior, decoder, upsampler,
all with the same sampler and step count; guidance on), after one warm-up call; the best of ``--repeats`` calls is
reported as images/s. Without ``--checkpoint`` a randomly initialised pipeline of the shapes recipes' shapes is timed.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from multimodal.generate import load_pipeline
from multimodal.pipelines.unclip import ClipEncoder, UnclipPipeline

PROMPTS = ["a red circle", "a green square", "a blue triangle", "a yellow star", "a purple diamond", "an orange cross"]
CONFIGS = (("dpmsolver++", 25), ("ddpm", 250))


def random_pipeline(sampler: str) -> UnclipPipeline:
    from multimodal import create_model

    clip = ClipEncoder(model="clip_nano", model_args={"text": {"context_length": 24}})
    prior = create_model("unclip_prior_nano", text_context=24)
    return UnclipPipeline.from_components(
        clip, prior, create_model("unclip_decoder_nano"), create_model("unclip_upsampler_nano"), sampler=sampler
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="saved pipeline or unCLIP run root (default: random weights)")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--n", type=int, default=4, help="images per prompt")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    rows = []
    for sampler, steps in CONFIGS:
        pipe = load_pipeline(args.checkpoint, sampler=sampler) if args.checkpoint else random_pipeline(sampler)
        pipe = pipe.to(args.device)

        def run(pipe=pipe, steps=steps) -> float:
            start = time.perf_counter()
            images = pipe(prompts, num_images_per_prompt=args.n, num_inference_steps=steps,
                          generator=torch.Generator().manual_seed(0)).images  # fmt: skip
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return len(images) / (time.perf_counter() - start)

        run()
        best = max(run() for _ in range(args.repeats))
        size = pipe.upsampler.config.image_size if pipe.upsampler is not None else pipe.decoder.config.image_size
        rows.append((sampler, steps, best, size))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{len(prompts)} prompts x {args.n} images, {torch.get_num_threads()} threads, {args.device}, load {load}")
    print("| sampler | steps per stage | images/s | output px |")
    print("|---|---:|---:|---:|")
    for sampler, steps, rate, size in rows:
        print(f"| {sampler} | {steps} | {rate:.2f} | {size} |")
    print(f"DPM-Solver++ {CONFIGS[0][1]} steps is {rows[0][2] / rows[1][2]:.1f}x DDPM {CONFIGS[1][1]} steps")


if __name__ == "__main__":
    main()
