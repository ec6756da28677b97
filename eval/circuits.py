"""Circuits of a run: ``python -m eval.circuits --checkpoint RUN``, for language models of the lm task and GATO.

For a GATO run: where each head's attention from the window's action tokens goes, on prompted sequences of each
control dataset of its mixture (the demonstration, its actions, the own timestep, earlier timesteps), against
uniform attention; whether the policy uses its demonstration's actions: its action loss and accuracy with them
shuffled among the demonstration's timesteps, and with the heads that look at them most ablated; and each head's
previous-token, duplicate and induction scores on a run of timesteps said twice.

For a language model of the lm task:

Prints each head's previous-token, duplicate-token and induction score (on BOS + a random segment said twice) with
the chance level, the strongest Q-, K- and V-compositions against random low-rank maps, the loss on first
occurrences and on repeats with the best induction head ablated (then every head of at least half its score, then
the earlier head its keys K-compose with most: the previous-token head of the classic circuit), and,
for a model without blocks, how well the direct path matches the data's bigrams. ``--transformer-lens`` also loads
the weights into TransformerLens and prints how far its logits, patterns and scores are from ours. Writes the
numbers as JSON and the attention patterns and head scores as PNG heat maps beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from multimodal.config import ConfigError

from .common import add_common_options, cli_parser, result_path, run_cli, run_decoder, write_result
from .plot import heat_maps

__all__ = ["main"]


def table(out: dict[str, Any]) -> str:
    losses = out["losses"]
    lines = [f"loss: first occurrence {losses['first']:.4f}, repeat {losses['repeat']:.4f}"]
    if "transformer_lens" in out:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in out["transformer_lens"].items())
        lines.append(f"TransformerLens on the same weights, largest absolute difference: {diffs}")
    if "bigram" in out:
        b = out["bigram"]
        lines.append(f"direct path vs log-bigrams: correlation {b['correlation']:.4f} over {b['pairs']} pairs "
                     f"seen >= {b['min_count']} times")  # fmt: skip
        return "\n".join(lines)
    chance = out["chance"]
    lines += ["", f"{'layer':>5s} {'head':>4s} {'prev-token':>10s} {'duplicate':>9s} {'induction':>9s} "
                  f"{'(no repeat)':>11s}"]  # fmt: skip
    for h in out["heads"]:
        lines.append(
            f"{h['layer']:5d} {h['head']:4d} {h['previous_token']:10.4f} {h['duplicate_token']:9.4f} "
            f"{h['induction']:9.4f} {h['induction_control']:11.4f}"
        )
    lines.append(
        f"{'chance':>10s} {chance['previous_token']:10.4f} {chance['duplicate_token']:9.4f} {chance['induction']:9.4f}"
        "   (uniform attention)"
    )
    lines += composition_lines(out)
    lines.append("")
    for a in out["ablation"]:
        restored = ", ".join(f"{m} {v:.2f}" for m, v in a["share_of_drop_restored"].items())
        repeat = ", ".join(f"{m} {v:.4f}" for m, v in a["repeat_loss"].items())
        heads = " ".join(f"({layer}, {head})" for layer, head in a["heads"])
        lines.append(f"{a['what']} {heads} ablated: repeat loss {repeat}; share of the first-to-repeat drop taken "
                     f"back: {restored}")  # fmt: skip
    return "\n".join(lines)


def composition_lines(out: dict[str, Any]) -> list[str]:
    """The top three Q-, K- and V-compositions against the random baseline (nothing for one layer)."""
    if "composition" not in out:
        return []
    base = out["composition_baseline"]
    lines = ["", f"composition, top 3 of each (random low-rank maps: mean {base['mean']:.4f}, std {base['std']:.4f}, "
                 f"99th percentile {base['p99']:.4f} of {base['samples']})"]  # fmt: skip
    for mode, pairs in out["composition"].items():
        top = ", ".join(f"{tuple(p['from'])} -> {tuple(p['to'])} {p['score']:.4f}" for p in pairs[:3])
        lines.append(f"  {mode.upper()}: {top}")
    return lines


def text_table(out: dict[str, Any]) -> str:
    chance, scored = out["chance"], "period" in out
    head = f"CLIP text tower on {out['captions']} captions: where the end-of-text query (the pooled token) looks"
    if scored:
        head += f"; scores on [sot] w w [eot], w {out['period']} ids of the captions' {out['word_ids']} words"
    columns = f"{'layer':>5s} {'head':>4s} {'eot>sot':>7s} {'eot>eot':>7s} "
    columns += f"{'prev-tok':>8s} {'dup':>6s} {'induct':>6s} " if scored else ""
    lines = [head, "", columns + " words the end-of-text reads"]
    for h in out["heads"]:
        row = f"{h['layer']:5d} {h['head']:4d} {h['eot_to_sot']:7.3f} {h['eot_to_itself']:7.3f} "
        row += f"{h['previous_token']:8.3f} {h['duplicate_token']:6.3f} {h['induction']:6.3f} " if scored else ""
        lines.append(row + " " + ", ".join(f"{w} {v:.2f}" for w, v in h["eot_top_words"]))
    row = f"{'chance':>10s} {chance['eot_to_sot']:7.3f} {'':7s} "
    row += (
        f"{chance['previous_token']:8.3f} {chance['duplicate_token']:6.3f} {chance['induction']:6.3f}"
        if scored
        else ""
    )
    return "\n".join([*lines, row + "   (uniform attention)", *composition_lines(out)])


def vision_table(out: dict[str, Any], name: str) -> str:
    chance, cls = out["chance"], out["prefix_tokens"] > 0
    grid = "x".join(str(g) for g in out["grid"])
    head = f"{name} on {out['images']} images ({grid} patches{' and a class token' if cls else ''}): patch queries' "
    head += "mean attention distance (patches), share to themselves"
    head += ", to the class token; the class token's share to itself" if cls else ""
    columns = f"{'layer':>5s} {'head':>4s} {'distance':>8s} {'self':>6s}" + (
        f" {'>cls':>6s} {'cls>cls':>7s}" if cls else ""
    )
    lines = [head, "", columns]
    for h in out["heads"]:
        row = f"{h['layer']:5d} {h['head']:4d} {h['patch_mean_distance']:8.3f} {h['patch_to_itself']:6.3f}"
        lines.append(row + (f" {h['patch_to_cls']:6.3f} {h['cls_to_cls']:7.3f}" if cls else ""))
    row = f"{'chance':>10s} {chance['patch_mean_distance']:8.3f} {chance['patch_to_itself']:6.3f}"
    row += f" {chance['patch_to_cls']:6.3f} {chance['cls_to_cls']:7.3f}" if cls else ""
    return "\n".join([*lines, row + "   (uniform attention)", *composition_lines(out)])


def eval_batch(args: argparse.Namespace, cfg: dict[str, Any], *, text: bool) -> dict[str, Any]:
    """``--images`` samples of the run's dataset (its test split, else its first), decoded as the run trained."""
    from multimodal.data import ensure_dataset, load_card, make_loader
    from multimodal.evaluation.classification import eval_stream

    data = cfg.get("data") or {}
    card = load_card(data.get("dataset", "shapes"))
    split = "test" if "test" in card.splits else next(iter(card.splits))
    card.split(split)
    ensure_dataset(card)
    decoder = run_decoder(data, text_key=card.text_key if text else None, image_key=card.image_key)
    return next(iter(make_loader(eval_stream(card, split, decoder=decoder, batch_size=args.images), num_workers=0)))


