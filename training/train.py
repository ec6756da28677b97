"""The trainer: ``accelerate launch -m training.train RECIPE.yaml [key.sub=value ...]``.

``python -m training.train`` runs the same recipe in one process. A run directory holds ``config.yaml``,
``model.safetensors``, ``metrics.jsonl``, ``results.json``, TensorBoard logs and ``checkpoints/step-*``;
``resume=latest`` continues from the newest complete checkpoint at the exact sample it stopped at.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from accelerate.utils.other import load as load_weights_only
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from multimodal.cli import USER_ERRORS, HelpFormatter, configure_threads, one_line, one_line_warnings
from multimodal.config import ConfigError
from multimodal.data import SkipStats
from multimodal.io import atomic_write_json, atomic_write_text

from .checkpoint import CheckpointError, find_latest, load_state, remove_folder, save_checkpoint
from .config import TrainConfig
from .ema import ModelEma
from .optim import build_optimizer, build_scheduler
from .tasks import build_task

__all__ = ["PeerLostError", "TrainState", "TrainingError", "load_config", "main", "train"]


@dataclass
class TrainState:
    """What the trainer needs besides weights and optimizer to resume exactly; saved with every checkpoint."""

    step: int = 0
    samples: int = 0  # training samples seen, all ranks
    batches: list[int] = field(default_factory=list)  # batches consumed, per rank
    skips: dict[str, Any] = field(default_factory=dict)  # SkipStats of all ranks, up to the checkpoint
    seconds: float = 0.0  # wall time spent in train() up to the checkpoint, over all invocations of a resumed run
    skipped_steps: int = 0  # steps whose update was skipped for a non-finite loss or gradient
    bad_streak: int = 0  # of them, how many in a row up to now
    threads: int = 0  # CPU threads the run computes with (0: not on the CPU); a resumed run keeps them, for exactness

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "samples": self.samples,
            "batches": list(self.batches),
            "skips": self.skips,
            "seconds": self.seconds,
            "skipped_steps": self.skipped_steps,
            "bad_streak": self.bad_streak,
            "threads": self.threads,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples = int(state["step"]), int(state["samples"])
        self.batches, self.skips = list(state["batches"]), dict(state["skips"])
        self.seconds = float(state.get("seconds", 0.0))  # absent in checkpoints of older versions
        self.skipped_steps, self.bad_streak = int(state.get("skipped_steps", 0)), int(state.get("bad_streak", 0))
        self.threads = int(state.get("threads", 0))


MAX_EMPTY_BATCHES = 1000  # batches in a row with no usable sample before the run gives up on its data


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. its loss stays non-finite); the message says what to do."""


class PeerLostError(TrainingError):
    """Another process of the run went away mid-collective; each survivor reports it."""


def load_config(recipe: str | Path, overrides: list[str]) -> TrainConfig:
    """Read and fully check a recipe (model, dataset, run directory) before anything is written."""
    cfg = TrainConfig.load(recipe, overrides)
    cfg = build_task(cfg).resolve()
    cfg.check_model()
    if cfg.run_dir.exists() and not cfg.run_dir.is_dir():
        raise ConfigError(f"run directory {cfg.run_dir} is a file; choose another run.name or run.out_dir")
    resume_checkpoint(cfg)
    return cfg


