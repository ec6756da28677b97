"""The circuits analysis of a language model of the lm task (:class:`~multimodal.models.lm.TransformerLM`): what
Elhage et al. 2021 and Olsson et al. 2022 measure on their toy models, measured on ours.

* every head's previous-token, duplicate-token and induction score on BOS + repeated uniform random ids, and the
  score a head attending uniformly would get (the chance level);
* the Q-, K- and V-composition of every head with every head of a later layer, against random low-rank maps of
  the same shapes;
* in-context learning: loss on the first occurrence of each segment and on its repeat, then with the best induction
  head ablated (how much of the drop it accounts for);
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
    ablate_heads,
    attention_patterns,
    composition_baseline,
    composition_scores,
    duplicate_token_scores,
    head_weights,
    induction_scores,
    previous_token_scores,
    repeated_tokens,
)
from ..data.control import EnvSpec
from ..data.sequences import BOS, MarkovRepeats, bigram_log_probs
from ..nn.hooks import run_with_cache
from ..pipelines.gato import control_layout, prompted_window
from ..tokenizers.gato import GatoTokens, collate_tokens

__all__ = ["analyse_lm", "bigram_match", "next_token_losses", "prompt_attention", "sequence_losses"]


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
    with torch.no_grad():
        patterns = attention_patterns(model, scored)  # (L, B, H, N, N)
    scores = {
        "previous_token": previous_token_scores(patterns),
        "duplicate_token": duplicate_token_scores(patterns, period, prefix=1),
        "induction": induction_scores(patterns, period, prefix=1),
    }
    uniform = _uniform_patterns(scored.shape[1])
    out["chance"] = {
        "previous_token": previous_token_scores(uniform).item(),
        "duplicate_token": duplicate_token_scores(uniform, period, prefix=1).item(),
        "induction": induction_scores(uniform, period, prefix=1).item(),
    }
    out["heads"] = [
        {"layer": layer, "head": head, **{k: v[layer, head].item() for k, v in scores.items()}}
        for layer in range(patterns.shape[0])
        for head in range(patterns.shape[2])
    ]
    out["patterns"] = patterns[:, 0]  # (L, H, N, N): the first sequence's, for pictures
    best = max(out["heads"], key=lambda h: h["induction"])
    out["best_induction"] = {"layer": best["layer"], "head": best["head"], "score": best["induction"]}
    weights = head_weights(model)
    if weights.layers > 1:
        chance = composition_baseline(*weights.W_Q.shape[-2:], samples=baselines, seed=seed)
        out["composition_baseline"] = {
            "mean": chance.mean().item(),
            "std": chance.std().item(),
            "p99": chance[int(0.99 * (len(chance) - 1))].item(),
            "samples": baselines,
        }
        out["composition"] = {}
        for mode in ("q", "k", "v"):
            scores_ = composition_scores(weights, mode)  # (L, H, L, H), NaN unless the second is later
            pairs = [
                {"from": (l1, h1), "to": (l2, h2), "score": scores_[l1, h1, l2, h2].item()}
                for l1, h1, l2, h2 in (~scores_.isnan()).nonzero().tolist()
            ]
            out["composition"][mode] = sorted(pairs, key=lambda p: -p["score"])
    induction_heads = [(h["layer"], h["head"]) for h in out["heads"] if h["induction"] >= best["induction"] / 2]
    drop = out["losses"]["first"] - out["losses"]["repeat"]
    out["ablation"] = [_ablation(model, tokens, periods, data, heads, out["losses"], drop)
                       for heads in ([(best["layer"], best["head"])], induction_heads)]  # fmt: skip
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


def prompt_attention(
    model: torch.nn.Module, episodes: list[GatoTokens], spec: EnvSpec, *, sequences: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Mean attention of each head from the window's action tokens (after its first timestep) to: the prompt, the
    prompt's action tokens, the query's own timestep (observation and separator) and earlier window timesteps;
    and the same shares under uniform attention over the visible keys."""
    per_step, prompt_steps = control_layout(spec, model.cfg.context_length)
    prompt_len = prompt_steps * per_step
    rng = np.random.default_rng(seed)
    seqs = [prompted_window(episodes, spec, model.cfg.context_length, rng, prompt_prob=1.0) for _ in range(sequences)]
    seqs = [s for s in seqs if len(s) >= prompt_len + 2 * per_step]  # a full prompt and two window timesteps
    if not seqs:
        raise ValueError(f"no {spec.env_id} episode is long enough for a full prompt and two window timesteps")
    batch = collate_tokens(seqs)
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
    return {"env": spec.env_id, "queries": len(rows_q), "sequences": len(seqs), "prompt_tokens": prompt_len,
            "uniform": uniform, "heads": heads}  # fmt: skip
