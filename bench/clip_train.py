"""Training-step throughput and peak memory of our CLIP against open_clip's, same architecture and weights, on CPU.

    python bench/clip_train.py [--width 256 --layers 6 --image-size 64 --patch 8 --context 32 --batch 64
                                --embed 256 --steps 10 --repeats 5 --threads N --precision fp32,bf16 --profile]

A step is what training does: forward of both towers, the contrastive loss (open_clip's ``ClipLoss`` for theirs,
``multimodal.losses.ClipLoss`` for ours), backward, ``AdamW.step`` and ``zero_grad``, on one fixed random batch; the
AdamW is each project's own (``--optimizer own``: ours fused, open_clip's the default per-tensor loop) or PyTorch's
default for both (``--optimizer same``, the models alone); bf16
runs forward and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``. Ours is ``CLIP.from_open_clip(theirs)``,
so both start from the same weights; the initial losses are printed to show it.

Speed: both models live in one process and are timed alternately (ours, theirs, ours, ...) for ``--repeats`` rounds
of ``--steps`` steps after ``--warmup`` steps each, so machine-load drift hits both alike; the median round is
reported.

Memory: resident memory is what a CPU run pays for, and the whole process (torch's allocator, oneDNN scratch, glibc
arenas) counts, so it is read from the kernel rather than from torch. Each (model, precision) runs in a fresh
subprocess that builds *both* models (identical baseline whichever one trains), creates the batch, loss and
optimizer, then ``gc.collect()`` and ``malloc_trim(0)`` so freed build-time memory is returned to the OS rather than
silently reused, reads ``VmRSS`` as the baseline, resets the kernel's peak-RSS mark (``VmHWM``, via
``/proc/self/clear_refs``) and trains ``--warmup + --mem-steps`` steps. Peak = ``VmHWM - baseline``: gradients, AdamW
state, activations, autocast weight copies and transient buffers, nothing from building. Where ``clear_refs`` is not
writable, ``ru_maxrss`` is used instead (then a build-time peak above the training peak would hide part of it).

``--profile`` prints the top ops, by self CPU time, of one profiled step of ours (``--profile both``: and of theirs).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import open_clip.loss
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.* when run as a script

from bench.profile_step import matmul_ceiling
from multimodal.losses import ClipLoss
from multimodal.models.clip import CLIP
from training.config import OptimConfig
from training.optim import build_optimizer

EOT_ID = 49407  # the CLIP BPE end-of-text id: the largest id, where argmax pooling reads the text features
VOCAB = 49408
PRECISIONS = ("fp32", "bf16")

Step = Callable[[], Tensor]


def build_models(args: argparse.Namespace) -> tuple[nn.Module, CLIP]:
    """(open_clip CLIP, ours) with identical random weights, both in train mode."""
    torch.manual_seed(0)
    theirs = open_clip.model.CLIP(
        args.embed,
        vision_cfg=dict(
            image_size=args.image_size, layers=args.layers, width=args.width, patch_size=args.patch, head_width=64
        ),
        text_cfg=dict(
            context_length=args.context,
            vocab_size=VOCAB,
            width=args.width,
            heads=max(1, args.width // 64),
            layers=args.layers,
        ),
        output_dict=True,
    )
    ours = CLIP.from_open_clip(theirs)
    return theirs.train(), ours.train()


def make_batch(args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """Images (B, 3, H, W) and token ids (B, L): random ids in [1, EOT) with EOT at a random position per row."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen)  # (B, 3, H, W)
    tokens = torch.randint(1, EOT_ID, (args.batch, args.context), generator=gen)  # (B, L)
    eot = torch.randint(1, args.context, (args.batch,), generator=gen)  # (B,) never position 0, the start token's
    tokens[torch.arange(args.batch), eot] = EOT_ID
    return images, tokens


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bf16: CPU autocast to bfloat16; fp32: nothing."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loss_fn(model: nn.Module, loss: nn.Module, images: Tensor, tokens: Tensor, precision: str) -> Tensor:
    """The contrastive loss of ``model`` on the batch; both models return open_clip's output dict."""
    with autocast(precision):
        out = model(images, tokens)
        return loss(out["image_features"], out["text_features"], out["logit_scale"])


