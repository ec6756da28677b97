"""The circuits analysis of a language model of the lm task (:class:`~multimodal.models.lm.TransformerLM`): what
Elhage et al. 2021 and Olsson et al. 2022 measure on their toy models, measured on ours.

* every head's previous-token, duplicate-token and induction score on BOS + repeated uniform random ids, and the
  score a head attending uniformly would get (the chance level); and the induction stripe's attention on the same
  layout with a fresh second half (the control: what a head gives those positions when nothing repeats);
* the Q-, K- and V-composition of every head with every head of a later layer, against random low-rank maps of
  the same shapes;
* in-context learning: loss on the first occurrence of each segment and on its repeat, then with the best induction
  head ablated (how much of the drop it accounts for), every induction head ablated, and the earlier head the best
  one's keys K-compose with most ablated;
* for a model without blocks, how well the direct path W_E W_U matches the data's log-bigram table.

:func:`prompt_attention` asks the GATO question: where do a control policy's action tokens look, on prompted
sequences as training builds them: at the demonstration (its tokens, its actions), at their own timestep's
observation, at earlier timesteps of the window; each head against what uniform attention over the visible keys
would give.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..circuits import (
    HeadWeights,
    ablate_heads,
    attention_patterns,
    composition_baseline,
    composition_scores,
    duplicate_token_scores,
    head_weights,
    induction_scores,
    previous_token_scores,
    repeated_tokens,
    to_hooked_transformer,
)
from ..data.control import EnvSpec
from ..data.sequences import BOS, MarkovRepeats, bigram_log_probs
from ..nn.hooks import run_with_cache
from ..pipelines.gato import control_layout, prompted_window
from ..tokenizers.gato import GatoTokens, collate_tokens

__all__ = [
    "analyse_lm",
    "analyse_text_tower",
    "analyse_vision_tower",
    "bigram_match",
    "next_token_losses",
    "prompt_attention",
    "prompt_use",
    "repeated_control_scores",
    "sequence_losses",
    "top_compositions",
    "transformer_lens_agreement",
]


def next_token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """(B, N - 1) cross-entropy of each position's logits (B, N, V) against the token after it."""
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    return per_token.view(len(tokens), -1)


def sequence_losses(per_token: Tensor, periods: Tensor, data: MarkovRepeats) -> dict[str, Tensor]:
    """Mean of :func:`next_token_losses` on the segments' first occurrences and on their repeats (0-d tensors)."""
    first, repeat = (mask.to(per_token.device) for mask in data.halves(periods))
    return {"first": per_token[first].mean(), "repeat": per_token[repeat].mean()}


def bigram_match(model: torch.nn.Module, data: MarkovRepeats, *, sequences: int = 4096, min_count: int = 20) -> dict:
    """Pearson correlation of the direct path's next-token log-probabilities, log_softmax(W_E W_U), with the
    empirical log-bigram table of ``sequences`` training-distribution sequences, over the pairs seen at least
    ``min_count`` times."""
    tokens, _ = data.batch(sequences, seed=0, index=0)
    empirical, counts = bigram_log_probs(tokens, data.vocab_size)
    with torch.no_grad():
        direct = (model.W_E @ model.W_U).log_softmax(-1).double()  # (V, V)
    seen = counts >= min_count
    pair = torch.stack([direct[seen], empirical[seen]])
    return {"correlation": torch.corrcoef(pair)[0, 1].item(), "pairs": int(seen.sum()), "min_count": min_count}


def _uniform_patterns(n: int) -> Tensor:
    """(1, 1, 1, n, n) causal uniform attention: the chance level of every score."""
    causal = torch.ones(n, n).tril()
    return (causal / causal.sum(-1, keepdim=True))[None, None, None]


