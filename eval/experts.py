"""Specialised GATO experts: merge Branch-Train-Merge branches, extract a task's subnetwork, compare systems.

    python -m eval.experts merge --branch runs/btm-cartpole --branch runs/btm-shapes ... --out runs/btm-average
    python -m eval.experts extract --checkpoint runs/gato-task-moe --task cartpole --out runs/task-moe-cartpole
    python -m eval.experts compare --run dense=runs/gato-dense --run task-moe=runs/gato-task-moe \\
        --ensemble btm=runs/btm-cartpole,runs/btm-shapes,... --single runs/single-cartpole ... --episodes 20

``merge`` and ``extract`` write run folders that eval.control and eval.caption read. ``compare`` evaluates every
system on every task of the first run's mixture (expert-normalised score over --episodes held-out seeds; caption
accuracy on --samples test images and on the held-out colour-shape pairs when the card has that split), measures
active parameters per token, training and inference tokens/s on one fixed set of sequences, the expert load and,
for task-routed systems, each extracted subnetwork's size and speed; a DEMix run is also evaluated with the task
unknown (posterior mixture). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from multimodal.cli import HelpFormatter, add_threads_argument, run_cli
from multimodal.config import ConfigError
from multimodal.io import atomic_write_json

# The library (torch, the models, the evaluators) is imported inside the functions that use it, so that --help
# answers at once.

__all__ = ["main"]


def _gato_run(path: str) -> tuple[dict[str, Any], Any]:
    from multimodal.runs import load_checkpoint, read_run_config

    return read_run_config(path, task="gato"), load_checkpoint(path, ema=False)


def _task_names(cfg: dict[str, Any]) -> dict[str, str]:
    """The run's task.mixture keys -> their cards' names (the task names models use)."""
    from multimodal.data import load_card

    return {key: load_card(key).name for key in (cfg.get("task") or {}).get("mixture") or {}}


def _model_args(cfg: dict[str, Any], model) -> dict[str, Any]:
    """The run's model.args with the fields where ``model.cfg`` now differs from what they built."""
    import torch

    from multimodal.models import create_model

    args = dict((cfg.get("model") or {}).get("args") or {})
    with torch.device("meta"):
        before = create_model(cfg["model"]["name"], **args).cfg.to_dict()
    return args | {k: v for k, v in model.cfg.to_dict().items() if before.get(k) != v}


def merge(args: argparse.Namespace) -> None:
    from multimodal.models.btm import average_branches
    from multimodal.runs import run_dir, write_run
    from multimodal.tokenizers.gato import TOKENIZER_FILE

    if len(args.branch) < 2:
        raise ConfigError("merge needs at least two --branch runs")
    runs = [_gato_run(path) for path in args.branch]
    tokenizers = {(run_dir(Path(p)) / TOKENIZER_FILE).read_text() for p in args.branch}
    if len(tokenizers) != 1:
        raise ConfigError("the branches trained with different tokenizers: they did not start from one seed run")
    merged = average_branches([model for _, model in runs], args.weights)
    config = json.loads(json.dumps(runs[0][0]))  # a deep copy of the first branch's recipe
    config["model"].pop("init_from", None)
    mixture = {key: 1.0 for cfg, _ in runs for key in (cfg.get("task") or {}).get("mixture") or {}}
    config["task"]["mixture"] = mixture
    config["run"]["name"] = Path(args.out).name
    config["merged_from"] = {"branches": list(args.branch), "weights": args.weights or "uniform"}
    write_run(args.out, config, merged, files=[run_dir(Path(args.branch[0])) / TOKENIZER_FILE])
    print(f"wrote {args.out}: the parameter average of {len(runs)} branches over {', '.join(mixture)}")