def resume_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from, or None to start afresh; refuses to overwrite an existing run."""
    run_dir = cfg.run_dir
    resume = cfg.resume
    if resume is None:
        if (run_dir / "config.yaml").exists() and not cfg.run.overwrite:
            raise ConfigError(
                f"run directory {run_dir} already holds a run; continue it with resume=latest, "
                "choose another run.name / run.out_dir, or start afresh with run.overwrite=true"
            )
        return None
    if resume == "latest":
        return find_latest(run_dir)
    path = Path(resume)
    if not (path / "accelerator").is_dir() or not (path / "state.json").is_file():
        raise ConfigError(f"resume={resume!r} is not a complete checkpoint folder (checkpoints/step-*)")
    return path


def restore_checkpoint(
    acc: Accelerator, checkpoint: Path, *, scheduler: Any, state: TrainState, ema: ModelEma | None
) -> None:
    """Load a checkpoint into the prepared model and optimizer, the scheduler, the trainer state and the EMA.

    Nothing in it is unpickled beyond plain data and tensors (``torch.load(weights_only=True)`` inside Accelerate,
    safetensors and JSON here): a checkpoint that smuggles in code is refused, its code never run.
    """
    rng = checkpoint / "accelerator" / f"random_states_{acc.process_index}.pkl"
    try:
        saved = load_state(checkpoint)  # first: it refuses the pickled trainer state of older checkpoints
        if rng.exists():  # Accelerate logs a failure to read it and goes on: resumption would not be exact
            load_weights_only(rng)  # Accelerate's torch.load(weights_only=True), numpy's RNG state allowed
        acc.load_state(str(checkpoint / "accelerator"))
        state.load_state_dict(saved)
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(load_file(checkpoint / "model_ema.safetensors"))
            ema.num_updates = int(saved["ema_updates"])
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {checkpoint}: a file in it holds pickled objects other than tensors and plain data, "
            f"which could run code ({reason[:200]}); resume only from checkpoints you trust"
        ) from None
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"cannot resume from {checkpoint}: it is damaged or belongs to another model or recipe "
            f"({type(e).__name__}: {one_line(e)[:300]}); resume from another checkpoint (resume=<folder>) "
            "or start afresh"
        ) from None


def _clear_run(run_dir: Path) -> None:
    """What an earlier run left in ``run_dir`` (``run.overwrite=true``): its checkpoints, which ``resume=latest``
    would otherwise find, its weights, metrics, results and sample keys. TensorBoard logs stay."""
    for name in ("metrics.jsonl", "results.json", "model.safetensors", "model_ema.safetensors"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("checkpoints", "keys"):
        if (run_dir / name).is_dir():
            remove_folder(run_dir / name)


def _warn_ignored_num_processes() -> None:
    """`accelerate launch --cpu --num_processes N` starts one process; say so instead of training silently alone."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in os.environ:
        return
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    args = [a.decode(errors="replace") for a in parent]
    for i, a in enumerate(args):
        m = re.fullmatch(r"--num_processes(?:=(\d+))?", a)
        n = m and (m.group(1) or (args[i + 1] if i + 1 < len(args) else "1"))
        if n and n.isdigit() and int(n) > 1:
            print(
                f"warning: `accelerate launch --cpu --num_processes {n}` starts ONE process (Accelerate ignores "
                f"--num_processes with --cpu). For {n} CPU processes (gloo) use "
                f"`accelerate launch --multi_gpu --num_processes {n}` or --config_file configs/accelerate/cpu.yaml",
                file=sys.stderr,
            )


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    run_dir = cfg.run_dir
    # Without a GPU, cpu=True turns a torchrun launch (`--multi_gpu`) into gloo multi-CPU instead of N lone runs.
    cpu = cfg.train.cpu or not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.precision,
        gradient_accumulation_steps=cfg.optim.accum,
        log_with=list(cfg.train.log_with) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )


class MetricsLog:
    """``metrics.jsonl`` on the main process, plus the Accelerate trackers."""

    def __init__(self, acc: Accelerator, path: Path, resume_step: int | None) -> None:
        self.acc, self.path = acc, path
        if acc.is_main_process and resume_step is not None and path.exists():
            steps = [(line, _record_step(line)) for line in path.read_text().splitlines()]
            kept = [line for line, step in steps if step is not None and step <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept), fsync=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.acc.is_main_process:
            return
        record = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.acc.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)