def make_optimizer(name: str, model: nn.Module, optimizer: str) -> torch.optim.Optimizer:
    """The AdamW each project trains with ("own"), or PyTorch's default AdamW for both ("same").

    Ours: ``training.optim.build_optimizer`` (fused AdamW, decay groups). open_clip: ``torch.optim.AdamW`` with
    its default per-tensor implementation, as ``open_clip_train`` builds it (its decay groups do not change the
    cost).
    """
    if optimizer == "own" and name == "ours":
        return build_optimizer(model, OptimConfig(lr=1e-4, weight_decay=0.1))
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)


def make_step(
    model: nn.Module, loss: nn.Module, opt: torch.optim.Optimizer, images: Tensor, tokens: Tensor, precision: str
) -> Step:
    """One training step (forward, loss, backward, AdamW step, zero_grad) as a closure returning the loss."""

    def step() -> Tensor:
        value = loss_fn(model, loss, images, tokens, precision)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return value.detach()

    return step


def make_steps(args: argparse.Namespace, precision: str) -> tuple[dict[str, Step], dict[str, float]]:
    """Training-step closures of both models (keyed "ours", "open_clip") and their initial losses."""
    theirs, ours = build_models(args)
    images, tokens = make_batch(args)
    losses = {"ours": ClipLoss(), "open_clip": open_clip.loss.ClipLoss()}
    models = {"ours": ours, "open_clip": theirs}
    with torch.no_grad():
        initial = {k: loss_fn(models[k], losses[k], images, tokens, precision).item() for k in models}
    steps = {
        k: make_step(models[k], losses[k], make_optimizer(k, models[k], args.optimizer), images, tokens, precision)
        for k in models
    }
    return steps, initial


def time_steps(step: Step, n: int) -> float:
    """Seconds for ``n`` steps."""
    start = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - start