def extract(args: argparse.Namespace) -> None:
    from multimodal.runs import run_dir, write_run
    from multimodal.tokenizers.gato import TOKENIZER_FILE

    cfg, model = _gato_run(args.checkpoint)
    names = _task_names(cfg)
    key = next((k for k, name in names.items() if args.task in (k, name)), None)
    if key is None:
        raise ConfigError(f"--task {args.task!r} is not one of the run's tasks {list(names.values())}")
    dense = model.extract_task(names[key])
    config = json.loads(json.dumps(cfg))
    config["model"]["args"] = _model_args(cfg, dense)
    config["model"].pop("init_from", None)
    config["task"]["mixture"] = {key: cfg["task"]["mixture"][key]}
    config["run"]["name"] = Path(args.out).name
    config["extracted_from"] = {"checkpoint": str(args.checkpoint), "task": names[key]}
    write_run(args.out, config, dense, files=[run_dir(Path(args.checkpoint)) / TOKENIZER_FILE])
    full, sub = (sum(p.numel() for p in m.parameters()) for m in (model, dense))
    print(f"wrote {args.out}: task {names[key]!r}, {sub:,} parameters (the full model has {full:,})")


def _labelled(text: str, what: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep or not label or not value:
        raise ConfigError(f"{what} takes LABEL=RUN, got {text!r}")
    return label, value


def _evaluate(model, tokenizer, cards, cfg_data, args, task_of) -> dict[str, float]:
    """Score per task: expert-normalised control score, caption accuracy (test and held-out)."""
    from multimodal.data import ensure_dataset
    from multimodal.evaluation import evaluate_captioning, evaluate_control

    scores = {}
    for name, card in cards.items():
        task = task_of(name)
        if card.generator == "control":
            out = evaluate_control(model, tokenizer, card, episodes=args.episodes, task=task)
            scores[name] = out["normalised_score"]
            continue
        ensure_dataset(card)
        for split in ("test", "heldout"):
            if split in card.splits:
                out, _ = evaluate_captioning(
                    model, tokenizer, card, split, samples=args.samples,
                    image_size=int(cfg_data.get("image_size", 32)), task=task,
                )  # fmt: skip
                scores[name if split == "test" else f"{name} ({split})"] = out["accuracy"]
    return scores


def compare(args: argparse.Namespace) -> dict[str, Any]:
    from multimodal.data import load_card
    from multimodal.evaluation.experts import active_parameters, expert_load, measurement_batches, throughput
    from multimodal.models.btm import GatoEnsemble
    from multimodal.runs import load_gato_tokenizer, read_run_config

    systems: dict[str, tuple[list[str], bool]] = {}  # label -> (runs, is an ensemble)
    for text in args.run:
        label, path = _labelled(text, "--run")
        systems[label] = ([path], False)
    for text in args.ensemble or []:
        label, paths = _labelled(text, "--ensemble")
        systems[label] = (paths.split(","), True)
    if not systems:
        raise ConfigError("compare needs at least one --run or --ensemble")
    first_cfg = read_run_config(next(iter(systems.values()))[0][0], task="gato")
    cards = {name: load_card(key) for key, name in _task_names(first_cfg).items()}
    results: dict[str, Any] = {}
    batches = None
    for label, (paths, is_ensemble) in systems.items():
        runs = [_gato_run(p) for p in paths]
        models = [m for _, m in runs]
        model = GatoEnsemble(models) if is_ensemble else models[0]
        tokenizer = load_gato_tokenizer(paths[0], models[0])
        if batches is None:
            batches = measurement_batches(
                tokenizer, cards, context_length=models[0].cfg.context_length,
                image_size=int(first_cfg.get("data", {}).get("image_size", 32)),
            )  # fmt: skip
        row: dict[str, Any] = {"runs": paths, "active_parameters": active_parameters(model)}
        row["train_tokens_per_s"] = None if is_ensemble else throughput(model, batches, train=True)
        row["infer_tokens_per_s"] = throughput(model, batches, train=False)
        row["expert_load"] = None if is_ensemble else expert_load(model, batches)
        routed = not is_ensemble and model.cfg.routes_by_task
        row["scores"] = _evaluate(
            model, tokenizer, cards, runs[0][0].get("data") or {}, args,
            (lambda name: None) if is_ensemble else model.task_id,
        )  # fmt: skip
        if routed:
            row["subnetworks"] = {}
            for name in cards:
                dense = model.extract_task(name)
                row["subnetworks"][name] = {  # the subnetwork and the full model on the same task's sequences
                    "parameters": sum(p.numel() for p in dense.parameters()),
                    "infer_tokens_per_s": throughput(dense, {name: batches[name]}, train=False),
                    "full_infer_tokens_per_s": throughput(model, {name: batches[name]}, train=False),
                }
        results[label] = row
        if not is_ensemble and model.cfg.mlp == "demix":
            unknown = dict(row, scores=_evaluate(model, tokenizer, cards, runs[0][0].get("data") or {}, args,
                                                 lambda name: "posterior"))  # fmt: skip
            unknown["infer_tokens_per_s"] = None  # the posterior costs a forward per task: not comparable
            results[f"{label} (task unknown)"] = unknown
        print(_row(label, results[label]), flush=True)
    for path in args.single or []:
        cfg, model = _gato_run(path)
        names = list(_task_names(cfg).values())
        if len(names) != 1:
            raise ConfigError(f"--single {path} trained on {names}: a single-task baseline has one task")
        tokenizer = load_gato_tokenizer(path, model)
        own = {names[0]: cards[names[0]]} if names[0] in cards else {names[0]: load_card(names[0])}
        scores = _evaluate(model, tokenizer, own, cfg.get("data") or {}, args, lambda name: None)
        results.setdefault("single-task", {"runs": [], "scores": {}})
        results["single-task"]["runs"].append(path)
        results["single-task"]["scores"].update(scores)
    table = _table(results)
    print(table)
    out = Path(args.out)
    atomic_write_json(out, {"episodes": args.episodes, "samples": args.samples, "systems": results})
    print(f"wrote {out}")
    return results


def _row(label: str, row: dict[str, Any]) -> str:
    scores = ", ".join(f"{k} {v:.3f}" for k, v in row["scores"].items())
    return f"{label}: {scores}"


def _table(results: dict[str, Any]) -> str:
    tasks = list(dict.fromkeys(t for row in results.values() for t in row["scores"]))
    head = ["system", *tasks, "active params", "train tok/s", "infer tok/s", "max expert load", "subnetwork (speed)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in results.items():
        cells = [label]
        cells += [f"{row['scores'][t]:.3f}" if t in row["scores"] else "" for t in tasks]
        cells.append(f"{row['active_parameters'] / 1e6:.2f}M" if row.get("active_parameters") else "")
        for key in ("train_tokens_per_s", "infer_tokens_per_s"):
            cells.append(f"{row[key]:,.0f}" if row.get(key) else "")
        loads = row.get("expert_load")  # the busiest expert's share over an even share, worst layer (1.00 = even)
        cells.append(f"{max(max(load) * len(load) for load in loads):.2f}" if loads else "")
        subnetworks = row.get("subnetworks")
        speedup = [s["infer_tokens_per_s"] / s["full_infer_tokens_per_s"] for s in (subnetworks or {}).values()]
        cells.append(
            f"{min(s['parameters'] for s in subnetworks.values()) / 1e6:.2f}M, {min(speedup):.2f}-{max(speedup):.2f}x"
            if subnetworks
            else ""
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Any:
    """The chosen subcommand."""
    return args.action(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.experts", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "merge", help="average BTM branches' parameters into one run", formatter_class=HelpFormatter
    )
    p.add_argument("--branch", action="append", required=True, help="a branch run (repeat for each)")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per branch, summing to 1 (default: uniform)")
    p.add_argument("--out", required=True, help="the merged run folder to write (must not exist)")
    p.set_defaults(action=merge)
    p = commands.add_parser("extract", help="a task's subnetwork as a dense run", formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run with task_moe or demix experts")
    p.add_argument("--task", required=True, help="the task (card name or task.mixture key)")
    p.add_argument("--out", required=True, help="the dense run folder to write (must not exist)")
    p.set_defaults(action=extract)
    p = commands.add_parser("compare", help="evaluate and measure systems side by side", formatter_class=HelpFormatter)
    p.add_argument("--run", action="append", default=[], help="LABEL=RUN, a system that is one run (repeatable)")
    p.add_argument("--ensemble", action="append", help="LABEL=RUN,RUN,..., a BTM ensemble of branch runs")
    p.add_argument("--single", action="append", help="a single-task baseline run (repeatable)")
    p.add_argument("--episodes", type=int, default=20, help="rollouts per control task")
    p.add_argument("--samples", type=int, default=1000, help="images captioned per split")
    p.add_argument("--out", default="experts.json", help="JSON path for the results")
    p.set_defaults(action=compare)
    for sub in commands.choices.values():
        add_threads_argument(sub)
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