def _record_step(line: str) -> int | None:
    """The step of a ``metrics.jsonl`` line; None for a line a crash cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _sum_across(acc: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """Sum scalars over all processes (every process must call this at the same step)."""
    keys = sorted(values)
    local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=acc.device)
    total = acc.reduce(local, reduction="sum") if acc.num_processes > 1 else local
    return {k: total[i].item() for i, k in enumerate(keys)}


def _check_step(
    acc: Accelerator, losses: list[float], params: list[torch.nn.Parameter], clip: float | None
) -> tuple[str | None, float | None]:
    """Clip the gradients; return what is not finite in this step on any process ("loss", "gradient" or None) and
    the gradient norm before clipping (None under fp16 without clipping).

    The gradient norm (clipped to ``clip``) is taken after the gradients are reduced, so every process sees the same;
    the losses are local and their verdict is summed across processes. Under fp16 the gradient scaler already skips
    overflowing steps (lowering its scale), so only the loss is checked there.
    """
    norm = None
    if clip:
        norm = float(acc.clip_grad_norm_(params, clip))
    elif acc.scaler is None:
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    flags = [not all(math.isfinite(v) for v in losses), acc.scaler is None and not math.isfinite(norm)]
    if acc.num_processes > 1:
        flags = (acc.reduce(torch.tensor(flags, dtype=torch.float32, device=acc.device), reduction="sum") > 0).tolist()
    return ("loss" if flags[0] else "gradient" if flags[1] else None), norm


def _handle_bad_step(acc: Accelerator, cfg: TrainConfig, run_dir: Path, state: TrainState, fault: str) -> None:
    """Warn about a skipped step; raise :class:`TrainingError` after ``train.max_bad_steps`` of them in a row."""
    limit = cfg.train.max_bad_steps
    if state.bad_streak < limit:
        acc.print(
            f"warning: step {state.step}: non-finite {fault}, update skipped "
            f"({state.bad_streak} in a row; the run stops at {limit})",
            file=sys.stderr,
        )
        return
    latest = find_latest(run_dir)
    raise TrainingError(
        f"stopped at step {state.step}: {limit} steps in a row ({state.step - limit + 1}-{state.step}) had a "
        f"non-finite loss or gradient and were skipped; nothing was saved after them, the last good checkpoint is "
        f"{latest or 'none (no checkpoint was written yet)'}. Lower optim.lr, set optim.grad_clip, or check the "
        "data of those steps, then continue with resume=latest"
    )


def _peer_lost(error: RuntimeError) -> bool:
    """Whether a collective failed because another process went away (gloo and NCCL say so only in words)."""
    return isinstance(error, torch.distributed.DistError) or bool(
        re.search(r"Connection (reset|closed) by peer|Broken pipe|NCCL communicator was aborted", str(error))
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^\[[^\]]*gloo[^\]]*\] ", "", text)[:200]


def _gather_skips(acc: Accelerator, local: SkipStats) -> SkipStats:
    merged = SkipStats()
    for state in gather_object([local.state_dict()]) if acc.num_processes > 1 else [local.state_dict()]:
        part = SkipStats()
        part.load_state_dict(state)
        merged.merge(part)
    return merged


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg`` to ``train.steps``; returns the final results (also written to ``results.json``)."""
    started = time.perf_counter()
    _warn_ignored_num_processes()
    acc = make_accelerator(cfg)
    threads = configure_threads(cfg.train.threads) if acc.device.type == "cpu" else 0
    run_dir = cfg.run_dir
    resume_from = resume_checkpoint(cfg)
    acc.wait_for_everyone()  # every process decides before the main one writes config.yaml into the run directory
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml(), fsync=True)
        if resume_from is None and cfg.run.overwrite:
            _clear_run(run_dir)
    set_seed(cfg.run.seed)
    task = build_task(cfg, acc)
    with acc.main_process_first():
        task.prepare_data()
    model = task.build_model()
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    model, optimizer = acc.prepare(model, optimizer)
    ema = (
        ModelEma(acc.unwrap_model(model), cfg.train.ema_decay, warmup=cfg.train.ema_warmup)
        if cfg.train.ema_decay > 0
        else None
    )
    state = TrainState(batches=[0] * acc.num_processes)

    if resume_from is not None:
        restore_checkpoint(acc, resume_from, scheduler=scheduler, state=state, ema=ema)
        if cfg.train.threads == 0 and threads and state.threads and state.threads != threads:
            acc.print(f"train.threads=auto: resuming with the {state.threads} thread(s) the run computed with")
            threads = configure_threads(state.threads)  # float sums depend on the thread count: stay bitwise exact
        if len(state.batches) != acc.num_processes:
            acc.print(
                f"warning: checkpoint written by {len(state.batches)} processes, resuming with {acc.num_processes}: "
                "the data stream restarts at the same global sample count but not the same samples"
            )
            state.batches = [max(state.batches)] * acc.num_processes
        acc.print(f"resumed from {resume_from} at step {state.step}")
    elif cfg.resume == "latest":
        acc.print(f"resume=latest: no checkpoint in {run_dir}, starting afresh")
    seconds_before = state.seconds  # time of the invocations before this one

    def seconds_so_far() -> float:
        return seconds_before + time.perf_counter() - started

    # Resuming (or restarting with resume=latest after a crash before the first checkpoint) drops the records of
    # the steps that will be recomputed.
    resuming = resume_from is not None or cfg.resume == "latest"
    metrics = MetricsLog(acc, run_dir / "metrics.jsonl", state.step if resuming else None)
    if cfg.train.log_with:
        acc.init_trackers(cfg.run.name, config=cfg.flat())

    rank = acc.process_index
    skips = SkipStats()
    carried = SkipStats()
    carried.load_state_dict(state.skips)
    batches = iter(task.train_batches(state.batches[rank]))
    params = [p for p in model.parameters() if p.requires_grad]
    # Batch-norm statistics move in the forward pass; a skipped step puts them back.
    running_stats = [
        b for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase) for b in m.buffers()
    ]
    sums: dict[str, float] = {}
    count, window_samples, window_start = 0, 0, time.perf_counter()
    step_logs: list[dict[str, float]] = []  # the micro-batches of the step in progress
    skipped_in_window = 0
    eval_results: dict[str, float] = {}
    last_eval_step = -1
    bar = tqdm(
        total=cfg.train.steps, initial=state.step, disable=not (acc.is_main_process and cfg.train.progress),
        desc=cfg.run.name, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )  # fmt: skip

    def checkpoint() -> None:
        nonlocal skips
        global_skips = _gather_skips(acc, skips)
        carried.merge(global_skips)
        skips = SkipStats()
        state.skips = carried.state_dict()
        state.seconds = seconds_so_far()
        state.batches = (
            [int(b) for b in gather_object([state.batches[rank]])] if acc.num_processes > 1 else state.batches
        )
        saved = {**state.state_dict(), "scheduler": scheduler.state_dict()}
        if ema is not None:
            saved["ema_updates"] = ema.num_updates
        save_checkpoint(
            acc, run_dir, step=state.step, model=model, ema=ema.module if ema else None, state=saved,
            keep=cfg.train.keep_checkpoints,
        )  # fmt: skip

    def evaluate() -> dict[str, float]:
        nonlocal last_eval_step
        results, eval_skips = task.evaluate(model, step=state.step)
        out = {f"eval/{k}": v for k, v in results.items()}
        if ema is not None:
            ema_results, _ = task.evaluate(ema.module, step=state.step)
            out.update({f"eval_ema/{k}": v for k, v in ema_results.items()})
        total_skipped = sum(_gather_skips(acc, eval_skips).samples.values())
        if total_skipped:
            out["eval/skipped_samples"] = total_skipped
        last_eval_step = state.step
        return out

    def next_batch() -> dict[str, Any]:
        """The next batch with a usable sample; one whose every sample was unusable is counted and passed over."""
        for _ in range(MAX_EMPTY_BATCHES):
            batch = next(batches)
            state.batches[rank] += 1
            skips.update(batch.pop("skipped"))
            if batch["size"]:
                return batch
        raise TrainingError(
            f"{MAX_EMPTY_BATCHES} batches in a row held no usable sample; the data cannot be read as this recipe "
            f"expects: {one_line(skips.summary())[:400]}. Check data.dataset and the card's image and text keys"
        )

    keys_file = None
    if cfg.train.record_keys:
        (run_dir / "keys").mkdir(parents=True, exist_ok=True)
        keys_file = open(run_dir / "keys" / f"rank-{rank}.txt", "a")  # noqa: SIM115 (closed after the loop)
    stop = min(cfg.train.steps, cfg.train.stop_at or cfg.train.steps)
    state.threads = threads
    on = f"{acc.device}, {threads} thread(s)" if threads else str(acc.device)
    acc.print(f"training {cfg.model.name} for {stop - state.step} steps on {acc.num_processes} process(es), {on}")
    try:
        model.train()
        while state.step < stop:
            fault = None
            stats_before = [b.clone() for b in running_stats]
            for _ in range(cfg.optim.accum):
                batch = next_batch()
                if keys_file is not None:
                    keys_file.write("".join(f"{state.step}\t{k}\n" for k in batch["key"]))
                batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                with acc.accumulate(model):
                    logs = {k: float(v) for k, v in task.step(acc, model, batch).items()}
                    step_logs.append(logs)
                    if acc.sync_gradients:
                        fault, grad_norm = _check_step(
                            acc, [lg["loss"] for lg in step_logs], params, cfg.optim.grad_clip
                        )
                        if grad_norm is not None:
                            logs["grad_norm"] = grad_norm
                        if fault is None or acc.scaler is not None:  # under fp16 the gradient scaler skips it itself
                            optimizer.step()
                            task.after_step(acc.unwrap_model(model))
                        optimizer.zero_grad(set_to_none=True)
                window_samples += batch["size"]
            scheduler.step()
            state.step += 1
            if fault is None:
                state.bad_streak = 0
                if ema is not None:
                    ema.update(acc.unwrap_model(model))
                for logs in step_logs:
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + v
                count += len(step_logs)
            else:
                state.skipped_steps += 1
                for b, before in zip(running_stats, stats_before, strict=True):
                    b.copy_(before)
                state.bad_streak += 1
                skipped_in_window += 1
                _handle_bad_step(acc, cfg, run_dir, state, fault)
            step_logs = []
            bar.update(1)

            if state.step % cfg.train.log_every == 0 or state.step == stop:
                totals = _sum_across(acc, {**sums, "_count": count, "_samples": window_samples})
                n, window_total = max(totals.pop("_count"), 1.0), totals.pop("_samples")
                state.samples += int(window_total)
                means = {f"train/{k}": v / n for k, v in totals.items()}
                means["train/lr"] = scheduler.get_last_lr()[0]
                means["train/samples_per_s"] = window_total / max(time.perf_counter() - window_start, 1e-9)
                if skipped_in_window:
                    means["train/skipped_steps"] = skipped_in_window
                metrics.log(state.step, means)
                bar.set_postfix(
                    loss=f"{means.get('train/loss', math.nan):.4f}", lr=f"{means['train/lr']:.2e}", refresh=False
                )
                sums, count, window_samples, window_start = {}, 0, 0, time.perf_counter()
                skipped_in_window = 0
            if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and state.step < stop:
                eval_results = evaluate()
                metrics.log(state.step, eval_results)
                acc.print(_format_eval(state.step, eval_results, cfg.data.eval_split))
            # Amid non-finite steps no checkpoint is written: the last one stays the last good one.
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0 and not state.bad_streak:
                checkpoint()
        bar.close()
        if keys_file is not None:
            keys_file.close()

        if last_eval_step != state.step:
            eval_results = evaluate()
            metrics.log(state.step, eval_results)
        if find_latest(run_dir) is None or find_latest(run_dir).name != f"step-{state.step:08d}":
            checkpoint()
        else:
            carried.merge(_gather_skips(acc, skips))
    except RuntimeError as e:
        if not _peer_lost(e):
            raise
        raise PeerLostError(
            f"process {rank} of {acc.num_processes} lost contact with the others at step {state.step + 1} "
            f"({_first_line(e)}); another process probably died: see its own error above. "
            f"Resume with resume=latest (from {find_latest(run_dir) or 'the start: no checkpoint yet'})"
        ) from None
    results = {
        "step": state.step,
        "samples": state.samples,
        "num_processes": acc.num_processes,
        "distributed_type": str(acc.distributed_type).rsplit(".", 1)[-1],
        "wall_seconds": round(seconds_so_far(), 1),  # setup and evaluations included
        "skipped_steps": state.skipped_steps,
        **eval_results,
        "data": carried.to_json(),
    }
    if acc.is_main_process:
        atomic_write_json(run_dir / "results.json", results, fsync=True)
        print(f"run {run_dir}: {state.step} steps, {state.samples} samples, {results['wall_seconds']:.0f} s")
        if eval_results:
            print(_format_eval(state.step, eval_results, cfg.data.eval_split))
        print(carried.summary() or "data: no samples skipped")
    acc.end_training()
    return results