def bench_speed(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """Samples/s of each model per round, timed alternately in this process, and the loss check."""
    steps, initial = make_steps(args, precision)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():  # ours, open_clip, ours, open_clip, ...
            rates[name].append(args.steps * args.batch / time_steps(step, args.steps))
    final = {k: step().item() for k, step in steps.items()}  # one more step each: loss after the same updates
    return {"rates": rates, "initial": initial, "final": final}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where /proc/self/clear_refs is not writable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def memory_worker(args: argparse.Namespace) -> None:
    """Subprocess body: train one model and print its peak RSS above the post-build baseline (MiB) as JSON."""
    name, precision = args.mem_worker.split(":")
    steps, _ = make_steps(args, precision)
    step = steps[name]
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = _rss_kb("VmRSS")
    method = "VmHWM" if _reset_peak_rss() else "ru_maxrss"
    for _ in range(args.warmup + args.mem_steps):
        step()
    peak = _rss_kb("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (peak - baseline) / 1024, "method": method, "baseline_mb": baseline / 1024}))


def bench_memory(args: argparse.Namespace, name: str, precision: str) -> dict[str, Any]:
    """Peak training memory of one model at one precision, measured in a fresh subprocess."""
    flags = (
        "width", "layers", "image_size", "patch", "context", "batch", "embed", "warmup", "mem_steps", "threads",
        "optimizer",
    )  # fmt: skip
    argv = [sys.executable, os.path.abspath(__file__), "--mem-worker", f"{name}:{precision}"]
    for flag in flags:
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker {name}:{precision} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_step(args: argparse.Namespace, precision: str, name: str) -> None:
    """Print the top ops, by self CPU time, of one step of ``name`` after warm-up."""
    step = make_steps(args, precision)[0][name]
    for _ in range(max(args.warmup, 1)):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    print(f"\n### profile: one {name} step, {precision}, top {args.profile_rows} ops by self CPU time\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def _product(name: str, shapes: list[list[int]]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(A, B, bias) shapes of a profiled mm/addmm/bmm/baddbmm call (bias () for none), or None if not a product."""
    if name in ("aten::mm", "aten::bmm") and len(shapes) >= 2:
        return tuple(shapes[0]), tuple(shapes[1]), ()
    if name in ("aten::addmm", "aten::baddbmm") and len(shapes) >= 3:
        return tuple(shapes[1]), tuple(shapes[2]), tuple(shapes[0])
    return None


def _isolated_seconds(a: tuple[int, ...], b: tuple[int, ...], bias: tuple[int, ...], dtype: torch.dtype) -> float:
    """Best time of one product of these shapes alone (random operands, contiguous), as the step would call it."""
    x, y = torch.randn(a).to(dtype), torch.randn(b).to(dtype)
    c = torch.randn(bias).to(dtype) if bias else None
    if len(a) == 3:
        run = (lambda: torch.baddbmm(c, x, y)) if c is not None else (lambda: torch.bmm(x, y))
    else:
        run = (lambda: torch.addmm(c, x, y)) if c is not None else (lambda: torch.mm(x, y))
    for _ in range(3):
        run()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(5):
            run()
        best = min(best, (time.perf_counter() - start) / 5)
    return best


def matmul_shapes(args: argparse.Namespace, precision: str) -> None:
    """Why the step's matmuls run where they do: each product shape of one profiled step of ours, its GFLOP/s inside
    the step and alone (same shapes, contiguous random operands, best of 25 calls), against the square ceiling.

    The FLOP-weighted rate of the products alone is the best this step's matmuls could reach with no copies,
    layouts or cache misses around them: where it is far under the square ceiling, the shapes are the limit."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    step = make_steps(args, precision)[0]["ours"]
    for _ in range(max(args.warmup, 1)):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    calls: dict[tuple, list[float]] = {}
    for event in prof.events():
        product = _product(event.name, event.input_shapes)
        if product is not None:
            calls.setdefault((event.name, *product), []).append(event.self_cpu_time_total / 1e6)
    rows, in_step_s, alone_s, total_flop = [], 0.0, 0.0, 0.0
    for (name, a, b, bias), seconds in calls.items():
        flop = 2 * a[-2] * a[-1] * b[-1] * (a[0] if len(a) == 3 else 1)
        alone = _isolated_seconds(a, b, bias, dtype)
        rows.append((sum(seconds), name, a, b, len(seconds), flop, sum(seconds) / len(seconds), alone))
        in_step_s, alone_s, total_flop = (
            in_step_s + sum(seconds),
            alone_s + alone * len(seconds),
            total_flop + flop * len(seconds),
        )
    ceiling = matmul_ceiling(dtype, 1024)
    print(f"\n### {precision} matmuls of one step of ours, by shape (square 1024 ceiling {ceiling:.0f} GFLOP/s)\n")
    print("| op | A | B | calls | ms in step | GFLOP/s in step | GFLOP/s alone | alone, of ceiling |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for total, name, a, b, count, flop, per_call, alone in sorted(rows, reverse=True):
        print(
            f"| {name.removeprefix('aten::')} | {'x'.join(map(str, a))} | {'x'.join(map(str, b))} | {count} "
            f"| {total * 1e3:.1f} | {flop / per_call / 1e9:.0f} | {flop / alone / 1e9:.0f} "
            f"| {flop / alone / 1e9 / ceiling:.0%} |"
        )
    print(
        f"\nall products: {total_flop / 1e9:.2f} GFLOP, {in_step_s * 1e3:.1f} ms in the step = "
        f"{total_flop / in_step_s / 1e9:.0f} GFLOP/s ({total_flop / in_step_s / 1e9 / ceiling:.0%} of the ceiling); "
        f"the same products alone {alone_s * 1e3:.1f} ms = {total_flop / alone_s / 1e9:.0f} GFLOP/s "
        f"({total_flop / alone_s / 1e9 / ceiling:.0%} of the ceiling)"
    )


def _cpu_info() -> tuple[str, set[str]]:
    """(CPU model name, CPU flags) from /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and model:
                break
    return model, flags


def print_context(args: argparse.Namespace) -> None:
    """The machine and software the numbers come from."""
    model, flags = _cpu_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, python {platform.python_version()}")
    print(f"CPU: {model}; {cores} usable cores; torch capability {torch.backends.cpu.get_cpu_capability()}")
    has = {flag: "yes" if flag in flags else "no" for flag in ("avx512_bf16", "amx_bf16")}
    print(f"AVX-512 BF16: {has['avx512_bf16']}; AMX BF16: {has['amx_bf16']}")
    print(f"threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    heads = max(1, args.width // 64)
    print(
        f"model: width {args.width}, {args.layers} layers, {heads} heads per tower; {args.image_size} px images in "
        f"{args.patch} px patches, {args.context} tokens, embed {args.embed}; batch {args.batch}"
    )
    print(f"timing: {args.warmup} warm-up steps, then {args.repeats} alternating rounds of {args.steps} steps each")
    print(
        "optimizer: "
        + (
            "each project's own (ours: training.optim.build_optimizer, fused AdamW; open_clip: torch.optim.AdamW)"
            if args.optimizer == "own"
            else "torch.optim.AdamW (default implementation) for both"
        )
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per model; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--mem-steps", type=int, default=2, help="steps after warm-up in the memory subprocesses")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", default="fp32,bf16", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    parser.add_argument(
        "--optimizer",
        choices=("own", "same"),
        default="own",
        help="own: each project's training AdamW (ours fused); same: torch.optim.AdamW's default for both",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="ours",
        choices=("ours", "open_clip", "both"),
        help="print the top ops of one profiled step of ours (or open_clip's, or both) per precision",
    )
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument(
        "--matmul-shapes",
        action="store_true",
        help="time each matmul shape of our step alone too, against the square ceiling (what limits the matmuls)",
    )
    parser.add_argument("--mem-worker", help=argparse.SUPPRESS)  # internal: "name:precision" subprocess mode
    args = parser.parse_args(argv)
    args.precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown or not args.precisions:
        parser.error(f"--precision takes a comma-separated list of {', '.join(PRECISIONS)}, got {args.precision!r}")
    if min(args.steps, args.repeats, args.batch, args.threads) < 1 or args.warmup < 0:
        parser.error("--steps, --repeats, --batch and --threads must be >= 1, --warmup >= 0")
    if args.width % 64:
        parser.error(f"--width must be a multiple of 64 (open_clip's head width), got {args.width}")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.mem_worker:
        memory_worker(args)
        return
    print_context(args)
    rows, memory = [], {}
    for precision in args.precisions:
        result = bench_speed(args, precision)
        initial, final = result["initial"], result["final"]
        tol = 1e-4 if precision == "fp32" else 2e-2  # relative
        agree = abs(initial["ours"] - initial["open_clip"]) <= tol * abs(initial["open_clip"])
        print(
            f"{precision} loss check: initial ours {initial['ours']:.6f} open_clip {initial['open_clip']:.6f} "
            f"|diff| {abs(initial['ours'] - initial['open_clip']):.2e} ({'agree' if agree else 'DISAGREE'}); "
            f"after {args.warmup + args.repeats * args.steps} steps ours {final['ours']:.6f} "
            f"open_clip {final['open_clip']:.6f}"
        )
        rates = result["rates"]
        print(
            f"{precision} per-round samples/s: ours {' '.join(f'{r:.1f}' for r in rates['ours'])}; "
            f"open_clip {' '.join(f'{r:.1f}' for r in rates['open_clip'])}"
        )
        rows.append((precision, statistics.median(rates["ours"]), statistics.median(rates["open_clip"])))
    for precision in args.precisions:
        for name in ("ours", "open_clip"):
            memory[name, precision] = bench_memory(args, name, precision)
    methods = {m["method"] for m in memory.values()}
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"peak memory: RSS high-water mark above the post-build baseline, fresh subprocess each ({', '.join(methods)})"
    )
    print()
    print(
        "| precision | ours samples/s | open_clip samples/s | ratio | ours peak MB | open_clip peak MB | mem ratio |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for precision, ours, theirs in rows:
        mem_ours, mem_theirs = memory["ours", precision]["peak_mb"], memory["open_clip", precision]["peak_mb"]
        print(
            f"| {precision} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} | {mem_ours:.0f} | {mem_theirs:.0f} "
            f"| {mem_ours / mem_theirs:.2f} |"
        )
    if args.matmul_shapes:
        for precision in args.precisions:
            matmul_shapes(args, precision)
    if args.profile:
        names = ("ours", "open_clip") if args.profile == "both" else (args.profile,)
        for precision in args.precisions:
            for name in names:
                profile_step(args, precision, name)


if __name__ == "__main__":
    main()
