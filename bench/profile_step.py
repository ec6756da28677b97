"""Where a recipe's time goes: start-up, one training step by kind of op, evaluation, and how close the matmuls come
to this CPU's ceiling.

    python bench/profile_step.py configs/clip/shapes.yaml [key.sub=value ...] [--warmup 3 --steps 5
                                  --json out.json --no-eval --ceiling-size 1024]

The recipe is built and trained exactly as ``python -m training.train`` would (the same :class:`Trainer`, with
``run.out_dir`` a temporary directory, no checkpoints, no trackers). Reported:

- **start-up**: importing torch and the trainer; ``Trainer.build`` (Accelerator, task resolved against its data
  card, model built); ``Trainer.setup`` (the data prepared, rendered the first time a dataset is used; loaders,
  optimizer).
- **a training step**: ``--warmup`` steps (the first one's time is reported: with ``train.compile=true`` it holds the
  compilation), then ``--steps`` steps timed by the wall clock (median), then the same number of steps under
  ``torch.profiler``. The profiled time is split by where it was spent: waiting for the next
  batch (``data``), inside ``optimizer.step``/``zero_grad`` (``optimizer``), and every other op by kind
  (``matmul``, ``attention``, ``conv``, ``norm``, ``activation``, ``softmax/loss``, ``elementwise``, ``copy``,
  ``views/alloc``: ops that move no data, ``autograd`` bookkeeping); what no op accounts for is ``python/other``.
  Each op counts its *self* time, so the kinds add up to the step.
- **matmul efficiency**: the profiler's FLOP count of the step's matrix products over their self time, against the
  ceiling measured here: the best of several square ``--ceiling-size`` products in fp32 and in bf16 at the same
  thread count.
- **evaluation**: one call of the task's evaluation (``--no-eval`` skips it).

The profiler adds overhead per op, so the split is of the profiled step (shown next to the plain step's time).
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402 (the imports below are timed)
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from multimodal.cli import USER_ERRORS, one_line  # noqa: E402
from multimodal.io import atomic_write_json  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.trainer import Trainer  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _STARTED

DATA, OPTIMIZER = "data", "optimizer"
# Op kinds by the aten name's stem (the name without "aten::" and without a "_backward" suffix).
KINDS: dict[str, tuple[str, ...]] = {
    "matmul": ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_addmm_activation", "addmv", "mv", "dot"),
    "attention": (
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_attention_math",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    ),
    "conv": (
        "convolution",
        "_convolution",
        "conv2d",
        "conv1d",
        "mkldnn_convolution",
        "_slow_conv2d_forward",
        "thnn_conv2d",
        "convolution_backward",
        "_nnpack_spatial_convolution",
    ),
    "norm": (
        "layer_norm",
        "native_layer_norm",
        "group_norm",
        "native_group_norm",
        "batch_norm",
        "native_batch_norm",
        "_batch_norm_impl_index",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training",
        "rms_norm",
        "_fused_rms_norm",
        "cudnn_batch_norm",
        "norm",
        "linalg_vector_norm",
    ),
    "activation": (
        "gelu",
        "silu",
        "relu",
        "relu_",
        "sigmoid",
        "tanh",
        "mish",
        "hardswish",
        "elu",
        "leaky_relu",
        "threshold",
        "glu",
        "softplus",
    ),
    "softmax/loss": (
        "softmax",
        "_softmax",
        "log_softmax",
        "_log_softmax",
        "cross_entropy_loss",
        "nll_loss",
        "nll_loss_forward",
        "nll_loss_nd",
        "mse_loss",
        "binary_cross_entropy_with_logits",
        "logsumexp",
    ),
    "copy": (
        "copy_",
        "_to_copy",
        "to",
        "contiguous",
        "clone",
        "cat",
        "stack",
        "pad",
        "constant_pad_nd",
        "index",
        "index_select",
        "gather",
        "scatter",
        "scatter_add",
        "embedding",
        "embedding_dense",
        "repeat",
        "flip",
        "roll",
        "im2col",
        "col2im",
        "masked_fill",
        "where",
        "zero_",
        "fill_",
        "index_put_",
        "_index_put_impl_",
    ),
    # Ops that move no data: views and allocations. Their self time is the dispatcher's (and the profiler's) cost.
    "views/alloc": (
        "view",
        "reshape",
        "_reshape_alias",
        "_unsafe_view",
        "permute",
        "transpose",
        "t",
        "unsqueeze",
        "squeeze",
        "flatten",
        "unflatten",
        "split",
        "split_with_sizes",
        "chunk",
        "unbind",
        "as_strided",
        "expand",
        "expand_as",
        "narrow",
        "slice",
        "select",
        "alias",
        "detach",
        "unfold",
        "view_as",
        "empty",
        "empty_like",
        "empty_strided",
        "zeros",
        "zeros_like",
        "ones",
        "ones_like",
        "full",
        "arange",
        "resize_",
        "new_empty",
        "new_zeros",
        "new_empty_strided",
        "lift_fresh",
        "result_type",
        "is_nonzero",
        "item",
        "_local_scalar_dense",
    ),
}
ORDER = ("data", "matmul", "attention", "conv", "norm", "activation", "softmax/loss", "elementwise", "copy",
         "views/alloc", "optimizer", "autograd", "python/other")  # fmt: skip
_KIND_OF = {name: kind for kind, names in KINDS.items() for name in names}
MATMUL_FLOP_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")  # the ops the profiler counts FLOPs of


def op_kind(name: str) -> str:
    """The kind of one profiled op by its name: an aten op by its stem, autograd's own nodes as ``autograd``."""
    if name.startswith(("autograd::", "torch::autograd::")) or name.endswith("Backward0") or "Backward" in name:
        return "autograd"
    if not name.startswith("aten::"):
        return "python/other"
    stem = name.removeprefix("aten::")
    for suffix in ("_backward_data", "_backward_input", "_backward_weight", "_backward"):
        stem = stem.removesuffix(suffix)
    return _KIND_OF.get(stem, "elementwise")