def _format_eval(step: int, results: dict[str, Any], split: str | None) -> str:
    def name(key: str) -> str:  # eval/x -> x, eval_ema/x -> ema x
        group, metric = key.split("/", 1)
        return f"ema {metric}" if group == "eval_ema" else metric

    parts = [f"{name(k)} {v:.4f}" if isinstance(v, float) else f"{name(k)} {v}" for k, v in results.items()]
    names = [k.split("/", 1)[1] for k in results]
    where = "" if not split or any(n.startswith(f"{split}_") for n in names) else f" on the held-out '{split}' split"
    return f"eval{where} @ step {step}: " + ", ".join(parts)


def _recipe_keys_help(width: int = 100) -> str:
    """Every recipe key with its default, a section per line (wrapped), for ``--help``."""
    lines = ["recipe keys and their defaults (a recipe's values replace them; key.sub=value replaces both):"]
    for section, values in TrainConfig().to_dict().items():
        if not isinstance(values, dict):
            lines.append(f"  {section}={json.dumps(values)}")
            continue
        items = " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in values.items()
        )
        lines += textwrap.wrap(items, width, initial_indent=f"  {section:<8}", subsequent_indent=" " * 10)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="accelerate launch -m training.train",
        description="Train a model from a YAML recipe; key.sub=value arguments override the recipe.",
        epilog=_recipe_keys_help(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("recipe", help="a recipe, e.g. configs/vit/shapes.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.lr=3e-4 train.steps=200")
    args = parser.parse_args(argv)
    with one_line_warnings():
        try:
            cfg = load_config(args.recipe, args.overrides)
        except USER_ERRORS as e:
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        try:
            train(cfg)
        except (CheckpointError, TrainingError) as e:
            if int(os.environ.get("RANK", "0")) == 0 or isinstance(e, PeerLostError):
                print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
