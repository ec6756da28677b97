"""The trainer: a recipe's task and model, trained with Accelerate, checkpointed, resumable at the exact sample.

Read :meth:`Trainer.fit` first: it is the whole loop. :meth:`Trainer.build` makes the config's task and model
(once per process; a wrong recipe fails there, before anything is written), :meth:`Trainer.setup` opens the run
directory, prepares the data, optimizer and Accelerate, and restores a checkpoint when resuming.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

import torch
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from multimodal.cli import configure_threads, keep_freed_memory, one_line
from multimodal.data import SkipStats
from multimodal.io import atomic_write_json, atomic_write_text

from .checkpoint import find_latest, save_checkpoint
from .config import TrainConfig
from .ema import ModelEma
from .guard import PeerLostError, StepGuard, TrainingError
from .launch import check_world, make_accelerator, refuse_lone_worker, warn_ignored_num_processes
from .metrics import MetricsLog, RunningMeans, format_eval
from .optim import build_optimizer, build_scheduler
from .preemption import Preemption
from .resume import TrainState, clear_run, match_world_size, restore_checkpoint, resume_checkpoint
from .sharding import local_bytes, shard_model, unsharded
from .tasks import TASKS, build_task

__all__ = ["MAX_EMPTY_BATCHES", "Trainer", "train"]

MAX_EMPTY_BATCHES = 1000  # batches in a row with no usable sample before the run gives up on its data


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg`` to ``train.steps``; returns the final results (also written to ``results.json``)."""
    return Trainer(cfg).fit()