def _region(event: Any) -> str | None:
    """``data`` or ``optimizer`` when the op ran inside that labelled region (or is its label), else None."""
    while event is not None:
        if event.name == DATA:
            return DATA
        if event.name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
            return OPTIMIZER
        event = event.cpu_parent
    return None


def split_profile(prof: Any, steps: int, wall_seconds: float) -> tuple[dict[str, float], float, float]:
    """Seconds per step by kind (they add up to ``wall_seconds / steps``), matmul FLOPs per step and matmul self
    seconds per step."""
    seconds: dict[str, float] = defaultdict(float)
    flops = matmul_self = 0.0
    for event in prof.events():
        if event.device_type.name != "CPU":
            continue
        self_s = event.self_cpu_time_total / 1e6
        kind = _region(event) or op_kind(event.name)
        seconds[kind] += self_s
        if event.name in MATMUL_FLOP_OPS and kind == "matmul":
            flops += event.flops or 0
            matmul_self += self_s
    per_step = {k: v / steps for k, v in seconds.items()}
    # Ops of threads other than the main one (a loader's pin thread, the autograd engine on another device) overlap
    # with the main thread's work; what the wall clock saw beyond the ops is Python and the framework around them.
    accounted = sum(v for k, v in per_step.items() if k != "python/other")
    per_step["python/other"] = max(0.0, wall_seconds / steps - accounted)
    return {k: per_step.get(k, 0.0) for k in ORDER}, flops / steps, matmul_self / steps


def top_ops(prof: Any, steps: int, count: int) -> list[dict[str, Any]]:
    """The ``count`` ops of most self time: name, kind (or labelled region), calls and milliseconds per step."""
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in prof.events():
        if event.device_type.name == "CPU":
            entry = totals[(event.name, _region(event) or op_kind(event.name))]
            entry[0] += event.self_cpu_time_total / 1e3
            entry[1] += 1
    ranked = sorted(totals.items(), key=lambda item: -item[1][0])[:count]
    return [{"op": n, "kind": k, "calls": int(c / steps), "ms": ms / steps} for (n, k), (ms, c) in ranked]


