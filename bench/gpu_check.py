"""A prepared GPU check, one table: CLIP ViT-B/16 bf16 training on one GPU and under FSDP2 on every visible GPU
(samples/s and model FLOP utilisation), the unCLIP decoder's training steps/s and one text-to-image call.

    python bench/gpu_check.py [--device cuda] [--out gpu_check.json]     # GPU: expected minutes, not yet run
    python bench/gpu_check.py --device cpu --tiny                         # every row at tiny shapes, CPU, < 2 min

Rows:

* **CLIP ViT-B/16** (``clip_vit_b16``: 224 px images in 16 px patches, 12 x 768 image and 12 x 512 text layers, 512-d
  embeddings, 77 tokens), batch 128 of random images and token ids (``bench/clip_train.py``'s batch and AdamW), the
  contrastive loss under bf16 autocast, backward, fused AdamW step. MFU = FLOPs per step x steps/s / the device's
  dense bf16 peak (:data:`PEAK_BF16`, looked up from ``torch.cuda.get_device_name()``; "n/a" for other devices).
  FLOPs per step = 3 x the forward's, counted by ``torch.utils.flop_counter.FlopCounterMode``: backward does two
  matmuls per forward matmul. A backward cannot be counted directly: the MLPs recompute their activation inside
  backward through ``torch.autograd.grad`` (``multimodal/nn/mlp.py``), which FlopCounterMode's module tracker does not
  support. On a small CLIP the counted step is 2.95 x its forward (no gradient for the input images), so 3 x
  overstates the FLOPs, and the MFU, by about 2%.
* **CLIP ViT-B/16, FSDP2**: the same step, each process a GPU with the same per-process batch, the model sharded by
  ``training.sharding.shard_model`` (bf16 compute, fp32 shards and gradient reduction). This script launches itself
  under ``torchrun`` over the visible GPUs (``--device cpu``: 2 gloo processes); samples/s over all of them.
* **unCLIP decoder** (``unclip_decoder_base``: 64 px, 192-768 channels), batch 32 of random images, CLIP embeddings
  and caption encodings, bf16 autocast: training steps/s.
* **text-to-image**: one prompt through ``bench/generate.py``'s randomly initialised nano unCLIP stack (CLIP, prior,
  decoder, upsampler from the registry; nothing trained, the check needs no run), DPM-Solver++ 25 steps per stage,
  fp32: seconds per call after a warm-up call.

``--tiny`` shrinks every shape (a 2-layer, 64-wide CLIP on 32 px images, the nano decoder, 5 sampling steps) so the
whole script, the torchrun launch included, runs on a CPU in under 2 minutes: it checks the script, not the device.
The script reads the device's settings and changes none of them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.* when run as a script

from bench.clip_train import make_batch, make_optimizer
from bench.generate import PROMPTS, random_pipeline
from multimodal import create_model
from multimodal.losses import ClipLoss
from training.config import OptimConfig
from training.optim import build_optimizer
from training.sharding import shard_model

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 peak FLOP/s by device name, first match wins (H100 PCIe and NVL before the SXM part's plain "H100").
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
CHECKS = ("CLIP ViT-B/16 train", "CLIP ViT-B/16 train, FSDP2", "unCLIP decoder train", "text-to-image")

FULL = SimpleNamespace(
    clip={},  # the clip_vit_b16 preset
    batch=128, image_size=224, context=77, warmup=3, steps=10,
    decoder="unclip_decoder_base", decoder_batch=32, sample_steps=25,
)  # fmt: skip
TINY = SimpleNamespace(
    clip=dict(
        embed_dim=32,
        vision=dict(img_size=32, patch_size=8, width=64, layers=2, heads=1),
        text=dict(context_length=16, width=64, layers=2, heads=1),
    ),
    batch=4, image_size=32, context=16, warmup=1, steps=2,
    decoder="unclip_decoder_nano", decoder_batch=4, sample_steps=5,
)  # fmt: skip


def device_name(device: torch.device) -> str:
    """The GPU's name (what :data:`PEAK_BF16` is looked up by), or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return model or platform.processor() or "cpu"