class Trainer:
    """One process's share of a training run. State lives in attributes; the loop is :meth:`fit`."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.started, self.seconds_before = time.perf_counter(), 0.0  # seconds_before: of earlier invocations
        self.acc = self.task = self.model = None
        self.state: TrainState | None = None
        self.preemption = Preemption(cfg.train.stop_signals)

    # --- setup -------------------------------------------------------------------------------------------------

    def build(self) -> None:
        """The Accelerator, the task (the recipe resolved against its data) and the model; writes nothing, so a
        recipe the data or the model refuses stops here with a one-line error."""
        if self.model is not None:
            return
        warn_ignored_num_processes()
        self.acc = make_accelerator(
            self.cfg, find_unused_parameters=not TASKS[self.cfg.task.name].uses_every_parameter
        )
        refuse_lone_worker(self.acc)  # WORLD_SIZE > 1 yet alone: a one-line error, before anything is written
        if (world := check_world(self.acc)) > 1:  # one all-reduce of the rank ids proves the world from inside
            self.acc.print(f"process group checked: {world} processes answered an all-reduce of their rank ids")
        self.threads = configure_threads(self.cfg.train.threads) if self.acc.device.type == "cpu" else 0
        if self.threads and self.cfg.train.keep_freed_memory:
            keep_freed_memory()
        set_seed(self.cfg.run.seed)
        self.task = build_task(self.cfg, self.acc)
        self.cfg = self.task.cfg = self.task.resolve()
        self.model = self.task.build_model()
        self.resume_from = resume_checkpoint(self.cfg)

    def setup(self) -> None:
        """Open the run directory, prepare data, optimizer and Accelerate, and restore the checkpoint to resume."""
        self.build()
        acc, cfg = self.acc, self.cfg
        self.run_dir, self.rank = cfg.run_dir, acc.process_index
        acc.wait_for_everyone()  # every process decides before the main one writes config.yaml into the run directory
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml(), fsync=True)
            if self.resume_from is None and cfg.run.overwrite:
                clear_run(self.run_dir)
        with acc.main_process_first():
            self.task.prepare_data()
        if cfg.train.fsdp:  # sharded by our policy on GPUs and CPUs alike; Accelerate only launches
            self.model = shard_model(self.model, acc.device.type, acc.num_processes, precision=cfg.train.precision)
        optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
        if cfg.train.fsdp:
            self.optimizer = optimizer
        else:
            self.model, self.optimizer = acc.prepare(self.model, optimizer)
        decay = cfg.train.ema_decay
        self.ema = ModelEma(acc.unwrap_model(self.model), decay, warmup=cfg.train.ema_warmup) if decay > 0 else None
        if cfg.train.compile:  # in place: the same module, parameters and state-dict keys as an eager run
            acc.unwrap_model(self.model).compile()
        self.state = TrainState(batches=[0] * acc.num_processes)
        if self.resume_from is not None:
            self._restore()
        elif cfg.resume == "latest":
            acc.print(f"resume=latest: no checkpoint in {self.run_dir}, starting afresh")
        self.seconds_before = self.state.seconds
        self._open_reporting()
        self.batches = iter(self.task.train_batches(self.model, self.state.batches[self.rank]))
        self.guard = StepGuard(
            acc, self.model, clip=cfg.optim.grad_clip, max_bad_steps=cfg.train.max_bad_steps, run_dir=self.run_dir
        )
        self.stop = min(cfg.train.steps, cfg.train.stop_at or cfg.train.steps)
        self.state.threads = self.threads
        on = f"{acc.device}, {self.threads} thread(s)" if self.threads else str(acc.device)
        steps = self.stop - self.state.step
        how = (", FSDP2" if cfg.train.fsdp else "") + (", compiled" if cfg.train.compile else "")
        acc.print(f"training {cfg.model.name} for {steps} steps on {acc.num_processes} process(es){how}, {on}")

    def _restore(self) -> None:
        acc, state = self.acc, self.state
        restore_checkpoint(
            acc, self.resume_from, scheduler=self.scheduler, state=state, ema=self.ema, model=self.model,
            optimizer=self.optimizer,
        )  # fmt: skip
        if self.cfg.train.threads == 0 and self.threads and state.threads and state.threads != self.threads:
            acc.print(f"train.threads=auto: resuming with the {state.threads} thread(s) the run computed with")
            self.threads = configure_threads(state.threads)  # float sums depend on the thread count: stay exact
        match_world_size(acc, state)
        acc.print(f"resumed from {self.resume_from} at step {state.step}")

    def _open_reporting(self) -> None:
        """Metrics file and trackers, progress bar, sample-key file, and the counters of what was skipped."""
        cfg, acc = self.cfg, self.acc
        # Resuming (or restarting with resume=latest after a crash before the first checkpoint) drops the records
        # of the steps that will be recomputed.
        resuming = self.resume_from is not None or cfg.resume == "latest"
        self.metrics = MetricsLog(acc, self.run_dir / "metrics.jsonl", self.state.step if resuming else None)
        if cfg.train.log_with:
            acc.init_trackers(cfg.run.name, config=cfg.flat())
        self.window = RunningMeans()
        self.skips, self.carried = SkipStats(), SkipStats()  # since the last checkpoint; up to it, all ranks
        self.carried.load_state_dict(self.state.skips)
        self.eval_results: dict[str, float] = {}
        self.last_eval_step = -1
        self.bar = tqdm(
            total=cfg.train.steps, initial=self.state.step, disable=not (acc.is_main_process and cfg.train.progress),
            desc=cfg.run.name, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )  # fmt: skip
        self.keys_file: IO[str] | None = None
        if cfg.train.record_keys:
            (self.run_dir / "keys").mkdir(parents=True, exist_ok=True)
            self.keys_file = open(self.run_dir / "keys" / f"rank-{self.rank}.txt", "a")  # noqa: SIM115 (see finish)

    # --- the loop ------------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps`` (or ``train.stop_at``, or a stop signal); returns the results, also in
        ``results.json`` unless a stop signal ended the run early."""
        self.preemption.install()  # a stop signal from here on ends the run with a checkpoint
        try:
            if self.state is None:
                self.setup()
            self.model.train()
            while self.state.step < self.stop and not self.preemption.agreed(self.acc):
                self.train_step()
                self.on_step_end()
            self.bar.close()
            if self.last_eval_step != self.state.step and not self.preemption.stopping:
                self.evaluate()
            latest = find_latest(self.run_dir)
            if latest is None or latest.name != f"step-{self.state.step:08d}":
                self.checkpoint()
            else:
                self.carried.merge(self._gather_skips(self.skips))
        except RuntimeError as e:
            if not PeerLostError.caused(e):
                raise
            raise PeerLostError.from_error(
                e, self.acc, step=self.state.step if self.state else 0, run_dir=self.run_dir
            ) from None
        finally:
            self.preemption.uninstall()
            self.batches = iter(())  # the loader's workers end now, not when the interpreter exits
        return self.finish()

    def train_step(self) -> None:
        """One optimizer step over ``optim.accum`` micro-batches; skipped if its loss or gradient is not finite."""
        self.guard.snapshot()
        micro_logs, fault = [], None
        for _ in range(self.cfg.optim.accum):
            batch = self.next_batch()
            with self.acc.accumulate(self.model):
                logs = {k: float(v) for k, v in self.task.step(self.acc, self.model, batch).items()}
                micro_logs.append(logs)
                if self.acc.sync_gradients:
                    fault = self._update([lg["loss"] for lg in micro_logs], logs)
            self.window.samples += batch["size"]
        self.scheduler.step()
        self.state.step += 1
        if fault is None:
            self.state.bad_streak = 0
            if self.ema is not None:
                self.ema.update(self.acc.unwrap_model(self.model))
            self.window.add(micro_logs)
        else:
            self.window.skipped_steps += 1
            self.guard.skip(self.state, fault)
        self.bar.update(1)

    def _update(self, losses: list[float], logs: dict[str, float]) -> str | None:
        """Check the step, apply it unless it is bad, and clear the gradients; returns the fault, if any."""
        fault, grad_norm = self.guard.check(losses)
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
        if fault is None or self.acc.scaler is not None:  # under fp16 the gradient scaler skips it itself
            self.optimizer.step()
            self.task.after_step(self.acc.unwrap_model(self.model))
        self.optimizer.zero_grad(set_to_none=True)
        return fault

    def next_batch(self) -> dict[str, Any]:
        """The next batch with a usable sample, on the device; one whose every sample was unusable is counted and
        passed over."""
        for _ in range(MAX_EMPTY_BATCHES):
            batch = next(self.batches)
            self.state.batches[self.rank] += 1
            self.skips.update(batch.pop("skipped"))
            if batch["size"]:
                if self.keys_file is not None:
                    self.keys_file.write("".join(f"{self.state.step}\t{k}\n" for k in batch["key"]))
                return {
                    k: v.to(self.acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
                }
        raise TrainingError(
            f"{MAX_EMPTY_BATCHES} batches in a row held no usable sample; the data cannot be read as this recipe "
            f"expects: {one_line(self.skips.summary())[:400]}. Check data.dataset and the card's image and text keys"
        )

    def on_step_end(self) -> None:
        """Log, evaluate and checkpoint when their ``train.*_every`` comes round."""
        step, train = self.state.step, self.cfg.train
        if step % train.log_every == 0 or step == self.stop:
            self.log()
        if self.preemption.agreed(self.acc):
            return  # no evaluation: fit checkpoints and stops
        if train.eval_every and step % train.eval_every == 0 and step < self.stop:
            self.evaluate()
        # Amid non-finite steps no checkpoint is written: the last one stays the last good one.
        if train.checkpoint_every and step % train.checkpoint_every == 0 and not self.state.bad_streak:
            self.checkpoint()

    def log(self) -> None:
        """The means of the window since the last log line, over all processes, to metrics and the progress bar."""
        means, samples = self.window.means(self.acc, lr=self.scheduler.get_last_lr()[0])
        self.state.samples += samples
        self.metrics.log(self.state.step, means)
        loss = f"{means.get('train/loss', math.nan):.4f}"
        self.bar.set_postfix(loss=loss, lr=f"{means['train/lr']:.2e}", refresh=False)

    def evaluate(self) -> None:
        """The task's evaluation of the model (and of its EMA), logged and printed; kept for ``results.json``.
        Its record also holds the run's wall seconds so far and the evaluation's own, for curves against time."""
        started = time.perf_counter()
        with unsharded(self.model):  # under FSDP: each process may evaluate a different number of batches
            results, eval_skips = self.task.evaluate(self.model, step=self.state.step)
        out = {f"eval/{k}": v for k, v in results.items()}
        if self.ema is not None:
            ema_results, _ = self.task.evaluate(self.ema.module, step=self.state.step)
            out.update({f"eval_ema/{k}": v for k, v in ema_results.items()})
        total_skipped = sum(self._gather_skips(eval_skips).samples.values())
        if total_skipped:
            out["eval/skipped_samples"] = total_skipped
        self.eval_results, self.last_eval_step = out, self.state.step
        timing = {
            "time/wall_seconds": round(self.seconds(), 2),
            "time/eval_seconds": round(time.perf_counter() - started, 2),
        }
        self.metrics.log(self.state.step, {**out, **timing})
        if self.state.step < self.stop:
            self.acc.print(format_eval(self.state.step, out, self.cfg.data.eval_split))

    def checkpoint(self) -> None:
        """Save everything needed to resume at this step (every process takes part)."""
        acc, state = self.acc, self.state
        self.carried.merge(self._gather_skips(self.skips))
        self.skips = SkipStats()
        state.skips = self.carried.state_dict()
        state.seconds = self.seconds()
        if acc.num_processes > 1:
            state.batches = [int(b) for b in gather_object([state.batches[self.rank]])]
        saved = {**state.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.ema is not None:
            saved["ema_updates"] = self.ema.num_updates
        save_checkpoint(
            acc, self.run_dir, step=state.step, model=self.model, ema=self.ema.module if self.ema else None,
            state=saved, keep=self.cfg.train.keep_checkpoints, optimizer=self.optimizer,
        )  # fmt: skip

    def finish(self) -> dict[str, Any]:
        """Write ``results.json`` and print the summary (main process); end the trackers. A run a stop signal
        ended early says where it stopped and writes no results."""
        if self.keys_file is not None:
            self.keys_file.close()
        state = self.state
        results = {
            "step": state.step,
            "samples": state.samples,
            "num_processes": self.acc.num_processes,
            "distributed_type": str(self.acc.distributed_type).rsplit(".", 1)[-1],
            "wall_seconds": round(self.seconds(), 1),  # setup and evaluations included
            "skipped_steps": state.skipped_steps,
            "state_bytes_per_process": self._state_bytes(),
            **self.eval_results,
            "data": self.carried.to_json(),
        }
        if self.preemption.stopping:
            results["preempted"] = True
            self.acc.print(
                f"stopped by {self.preemption.received or 'a stop signal to another process'} at step {state.step} "
                f"of {self.cfg.train.steps}: checkpoint {self.run_dir / 'checkpoints' / f'step-{state.step:08d}'}; "
                "continue with resume=latest"
            )
        elif self.acc.is_main_process:
            atomic_write_json(self.run_dir / "results.json", results, fsync=True)
            print(f"run {self.run_dir}: {state.step} steps, {state.samples} samples, {results['wall_seconds']:.0f} s")
            if self.eval_results:
                print(format_eval(state.step, self.eval_results, self.cfg.data.eval_split))
            print(self.carried.summary() or "data: no samples skipped")
        self.acc.wait_for_everyone()  # no process tears its process group down while another still writes
        self.acc.end_training()
        if self.acc.num_processes > 1:
            # Gloo's worker threads drop their last references to a collective's tensors just after it completes,
            # and that takes the GIL. Should it fall in interpreter shutdown the process aborts ("terminate called
            # without an active exception", pytorch/pytorch#190489; 1 FSDP run in 6 here): give up the GIL a
            # moment so that they finish while Python is alive.
            time.sleep(0.2)
        return results

    # --- helpers -----------------------------------------------------------------------------------------------

    def seconds(self) -> float:
        """Wall time of the run so far: this invocation's and, when resumed, the earlier ones'."""
        return self.seconds_before + time.perf_counter() - self.started

    def _state_bytes(self) -> int:
        """The most bytes of parameters and optimizer state any process holds (its shards under FSDP)."""
        local = local_bytes(self.model, self.optimizer)
        return max(gather_object([local])) if self.acc.num_processes > 1 else local

    def _gather_skips(self, local: SkipStats) -> SkipStats:
        """The skip counts of every process, merged."""
        merged = SkipStats()
        states = gather_object([local.state_dict()]) if self.acc.num_processes > 1 else [local.state_dict()]
        for state in states:
            part = SkipStats()
            part.load_state_dict(state)
            merged.merge(part)
        return merged