def analyse_lm(
    model: torch.nn.Module,
    data: MarkovRepeats,
    *,
    period: int = 20,
    batch: int = 64,
    seed: int = 0,
    baselines: int = 500,
) -> dict[str, Any]:
    """Everything the module docstring lists, as plain numbers (and the patterns, for pictures)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"depth": model.cfg.depth}
    tokens, periods = data.batch(1024, seed=1_000_000 + seed, index=0)
    with torch.no_grad():
        losses = sequence_losses(next_token_losses(model(tokens), tokens), periods, data)
    out["losses"] = {k: v.item() for k, v in losses.items()}
    if model.transformer is None:
        out["bigram"] = bigram_match(model, data)
        return out
    scored = repeated_tokens(batch, period, data.vocab_size, low=1, prefix=[BOS], generator=gen)
    fresh = torch.randint(1, data.vocab_size, (batch, period), generator=gen)
    control = torch.cat([scored[:, : 1 + period], fresh], dim=1)  # the same layout, nothing repeated
    with torch.no_grad():
        patterns = attention_patterns(model, scored)  # (L, B, H, N, N)
        unrepeated = attention_patterns(model, control)
    scores = _head_scores(patterns, period)
    # The induction stripe's attention when nothing repeats: what a head gives it for position alone.
    scores["induction_control"] = induction_scores(unrepeated, period, prefix=1)
    out["chance"] = {k: v.item() for k, v in _head_scores(_uniform_patterns(scored.shape[1]), period).items()}
    out["heads"] = [
        {"layer": layer, "head": head, **{k: v[layer, head].item() for k, v in scores.items()}}
        for layer in range(patterns.shape[0])
        for head in range(patterns.shape[2])
    ]
    out["patterns"] = patterns[:, 0]  # (L, H, N, N): the first sequence's, for pictures
    best = max(out["heads"], key=lambda h: h["induction"])
    out["best_induction"] = {"layer": best["layer"], "head": best["head"], "score": best["induction"]}
    out.update(top_compositions(head_weights(model), baselines=baselines, seed=seed))
    induction_heads = [(h["layer"], h["head"]) for h in out["heads"] if h["induction"] >= best["induction"] / 2]
    ablated = {"best induction head": [(best["layer"], best["head"])], "induction heads": induction_heads}
    if "composition" in out:  # the earlier head whose output the best induction head's keys read most
        into_best = [p for p in out["composition"]["k"] if p["to"] == (best["layer"], best["head"])]
        if into_best:
            out["k_partner"] = into_best[0]
            ablated["its K-composition partner"] = [into_best[0]["from"]]
    drop = out["losses"]["first"] - out["losses"]["repeat"]
    out["ablation"] = [{"what": what, **_ablation(model, tokens, periods, data, heads, out["losses"], drop)}
                       for what, heads in ablated.items()]  # fmt: skip
    return out


def transformer_lens_agreement(
    model: torch.nn.Module, vocab_size: int, *, period: int = 20, batch: int = 64, seed: int = 0
) -> dict[str, float]:
    """Largest absolute differences between ``model`` and the same weights in a TransformerLens ``HookedTransformer``
    (norms folded) on the sequences :func:`analyse_lm` scores: logits, attention patterns, the induction and
    previous-token scores computed from each one's patterns, and the composition scores (ours against
    ``HookedTransformer.all_composition_scores``)."""
    hooked = to_hooked_transformer(model, fold_norm=True)
    gen = torch.Generator().manual_seed(seed)
    tokens = repeated_tokens(batch, period, vocab_size, low=1, prefix=[BOS], generator=gen)
    model.eval()
    with torch.no_grad():
        ours, cache = run_with_cache(model, tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
        theirs, their_cache = hooked.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    out = {"logits": (ours - theirs).abs().max().item()}
    if model.transformer is None:
        return out
    mine, other = cache.stack("attn.hook_pattern"), their_cache.stack_activation("pattern")  # (L, B, H, N, N)
    out["patterns"] = (mine - other).abs().max().item()

    def induction(patterns: Tensor) -> Tensor:
        return induction_scores(patterns, period, prefix=1)

    for name, score in (("induction", induction), ("previous_token", previous_token_scores)):
        out[name] = (score(mine) - score(other)).abs().max().item()
    weights = head_weights(model)
    for mode in ("q", "k", "v"):
        scores = composition_scores(weights, mode)
        later = ~scores.isnan()
        out[f"{mode}_composition"] = (
            (scores[later] - hooked.all_composition_scores(mode.upper())[later]).abs().max().item()
            if later.any()
            else 0.0
        )
    return out


def top_compositions(weights: HeadWeights, *, baselines: int = 500, seed: int = 0) -> dict[str, Any]:
    """Every pair's Q-, K- and V-composition score, best first, and the random low-rank baseline; empty for a
    single layer (no later head to compose with)."""
    if weights.layers < 2:
        return {}
    chance = composition_baseline(*weights.W_Q.shape[-2:], samples=baselines, seed=seed)
    out: dict[str, Any] = {
        "composition_baseline": {
            "mean": chance.mean().item(),
            "std": chance.std().item(),
            "p99": chance[int(0.99 * (len(chance) - 1))].item(),
            "samples": baselines,
        },
        "composition": {},
    }
    for mode in ("q", "k", "v"):
        scores = composition_scores(weights, mode)  # (L, H, L, H), NaN unless the second is later
        pairs = [
            {"from": (l1, h1), "to": (l2, h2), "score": scores[l1, h1, l2, h2].item()}
            for l1, h1, l2, h2 in (~scores.isnan()).nonzero().tolist()
        ]
        out["composition"][mode] = sorted(pairs, key=lambda p: -p["score"])
    return out


def _block_patterns(tower: torch.nn.Module, *args: Any) -> Tensor:
    """(L, B, H, N, N) self-attention patterns of ``tower.transformer``'s blocks (not of an attention-pool head)."""
    _, cache = run_with_cache(
        tower, *args, names_filter=lambda n: n.startswith("transformer.blocks.") and n.endswith(".attn.hook_pattern")
    )
    return cache.stack("attn.hook_pattern")