def peak_flops(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a device named ``name``; None when it is not in :data:`PEAK_BF16`."""
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], Any], device: torch.device, *, warmup: int, calls: int) -> float:
    """Mean wall seconds of ``fn`` over ``calls`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


# --- CLIP ----------------------------------------------------------------------------------------------------------


def clip_setup(shape: SimpleNamespace, device: torch.device) -> tuple[nn.Module, Tensor, Tensor]:
    """The CLIP (train mode, on ``device``) and one batch of images (B, 3, H, W) and token ids (B, L)."""
    torch.manual_seed(0)
    model = create_model("clip_vit_b16", **shape.clip).to(device).train()
    images, tokens = make_batch(SimpleNamespace(batch=shape.batch, image_size=shape.image_size, context=shape.context))
    return model, images.to(device), tokens.to(device)


def clip_step(model: nn.Module, images: Tensor, tokens: Tensor) -> Callable[[], None]:
    """One training step: bf16 autocast forward and contrastive loss, backward, fused AdamW step, zero_grad."""
    loss, opt = ClipLoss(), make_optimizer("ours", model, "own")

    def step() -> None:
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            out = model(images, tokens)
            value = loss(out["image_features"], out["text_features"], out["logit_scale"])
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def clip_step_flops(model: nn.Module, images: Tensor, tokens: Tensor) -> int:
    """FLOPs of one training step: 3 x the counted forward (see the module docstring for why not the backward)."""
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter, autocast:
        model(images, tokens)
    return 3 * counter.get_total_flops()


def check_clip(shape: SimpleNamespace, device: torch.device) -> dict[str, Any]:
    model, images, tokens = clip_setup(shape, device)
    flops = clip_step_flops(model, images, tokens)
    seconds = seconds_per_call(clip_step(model, images, tokens), device, warmup=shape.warmup, calls=shape.steps)
    params = sum(p.numel() for p in model.parameters())
    return {"samples_per_s": shape.batch / seconds, "step_flops": flops, "parameters": params}


def vectorise_scalars(model: nn.Module) -> list[str]:
    """Make each 0-d parameter a 1-element vector, which broadcasts where the scalar did; returns their names.
    ``fully_shard`` (torch 2.14) refuses 0-d parameters, and CLIP's ``logit_scale`` is one, so
    ``training.sharding.shard_model`` fails on a CLIP until the project changes either."""
    names = []
    for prefix, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.ndim == 0:
                setattr(module, name, nn.Parameter(param.detach().reshape(1)))
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


def fsdp_seconds_per_step(shape: SimpleNamespace, device: torch.device, world: int) -> tuple[float, list[str]]:
    """Seconds per FSDP2 step of the slowest process, and the parameters :func:`vectorise_scalars` changed."""
    model, images, tokens = clip_setup(shape, device)
    vectorised = vectorise_scalars(model)
    shard_model(model, device.type, world, precision="bf16")
    seconds = seconds_per_call(clip_step(model, images, tokens), device, warmup=shape.warmup, calls=shape.steps)
    slowest = torch.tensor([seconds], device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step ends when the slowest process ends it
    return slowest.item(), vectorised


def fsdp_worker(shape: SimpleNamespace, device_type: str, out: Path) -> None:
    """One torchrun process of the FSDP2 row: shard the CLIP over every process, time its steps; rank 0 writes."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        seconds, vectorised = fsdp_seconds_per_step(shape, device, world)
        if rank == 0:
            samples_per_s = world * shape.batch / seconds
            out.write_text(json.dumps({"processes": world, "samples_per_s": samples_per_s, "vectorised": vectorised}))
    finally:
        # The sharded model sits in reference cycles: collected only after the group is destroyed, it aborted about
        # half the gloo runs at exit ("terminate called without an active exception"). Collect it first.
        gc.collect()
        dist.destroy_process_group()


def check_clip_fsdp(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Launch :func:`fsdp_worker` under torchrun: one process per visible GPU, or 2 gloo processes on a CPU."""
    processes = torch.cuda.device_count() if device.type == "cuda" else 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        out = Path(tmp) / "fsdp.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "bench.gpu_check", "--device", device.type, "--fsdp-worker", str(out),
            *(["--tiny"] if args.tiny else []),
        ]  # fmt: skip
        env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if device.type == "cpu" else {})}
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=420, env=env)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"the FSDP2 workers failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


# --- unCLIP --------------------------------------------------------------------------------------------------------


def check_decoder(shape: SimpleNamespace, device: torch.device) -> dict[str, Any]:
    """Training steps/s of the registry's decoder on a random batch: images in [-1, 1], CLIP image embeddings and
    caption encodings with no padding."""
    torch.manual_seed(0)
    model = create_model(shape.decoder).to(device).train()
    cfg, B = model.config, shape.decoder_batch
    images = torch.rand(B, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1  # (B, 3, H, W)
    embeds = torch.randn(B, cfg.embed_dim, device=device)  # (B, E)
    text = torch.randn(B, shape.context, cfg.text_width, device=device)  # (B, L, W)
    padding = torch.zeros(B, shape.context, dtype=torch.bool, device=device)  # (B, L)
    opt = build_optimizer(model, OptimConfig(lr=1e-4))

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = model(images, embeds, text, padding)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = seconds_per_call(step, device, warmup=shape.warmup, calls=shape.steps)
    return {"steps_per_s": 1 / seconds, "parameters": sum(p.numel() for p in model.parameters())}


def check_text_to_image(shape: SimpleNamespace, device: torch.device) -> dict[str, Any]:
    """Seconds of one call on one prompt of a randomly initialised nano unCLIP stack, after a warm-up call."""
    pipe = random_pipeline("dpmsolver++").to(device)

    def call() -> None:
        pipe(PROMPTS[0], num_inference_steps=shape.sample_steps, generator=torch.Generator().manual_seed(0),
             output_type="pt")  # fmt: skip

    size = pipe.upsampler.config.image_size
    return {"seconds_per_call": seconds_per_call(call, device, warmup=1, calls=1), "output_px": size}


# --- the table -----------------------------------------------------------------------------------------------------


def mfu(step_flops: int, samples_per_s: float, batch: int, processes: int, peak: float | None) -> str:
    """Model FLOP utilisation per device, as text: achieved FLOP/s per process over the peak."""
    if peak is None:
        return "n/a (unknown peak)"
    return f"{step_flops * samples_per_s / (batch * processes) / peak:.1%}"


def run_checks(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Every check in :data:`CHECKS` order, as rows: check, setup, figure, unit, MFU."""
    shape, peak = TINY if args.tiny else FULL, peak_flops(device_name(device))
    size = "tiny CLIP (2 x 64 layers, 32 px)" if args.tiny else "ViT-B/16, 224 px"
    clip = check_clip(shape, device)
    rows = [
        dict(check=CHECKS[0], setup=f"{size}, batch {shape.batch}, bf16, 1 {device.type.upper()} process",
             figure=clip["samples_per_s"], unit="samples/s", mfu=mfu(clip["step_flops"], clip["samples_per_s"],
             shape.batch, 1, peak), step_flops=clip["step_flops"], parameters=clip["parameters"]),
    ]  # fmt: skip
    if device.type == "cuda":
        torch.cuda.empty_cache()  # this process's cached blocks, for the FSDP2 processes
    fsdp = check_clip_fsdp(args, device)
    n = fsdp["processes"]
    over = f"{n} GPU(s)" if device.type == "cuda" else f"{n} CPU processes (gloo)"
    if device.type == "cuda" and n == 1:
        over = "1 GPU (the only one visible: sharding over one process)"
    if fsdp["vectorised"]:
        over += f"; {', '.join(fsdp['vectorised'])} made 1-d (fully_shard refuses 0-d parameters)"
    rows.append(
        dict(check=CHECKS[1], setup=f"{size}, batch {shape.batch} per process, FSDP2 over {over}",
             figure=fsdp["samples_per_s"], unit="samples/s (all processes)",
             mfu=mfu(clip["step_flops"], fsdp["samples_per_s"], shape.batch, n, peak), processes=n)
    )  # fmt: skip
    decoder = check_decoder(shape, device)
    rows.append(
        dict(check=CHECKS[2], setup=f"{shape.decoder} ({decoder['parameters'] / 1e6:.1f}M), batch "
             f"{shape.decoder_batch}, bf16", figure=decoder["steps_per_s"], unit="steps/s", mfu="-")
    )  # fmt: skip
    t2i = check_text_to_image(shape, device)
    rows.append(
        dict(check=CHECKS[3], setup=f"random nano unCLIP stack (nothing trained), 1 prompt, DPM-Solver++ "
             f"{shape.sample_steps} steps per stage, {t2i['output_px']} px, fp32", figure=t2i["seconds_per_call"],
             unit="s/call", mfu="-")
    )  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| check | setup | figure | unit | MFU |", "|---|---|---:|---|---:|"]
    lines += [f"| {r['check']} | {r['setup']} | {r['figure']:.3g} | {r['unit']} | {r['mfu']} |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny shapes for every row (a CPU smoke run)")
    parser.add_argument("--out", type=Path, help="also write the rows and the device as JSON here")
    parser.add_argument("--fsdp-worker", type=Path, help=argparse.SUPPRESS)  # internal: a torchrun process
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; on a CPU run `--device cpu --tiny`")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shape = TINY if args.tiny else FULL
    if args.fsdp_worker:
        fsdp_worker(shape, args.device, args.fsdp_worker)
        return
    device = torch.device(args.device)
    name = device_name(device)
    gpus = f", {torch.cuda.device_count()} visible GPU(s), CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    print(f"device: {name}{gpus}; torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    rows = run_checks(args, device)
    print(table(rows))
    print(f"{time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
