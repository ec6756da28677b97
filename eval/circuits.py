"""Circuits of a run: ``python -m eval.circuits --checkpoint RUN``, for language models of the lm task and GATO.

For a GATO run: where each head's attention from the window's action tokens goes, on prompted sequences of each
control dataset of its mixture (the demonstration, its actions, the own timestep, earlier timesteps), against
uniform attention.

For a language model of the lm task:

Prints each head's previous-token, duplicate-token and induction score (on BOS + a random segment said twice) with
the chance level, the strongest Q-, K- and V-compositions against random low-rank maps, the loss on first
occurrences and on repeats with the best induction head ablated (then every head of at least half its score), and,
for a model without blocks, how well the direct path matches the data's bigrams. Writes the numbers as JSON and the
attention patterns and head scores as PNG heat maps beside it.
"""

from __future__ import annotations

import argparse
from typing import Any

from multimodal.config import ConfigError
from multimodal.data import ensure_dataset, load_card
from multimodal.data.control import env_spec, read_episodes
from multimodal.data.sequences import MarkovRepeats
from multimodal.evaluation.circuits import analyse_lm, prompt_attention
from multimodal.runs import load_checkpoint, load_gato_tokenizer, read_run_config

from .common import add_common_options, cli_parser, result_path, run_cli, write_result
from .plot import heat_maps

__all__ = ["main"]


def table(out: dict[str, Any]) -> str:
    losses = out["losses"]
    lines = [f"loss: first occurrence {losses['first']:.4f}, repeat {losses['repeat']:.4f}"]
    if "bigram" in out:
        b = out["bigram"]
        lines.append(f"direct path vs log-bigrams: correlation {b['correlation']:.4f} over {b['pairs']} pairs "
                     f"seen >= {b['min_count']} times")  # fmt: skip
        return "\n".join(lines)
    chance = out["chance"]
    lines += ["", f"{'layer':>5s} {'head':>4s} {'prev-token':>10s} {'duplicate':>9s} {'induction':>9s}"]
    for h in out["heads"]:
        lines.append(
            f"{h['layer']:5d} {h['head']:4d} {h['previous_token']:10.4f} {h['duplicate_token']:9.4f} "
            f"{h['induction']:9.4f}"
        )
    lines.append(
        f"{'chance':>10s} {chance['previous_token']:10.4f} {chance['duplicate_token']:9.4f} {chance['induction']:9.4f}"
        "   (uniform attention)"
    )
    if "composition" in out:
        base = out["composition_baseline"]
        lines += ["", f"composition, top 3 of each (random low-rank maps: mean {base['mean']:.4f}, std "
                      f"{base['std']:.4f}, 99th percentile {base['p99']:.4f} of {base['samples']})"]  # fmt: skip
        for mode, pairs in out["composition"].items():
            top = ", ".join(f"{p['from']} -> {p['to']} {p['score']:.4f}" for p in pairs[:3])
            lines.append(f"  {mode.upper()}: {top}")
    lines.append("")
    for a in out["ablation"]:
        restored = ", ".join(f"{m} {v:.2f}" for m, v in a["share_of_drop_restored"].items())
        repeat = ", ".join(f"{m} {v:.4f}" for m, v in a["repeat_loss"].items())
        heads = " ".join(f"({layer}, {head})" for layer, head in a["heads"])
        lines.append(f"heads {heads} ablated: repeat loss {repeat}; share of the first-to-repeat drop taken back: "
                     f"{restored}")  # fmt: skip
    return "\n".join(lines)


def gato_table(out: dict[str, Any]) -> str:
    u = out["uniform"]
    lines = [
        f"{out['env']}: attention from window action tokens ({out['queries']} queries, {out['sequences']} prompted "
        f"sequences, prompt {out['prompt_tokens']} tokens)",
        f"{'layer':>5s} {'head':>4s} {'prompt':>7s} {'prompt actions':>14s} {'own timestep':>12s} "
        f"{'earlier window':>14s}",
    ]
    for h in out["heads"]:
        lines.append(
            f"{h['layer']:5d} {h['head']:4d} {h['prompt']:7.3f} {h['prompt_actions']:14.3f} {h['own_timestep']:12.3f} "
            f"{h['earlier_window']:14.3f}"
        )
    lines.append(
        f"{'uniform':>10s} {u['prompt']:7.3f} {u['prompt_actions']:14.3f} {u['own_timestep']:12.3f} "
        f"{u['earlier_window']:14.3f}"
    )
    return "\n".join(lines)


def run_gato(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    model = load_checkpoint(args.checkpoint, ema=False)
    tokenizer = load_gato_tokenizer(args.checkpoint, model)
    results = {}
    for name in (cfg.get("task") or {}).get("mixture") or {}:
        card = load_card(name)
        if card.generator != "control":
            continue
        ensure_dataset(card)
        episodes = [tokenizer.encode_arrays(e.observations, e.actions) for e in read_episodes(card, "train")]
        results[card.name] = prompt_attention(model, episodes, env_spec(card.generator_args["env_id"]), seed=args.seed)
    if not results:
        raise ConfigError(f"the GATO run at {args.checkpoint} trained on no control dataset")
    table = "\n\n".join(gato_table(out) for out in results.values())
    write_result(args, "circuits.json", {"checkpoint": str(args.checkpoint), "control": results}, table=table)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = read_run_config(args.checkpoint)
    task = cfg.get("task") or {}
    if task.get("name") == "gato":
        return run_gato(args, cfg)
    if task.get("name") != "lm":
        raise ConfigError(
            f"{args.checkpoint} is a {task.get('name')!r} run; eval.circuits reads runs of the lm and gato tasks"
        )
    data = MarkovRepeats(
        int(task.get("vocab_size", 64)), int(task.get("min_period", 8)), int(task.get("max_period", 24)),
        float(task.get("sharpness", 2.0)), int(task.get("chain_seed", 0)),
    )  # fmt: skip
    model = load_checkpoint(args.checkpoint, ema=False)
    out = analyse_lm(model, data, period=args.period, seed=args.seed)
    patterns = out.pop("patterns", None)
    folder = result_path(args, "circuits.json").parent
    if patterns is not None:
        L, H = patterns.shape[:2]
        panels = [(f"layer {i} head {h}", patterns[i, h].tolist()) for i in range(L) for h in range(H)]
        heat_maps(
            panels,
            folder / "circuits-patterns.png",
            title=f"attention patterns: BOS + {args.period} random ids, twice",
            cell=4,
        )
        scores = [(k, [[h[k] for h in out["heads"] if h["layer"] == i] for i in range(L)])
                  for k in ("previous_token", "duplicate_token", "induction")]  # fmt: skip
        heat_maps(scores, folder / "circuits-scores.png", title="head scores (rows: layers, columns: heads)", cell=40)
    write_result(args, "circuits.json", {"checkpoint": str(args.checkpoint), **out}, table=table(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m eval.circuits", __doc__, "run directory of the lm or gato task")
    parser.add_argument("--period", type=int, default=20, help="length of the random segment said twice")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scored sequences and the baselines")
    add_common_options(parser, out="RUN/eval/circuits.json (the PNGs beside it)")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