def analyse_text_tower(
    tower: torch.nn.Module,
    tokenizer: Any,
    captions: list[str],
    *,
    batch: int = 64,
    seed: int = 0,
    baselines: int = 500,
) -> dict[str, Any]:
    """A CLIP text tower (causal, pooled at the end-of-text token) on ``captions`` and on repeated caption words.

    Per head: where the end-of-text query (the token the text embedding is taken from) attends: the start token,
    itself, and the caption words it reads most (mean share over captions, by word); and the previous-token,
    duplicate and induction scores on ``[sot] w w [eot]``, ``w`` a run of ``period`` ids drawn from the captions'
    words, ``period`` as long as the context allows. Plus the chance levels and the top compositions.
    """
    tower.eval()
    ids = tokenizer(captions)  # (B, L): sot, words, eot, padding
    eot = ids.argmax(dim=-1)  # (B,) open_clip's argmax pooling
    with torch.no_grad():
        patterns = _block_patterns(tower, ids)  # (L, B, H, N, N)
    L, B, H, N, _ = patterns.shape
    rows = patterns.permute(1, 3, 0, 2, 4)[torch.arange(B), eot].transpose(0, 1)  # (L, B, H, N): end-of-text rows
    words: dict[str, Tensor] = {}
    for b in range(B):
        for position in range(1, int(eot[b])):
            word = tokenizer.decode([int(ids[b, position])]).strip()
            words[word] = words.get(word, torch.zeros(L, H)) + rows[:, b, :, position] / B
    heads = []
    for layer in range(L):
        for head in range(H):
            top = sorted(words.items(), key=lambda kv: -kv[1][layer, head].item())[:3]
            heads.append({
                "layer": layer, "head": head,
                "eot_to_sot": rows[layer, :, head, 0].mean().item(),
                "eot_to_itself": rows[layer, torch.arange(B), head, eot].mean().item(),
                "eot_top_words": [(w, share[layer, head].item()) for w, share in top],
            })  # fmt: skip
    out: dict[str, Any] = {"captions": B, "chance": {"eot_to_sot": (1.0 / (eot + 1).float()).mean().item()}}
    vocab = torch.tensor(sorted({int(i) for i in ids.flatten()} - {0, tokenizer.sot_token_id, tokenizer.eot_token_id}))
    period = (N - 2) // 2
    if len(vocab) >= 2 and period >= 2:
        gen = torch.Generator().manual_seed(seed)
        said = vocab[repeated_tokens(batch, period, len(vocab), generator=gen)]  # (batch, 2 * period)
        sot, end = torch.full((batch, 1), tokenizer.sot_token_id), torch.full((batch, 1), tokenizer.eot_token_id)
        with torch.no_grad():
            repeated = _block_patterns(tower, torch.cat([sot, said, end], dim=1))[..., :-1, :-1]  # causal: eot off
        scores = _head_scores(repeated, period)
        for h in heads:
            h.update({k: v[h["layer"], h["head"]].item() for k, v in scores.items()})
        out["chance"].update({k: v.item() for k, v in _head_scores(_uniform_patterns(2 * period + 1), period).items()})
        out["period"], out["word_ids"] = period, len(vocab)
    out["heads"] = heads
    out["patterns"] = patterns[:, 0]  # (L, H, N, N): the first caption's
    special = {tokenizer.sot_token_id: "<sot>", tokenizer.eot_token_id: "<eot>"}
    out["first_caption"] = [
        special.get(int(i)) or tokenizer.decode([int(i)]).strip() for i in ids[0, : int(eot[0]) + 1]
    ]
    out.update(top_compositions(head_weights(tower), baselines=baselines, seed=seed))
    return out