def matmul_ceiling(dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` square ``size`` products in ``dtype`` at the current thread count."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    inner = max(1, int(2e9 // (2 * size**3)))  # about two GFLOP per timing
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * size**3 / best / 1e9


def _timed(trainer: Trainer) -> None:
    """Label the wait for each batch ``data`` so the profiler can tell it from the step's compute."""
    fetch = trainer.next_batch

    def next_batch() -> dict[str, Any]:
        with record_function(DATA):
            return fetch()

    trainer.next_batch = next_batch  # type: ignore[method-assign]


def profile_recipe(
    recipe: str, overrides: list[str], *, warmup: int, steps: int, evaluate: bool, ceiling_size: int, top: int = 10
) -> dict[str, Any]:
    """Every figure this tool reports, for one recipe."""
    with tempfile.TemporaryDirectory(prefix="profile-step-", ignore_cleanup_errors=True) as out_dir:
        fixed = [f"run.out_dir={out_dir}", "run.overwrite=true", "train.checkpoint_every=0", "train.eval_every=0",
                 "train.log_with=[]", "train.progress=false", f"train.steps={warmup + 2 * steps + 1}"]  # fmt: skip
        cfg = TrainConfig.load(recipe, [*overrides, *fixed])
        return _profile(cfg, recipe, overrides, warmup, steps, evaluate, ceiling_size, top)


def _profile(
    cfg: TrainConfig, recipe: str, overrides: list[str], warmup: int, steps: int, evaluate: bool, ceiling_size: int,
    top: int,
) -> dict[str, Any]:  # fmt: skip
    trainer = Trainer(cfg)
    start = time.perf_counter()
    trainer.build()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer.setup()
    setup_s = time.perf_counter() - start
    _timed(trainer)
    trainer.model.train()
    warmup_times = []
    for _ in range(warmup):
        start = time.perf_counter()
        trainer.train_step()
        warmup_times.append(time.perf_counter() - start)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        profiled_s = time.perf_counter() - start
    kinds, flops, matmul_s = split_profile(prof, steps, profiled_s)
    top_list = top_ops(prof, steps, top)
    eval_s = None
    if evaluate and cfg.data.eval_split:
        start = time.perf_counter()
        trainer.evaluate()
        eval_s = time.perf_counter() - start
    trainer.batches = iter(())  # the loader's workers end now
    precision = {"no": "fp32"}.get(cfg.train.precision, cfg.train.precision)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    ceilings = {
        name: matmul_ceiling(dtypes[name], ceiling_size) for name in dict.fromkeys(("fp32", "bf16", precision))
    }
    achieved = flops / matmul_s / 1e9 if matmul_s else 0.0
    ceiling = ceilings[precision]
    return {
        "recipe": recipe,
        "overrides": overrides,
        "model": cfg.model.name,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "batch_size": cfg.data.batch_size,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "startup_seconds": {"imports": IMPORT_SECONDS, "build": build_s, "setup": setup_s},
        "first_step_seconds": warmup_times[0] if warmup_times else None,  # with train.compile: the compilation
        "step_seconds": statistics.median(times),
        "profiled_step_seconds": profiled_s / steps,
        "step_split_seconds": kinds,
        "matmul_gflop_per_step": flops / 1e9,
        "matmul_gflops": achieved,
        "ceiling_gflops": ceilings,
        "matmul_fraction_of_ceiling": achieved / ceiling if ceiling else 0.0,
        "eval_seconds": eval_s,
        "top_ops": top_list,
    }


def format_report(r: dict[str, Any]) -> str:
    """The figures as a short table, one row per kind of op."""
    start = r["startup_seconds"]
    lines = [
        f"{r['recipe']} {' '.join(r['overrides'])}".rstrip(),
        f"  {r['model']}, {r['parameters'] / 1e6:.2f}M parameters, batch {r['batch_size']}, {r['precision']}, "
        f"{r['threads']} thread(s)",
        f"  start-up: imports {start['imports']:.1f} s, build {start['build']:.1f} s, setup {start['setup']:.1f} s",
        f"  step: {r['step_seconds'] * 1e3:.1f} ms (median; the first {r['first_step_seconds'] or 0:.2f} s), "
        f"profiled {r['profiled_step_seconds'] * 1e3:.1f} ms:",
        "    kind           ms/step   share",
    ]
    total = r["profiled_step_seconds"] or 1.0
    for kind, seconds in r["step_split_seconds"].items():
        lines.append(f"    {kind:<14} {seconds * 1e3:8.1f} {seconds / total:7.1%}")
    ceil = r["ceiling_gflops"]
    lines.append(
        f"  matmul: {r['matmul_gflop_per_step']:.2f} GFLOP/step at {r['matmul_gflops']:.1f} GFLOP/s; ceiling "
        + ", ".join(f"{k} {v:.1f}" for k, v in ceil.items())
        + f" GFLOP/s; {r['matmul_fraction_of_ceiling']:.0%} of the "
        f"{r['precision']} ceiling"
    )
    if r["eval_seconds"] is not None:
        lines.append(f"  evaluation: {r['eval_seconds']:.1f} s")
    if r["top_ops"]:
        lines.append("  ops of most self time:      kind           calls/step   ms/step")
        lines += [f"    {o['op'][:40]:<40} {o['kind']:<14} {o['calls']:6d} {o['ms']:9.1f}" for o in r["top_ops"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipe, e.g. configs/clip/shapes.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, as for training.train")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="steps timed, then as many profiled (default 5)")
    parser.add_argument("--no-eval", action="store_true", help="skip timing one evaluation")
    parser.add_argument("--ceiling-size", type=int, default=1024, help="side of the square ceiling matmuls")
    parser.add_argument("--top", type=int, default=10, help="list the N ops of most self time (default 10)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.steps < 1 or args.ceiling_size < 16 or args.top < 0:
        parser.error("--warmup must be >= 0, --steps >= 1, --ceiling-size >= 16 and --top >= 0")
    try:
        report = profile_recipe(
            args.recipe, args.overrides, warmup=args.warmup, steps=args.steps, evaluate=not args.no_eval,
            ceiling_size=args.ceiling_size, top=args.top,
        )  # fmt: skip
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