def vision_pictures(out: dict[str, Any], path: Path, title: str) -> None:
    maps = out.pop("cls_maps", None)
    if maps is not None:
        L, H = maps.shape[:2]
        scale = maps.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]  # each panel to its own maximum
        panels = [(f"l{i} h{h}", (maps[i, h] / scale[i, h]).tolist()) for i in range(L) for h in range(H)]
        heat_maps(panels, path, title=title, cell=12)


def run_tower(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    """A CLIP run (both towers) or a ViT classifier."""
    from multimodal.evaluation.circuits import analyse_text_tower, analyse_vision_tower
    from multimodal.models.clip import CLIP
    from multimodal.models.vit import VisionTransformer
    from multimodal.runs import get_tokenizer, load_checkpoint

    model = load_checkpoint(args.checkpoint)
    folder = result_path(args, "circuits.json").parent
    out: dict[str, Any] = {"checkpoint": str(args.checkpoint)}
    tables = []
    if isinstance(model, CLIP):
        batch = eval_batch(args, cfg, text=True)
        text = analyse_text_tower(model.text, get_tokenizer(model), list(batch["text"]), seed=args.seed)
        patterns, words = text.pop("patterns"), text.pop("first_caption")
        n = len(words)
        L, H = patterns.shape[:2]
        panels = [(f"l{i} h{h}", patterns[i, h, :n, :n].tolist()) for i in range(L) for h in range(H)]
        heat_maps(panels, folder / "circuits-text-patterns.png", title="text attention: " + " ".join(words), cell=10)
        out["text"] = text
        tables.append(text_table(text))
        vision, name = model.visual, "CLIP image tower"
    else:
        batch, vision, name = eval_batch(args, cfg, text=False), model, "ViT"
    if not isinstance(vision, VisionTransformer):
        raise ConfigError(f"{args.checkpoint}'s image model is a {type(vision).__name__}; eval.circuits reads ViTs")
    images = analyse_vision_tower(vision, batch["image"], seed=args.seed)
    vision_pictures(images, folder / "circuits-cls-maps.png", f"{name}: class token attention over the patches "
                    "of the first test image (each panel scaled to its maximum)")  # fmt: skip
    out["vision"] = images
    tables.append(vision_table(images, name))
    write_result(args, "circuits.json", out, table="\n\n".join(tables))
    return out


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
    if "use" in out:
        use = out["use"]
        clean, shuffled = use["as_is"], use["prompt_actions_shuffled"]
        lines.append(
            f"window action loss (accuracy): as is {clean['loss']:.4f} ({clean['accuracy']:.3f}); the demonstration's "
            f"actions shuffled among its timesteps ({use['moved']:.0%} changed) {shuffled['loss']:.4f} "
            f"({shuffled['accuracy']:.3f})"
        )
        for a in use["ablated"]:
            lines.append(f"  head {tuple(a['head'])} ablated: {a['loss']:.4f} ({a['accuracy']:.3f})")
    if "repeated" in out:
        rep, chance = out["repeated"], out["repeated"]["chance"]
        lines += [f"on {rep['timesteps']} timesteps said twice ({rep['period']} tokens apart):",
                  f"{'layer':>5s} {'head':>4s} {'prev-token':>10s} {'duplicate':>9s} {'induction':>9s}"]  # fmt: skip
        for h in rep["heads"]:
            lines.append(f"{h['layer']:5d} {h['head']:4d} {h['previous_token']:10.4f} {h['duplicate_token']:9.4f} "
                         f"{h['induction']:9.4f}")  # fmt: skip
        lines.append(f"{'chance':>10s} {chance['previous_token']:10.4f} {chance['duplicate_token']:9.4f} "
                     f"{chance['induction']:9.4f}   (uniform attention)")  # fmt: skip
    return "\n".join(lines)


def run_gato(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    from multimodal.circuits import head_weights
    from multimodal.data import ensure_dataset, load_card
    from multimodal.data.control import env_spec, read_episodes
    from multimodal.evaluation.circuits import prompt_attention, prompt_use, repeated_control_scores, top_compositions
    from multimodal.runs import load_checkpoint, load_gato_tokenizer

    model = load_checkpoint(args.checkpoint, ema=False)
    tokenizer = load_gato_tokenizer(args.checkpoint, model)
    results = {}
    for name in (cfg.get("task") or {}).get("mixture") or {}:
        card = load_card(name)
        if card.generator != "control":
            continue
        ensure_dataset(card)
        episodes = [tokenizer.encode_arrays(e.observations, e.actions) for e in read_episodes(card, "train")]
        spec = env_spec(card.generator_args["env_id"])
        out = prompt_attention(model, episodes, spec, seed=args.seed)
        # The heads that look at the demonstration's actions most (twice uniform, else the one that looks most).
        ranked = sorted(out["heads"], key=lambda h: -h["prompt_actions"])
        keen = [h for h in ranked if h["prompt_actions"] >= 2 * out["uniform"]["prompt_actions"]] or ranked[:1]
        out["use"] = prompt_use(model, episodes, spec, [(h["layer"], h["head"]) for h in keen], seed=args.seed)
        out["repeated"] = repeated_control_scores(model, episodes, spec, seed=args.seed)
        results[card.name] = out
    if not results:
        raise ConfigError(f"the GATO run at {args.checkpoint} trained on no control dataset")
    folder = result_path(args, "circuits.json").parent
    regions = ("prompt", "prompt_actions", "own_timestep", "earlier_window")
    for out in results.values():  # rows: heads of a layer; columns: the regions, as a share of attention
        layers = sorted({h["layer"] for h in out["heads"]})
        panels = [(f"layer {i}", [[h[r] for r in regions] for h in out["heads"] if h["layer"] == i]) for i in layers]
        title = (
            f"{out['env']}: action tokens' attention to the prompt, its actions, the own timestep, earlier timesteps"
        )
        heat_maps(panels, folder / f"circuits-{out['env']}.png", title=title + " (columns); heads (rows)", cell=28)
    compositions = top_compositions(head_weights(model), seed=args.seed)
    table = "\n".join(["\n\n".join(gato_table(out) for out in results.values()), *composition_lines(compositions)])
    saved = {"checkpoint": str(args.checkpoint), "control": results, **compositions}
    write_result(args, "circuits.json", saved, table=table)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    from multimodal.data.sequences import MarkovRepeats
    from multimodal.evaluation.circuits import analyse_lm, transformer_lens_agreement
    from multimodal.runs import load_checkpoint, read_run_config

    cfg = read_run_config(args.checkpoint)
    task = cfg.get("task") or {}
    if task.get("name") == "gato":
        return run_gato(args, cfg)
    if task.get("name") in ("clip", "classification"):
        return run_tower(args, cfg)
    if task.get("name") != "lm":
        raise ConfigError(
            f"{args.checkpoint} is a {task.get('name')!r} run; eval.circuits reads runs of the lm, gato, clip and "
            "classification (ViT) tasks"
        )
    data = MarkovRepeats(**{f.name: task[f.name] for f in dataclasses.fields(MarkovRepeats) if f.name in task})
    model = load_checkpoint(args.checkpoint, ema=False)
    out = analyse_lm(model, data, period=args.period, seed=args.seed)
    if args.transformer_lens:
        out["transformer_lens"] = transformer_lens_agreement(
            model, data.vocab_size, period=args.period, seed=args.seed
        )
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
    parser = cli_parser("python -m eval.circuits", __doc__, "run directory of the lm, gato, clip or ViT task")
    parser.add_argument("--period", type=int, default=20, help="length of the random segment said twice")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scored sequences and the baselines")
    parser.add_argument("--images", type=int, default=64, help="clip and ViT runs: test samples to look at")
    parser.add_argument(
        "--transformer-lens",
        action="store_true",
        help="lm runs: also load the weights into TransformerLens and report the largest differences from ours",
    )
    add_common_options(parser, out="RUN/eval/circuits.json (the PNGs beside it)")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