def _head_scores(patterns: Tensor, period: int, prefix: int = 1) -> dict[str, Tensor]:
    """Previous-token, duplicate-token and induction scores (L, H) on repeats of ``period`` after ``prefix`` tokens
    (the lm and text analyses: one BOS or start token)."""
    return {
        "previous_token": previous_token_scores(patterns),
        "duplicate_token": duplicate_token_scores(patterns, period, prefix=prefix),
        "induction": induction_scores(patterns, period, prefix=prefix),
    }


def analyse_vision_tower(
    tower: torch.nn.Module, images: Tensor, *, seed: int = 0, baselines: int = 500
) -> dict[str, Any]:
    """A ViT (a classifier or CLIP's image tower) on ``images``: per head, where the class token's query attends
    (itself, the patches), and, for patch queries, their share to the class token, to themselves, and their mean
    attention distance in patches (Dosovitskiy et al. 2021, Fig. 7), against uniform attention; the class token's
    attention over the patch grid of the first image (for pictures); the top compositions."""
    tower.eval()
    prefix = tower.num_prefix_tokens
    grid_h, grid_w = tower.patch_embed.grid_size
    with torch.no_grad():
        patterns = _block_patterns(tower, images)  # (L, B, H, T, T), T = prefix + grid_h * grid_w
    L, B, H, T, _ = patterns.shape
    cells = torch.stack(torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij"), -1).flatten(0, 1)
    distance = torch.cdist(cells.float(), cells.float())  # (P, P) in patches
    to_patches = patterns[..., prefix:, prefix:]  # (L, B, H, P, P): patch queries to patch keys
    share = to_patches.sum(-1).clamp_min(1e-12)  # (L, B, H, P)
    mean_distance = ((to_patches * distance).sum(-1) / share).mean(dim=(1, 3))  # (L, H)
    self_share = to_patches.diagonal(dim1=-2, dim2=-1).mean(dim=(1, 3))  # (L, H)
    heads = []
    for layer in range(L):
        for head in range(H):
            row = {"layer": layer, "head": head, "patch_mean_distance": mean_distance[layer, head].item(),
                   "patch_to_itself": self_share[layer, head].item()}  # fmt: skip
            if prefix:
                row["cls_to_cls"] = patterns[layer, :, head, 0, 0].mean().item()
                row["patch_to_cls"] = patterns[layer, :, head, prefix:, 0].mean().item()
            heads.append(row)
    out: dict[str, Any] = {
        "images": B,
        "grid": (grid_h, grid_w),
        "prefix_tokens": prefix,
        "heads": heads,
        "chance": {
            "patch_mean_distance": distance.mean().item(),  # uniform over the patches
            "patch_to_itself": 1.0 / T,
            **({"cls_to_cls": 1.0 / T, "patch_to_cls": 1.0 / T} if prefix else {}),
        },
    }
    if prefix:
        out["cls_maps"] = patterns[:, 0, :, 0, prefix:].reshape(L, H, grid_h, grid_w)  # the first image's
    out.update(top_compositions(head_weights(tower), baselines=baselines, seed=seed))
    return out


def _ablation(model, tokens, periods, data, heads, losses, drop) -> dict[str, Any]:
    """Repeat loss with ``heads`` ablated (zero, mean) and the share of the first-to-repeat drop that takes back."""
    repeat = {}
    for mode in ("zero", "mean"):
        with torch.no_grad():
            logits = ablate_heads(model, lambda: model(tokens), heads, mode=mode)
        repeat[mode] = sequence_losses(next_token_losses(logits, tokens), periods, data)["repeat"].item()
    restored = {m: (v - losses["repeat"]) / drop for m, v in repeat.items()}
    return {"heads": heads, "repeat_loss": repeat, "share_of_drop_restored": restored}


def _prompted_batch(
    model: torch.nn.Module, episodes: list[GatoTokens], spec: EnvSpec, sequences: int, seed: int
) -> tuple[dict[str, Tensor], int, int]:
    """``sequences`` prompted control sequences as training builds them (prompt always on), collated; the tokens per
    timestep and the prompt's length in tokens."""
    per_step, prompt_steps = control_layout(spec, model.cfg.context_length)
    prompt_len = prompt_steps * per_step
    rng = np.random.default_rng(seed)
    seqs = [prompted_window(episodes, spec, model.cfg.context_length, rng, prompt_prob=1.0) for _ in range(sequences)]
    seqs = [s for s in seqs if len(s) >= prompt_len + 2 * per_step]  # a full prompt and two window timesteps
    if not seqs:
        raise ValueError(f"no {spec.env_id} episode is long enough for a full prompt and two window timesteps")
    return collate_tokens(seqs), per_step, prompt_len


def prompt_use(
    model: torch.nn.Module,
    episodes: list[GatoTokens],
    spec: EnvSpec,
    heads: list[tuple[int, int]],
    *,
    sequences: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Does the policy use its demonstration's actions? Loss and accuracy of the window's action tokens (after its
    first timestep) on the sequences of :func:`prompt_attention`: as they are; with the prompt's actions shuffled
    among its timesteps (each demonstrated observation now followed by another timestep's action); and with each
    of ``heads`` zero-ablated. A policy that copies the action its demonstration took in a similar state loses
    accuracy when the pairing is broken; one that reads only its own observations does not."""
    batch, per_step, prompt_len = _prompted_batch(model, episodes, spec, sequences, seed)
    action = batch["loss_mask"].bool()
    query = action & (torch.arange(action.shape[1]) >= prompt_len + per_step)  # (B, N) the scored targets

    def score(hidden: Tensor, tokens: Tensor) -> dict[str, float]:
        targets = query[:, 1:]  # position t predicts token t + 1
        logits = model.logits(hidden[:, :-1][targets]).float()
        truth = tokens[:, 1:][targets]
        return {
            "loss": F.cross_entropy(logits, truth).item(),
            "accuracy": (logits.argmax(-1) == truth).float().mean().item(),
        }

    model.eval()
    with torch.no_grad():
        out = {"as_is": score(model(batch), batch["tokens"])}
        steps = batch["tokens"][:, :prompt_len].reshape(len(action), -1, per_step)  # (B, prompt steps, per step)
        acts = action[0, :per_step]  # the action slots of a timestep (every timestep has the same layout)
        order = torch.randperm(steps.shape[1], generator=torch.Generator().manual_seed(seed))
        shuffled = steps.clone()
        shuffled[:, :, acts] = steps[:, order][:, :, acts]
        tokens = batch["tokens"].clone()
        tokens[:, :prompt_len] = shuffled.flatten(1)
        out["prompt_actions_shuffled"] = score(model({**batch, "tokens": tokens}), batch["tokens"])
        out["moved"] = (steps[:, :, acts] != shuffled[:, :, acts]).float().mean().item()  # share of actions changed
        out["ablated"] = [{"head": head, **score(ablate_heads(model, lambda: model(batch), [head]), batch["tokens"])}
                          for head in heads]  # fmt: skip
    return out


def repeated_control_scores(
    model: torch.nn.Module, episodes: list[GatoTokens], spec: EnvSpec, *, sequences: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Each head's previous-token, duplicate-token and induction score on control sequences that say a run of
    timesteps twice: ``k`` consecutive timesteps of a demonstration (as many as half the context holds), then the
    same ``k`` again, so ``period`` = k timesteps of tokens; and the chance levels (uniform attention)."""
    per_step = control_layout(spec, model.cfg.context_length)[0]
    steps = model.cfg.context_length // (2 * per_step)
    period = steps * per_step
    rng = np.random.default_rng(seed)
    long_enough = [e for e in episodes if len(e) >= period]
    if not long_enough:
        raise ValueError(f"no {spec.env_id} episode has {steps} timesteps to repeat")
    runs = []
    for _ in range(sequences):
        episode = long_enough[int(rng.integers(len(long_enough)))]
        start = int(rng.integers(len(episode) // per_step - steps + 1)) * per_step
        run = episode.slice(start, start + period)
        runs.append(GatoTokens.concat([run, run]))
    model.eval()
    with torch.no_grad():
        _, cache = run_with_cache(
            model, collate_tokens(runs), names_filter=lambda name: name.endswith("attn.hook_pattern")
        )
    patterns = cache.stack("attn.hook_pattern")  # (L, B, H, 2 period, 2 period)
    scores = _head_scores(patterns, period, prefix=0)
    chance = {k: v.item() for k, v in _head_scores(_uniform_patterns(2 * period), period, prefix=0).items()}
    heads = [{"layer": layer, "head": head, **{k: v[layer, head].item() for k, v in scores.items()}}
             for layer in range(patterns.shape[0]) for head in range(patterns.shape[2])]  # fmt: skip
    return {"timesteps": steps, "period": period, "sequences": sequences, "heads": heads, "chance": chance}


def prompt_attention(
    model: torch.nn.Module, episodes: list[GatoTokens], spec: EnvSpec, *, sequences: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Mean attention of each head from the window's action tokens (after its first timestep) to: the prompt, the
    prompt's action tokens, the query's own timestep (observation and separator) and earlier window timesteps;
    and the same shares under uniform attention over the visible keys."""
    batch, per_step, prompt_len = _prompted_batch(model, episodes, spec, sequences, seed)
    model.eval()
    with torch.no_grad():
        _, cache = run_with_cache(model, batch, names_filter=lambda name: name.endswith("attn.hook_pattern"))
    patterns = cache.stack("attn.hook_pattern")  # (L, B, H, N, N)
    N = patterns.shape[-1]
    action = batch["loss_mask"].bool()  # (B, N): the action tokens of control sequences
    position = torch.arange(N)
    query = action & (position >= prompt_len + per_step)  # padding has no loss mask: never a query
    rows_b, rows_q = query.nonzero(as_tuple=True)  # every query (sequence, position)
    step_start = rows_q - (rows_q - prompt_len) % per_step  # first token of the query's timestep
    key = position[None, :]
    regions = {
        "prompt": key < prompt_len,
        "prompt_actions": (key < prompt_len) & action[rows_b],
        "own_timestep": (key >= step_start[:, None]) & (key < rows_q[:, None]),
        "earlier_window": (key >= prompt_len) & (key < step_start[:, None]),
    }  # each (K, N)
    visible = (key <= rows_q[:, None]).float()
    uniform = {
        name: ((mask.float() * visible).sum(-1) / visible.sum(-1)).mean().item() for name, mask in regions.items()
    }
    rows = patterns[:, rows_b, :, rows_q].permute(1, 0, 2, 3)  # (L, K, H, N): each query's row per layer, head
    heads = []
    for layer in range(patterns.shape[0]):
        for head in range(patterns.shape[2]):
            r = rows[layer, :, head]  # (K, N)
            shares = {name: (r * mask.float()).sum(-1).mean().item() for name, mask in regions.items()}
            heads.append({"layer": layer, "head": head, **shares})
    return {"env": spec.env_id, "queries": len(rows_q), "sequences": len(batch["tokens"]), "prompt_tokens": prompt_len,
            "uniform": uniform, "heads": heads}  # fmt: skip
