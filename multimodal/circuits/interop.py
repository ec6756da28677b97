"""Take a :class:`~multimodal.models.lm.TransformerLM` into TransformerLens: the same weights in a
``HookedTransformer``, and our hook names as TransformerLens spells them.

    ht = to_hooked_transformer(model)                       # logits equal to float tolerance
    _, cache = ht.run_with_cache(tokens)
    cache[transformer_lens_name("transformer.blocks.1.attn.hook_pattern")]   # "blocks.1.attn.hook_pattern"

``fold_norm=True`` folds the norms' scales into the weights (TransformerLens's ``LNPre`` / ``RMSPre`` blocks), so its
``W_Q``, ``W_K``, ``W_V`` are :func:`~multimodal.circuits.head_weights`'s folded ones. Needs ``transformer-lens``
3.x (``HookedTransformer`` is gone in 4.0); it is imported only here.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..models.lm import NORM_EPS, TransformerLM
from ..nn import SwiGLU
from .weights import head_weights

__all__ = ["to_hooked_transformer", "transformer_lens_name"]

_NORMS = {"layer": "LN", "rms": "RMS", "none": None}
_ACTS = {"gelu": "gelu", "swiglu": "silu", "none": None}
_RENAMES = ((r"^transformer\.", ""), (r"\.norm1\.", ".ln1."), (r"\.norm2\.", ".ln2."), (r"^norm\.", "ln_final."))


def transformer_lens_name(name: str) -> str:
    """The TransformerLens name of one of a TransformerLM's hook points (``transformer.blocks.0.norm1.hook_scale``
    -> ``blocks.0.ln1.hook_scale``)."""
    for pattern, replacement in _RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _state_dict(model: TransformerLM, fold_norm: bool) -> dict[str, Tensor]:
    """HookedTransformer's state dict for ``model``; with ``fold_norm`` each norm's scale g (and LayerNorm shift s)
    is folded into the matrices reading its output: ``(x_hat * g + s) @ W + b = x_hat @ (g[:, None] W) + s @ W + b``.
    """
    sd: dict[str, Tensor] = {"embed.W_E": model.W_E, "pos_embed.W_pos": model.W_pos}

    def read(prefix: str, norm: nn.Module, weights: dict[str, Tensor], biases: dict[str, Tensor]) -> None:
        """The matrices (C, out) and biases (out,) reading ``norm``'s output, folded or with the norm's keys."""
        scale = getattr(norm, "weight", None)
        shift = getattr(norm, "bias", None)
        for key, weight in weights.items():
            bias = biases[key]
            if fold_norm and shift is not None:
                bias = bias + shift @ weight
            if fold_norm and scale is not None:
                weight = scale[:, None] * weight
            sd[key], sd[key.replace(".W_", ".b_")] = weight, bias
        if not fold_norm and scale is not None:
            sd[f"{prefix}.w"] = scale
        if not fold_norm and shift is not None:
            sd[f"{prefix}.b"] = shift

    read("ln_final", model.norm, {"unembed.W_U": model.W_U}, {"unembed.W_U": torch.zeros(model.cfg.vocab_size)})
    if model.transformer is None:
        return {k: v.detach().float().contiguous() for k, v in sd.items()}
    heads = head_weights(model, fold_norm=fold_norm)  # folds norm1 into W_Q, W_K, W_V itself
    for i, block in enumerate(model.transformer.blocks):
        if not fold_norm:
            read(f"blocks.{i}.ln1", block.norm1, {}, {})
        for key in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            sd[f"blocks.{i}.attn.{key}"] = getattr(heads, key)[i]
        mlp = block.mlp
        if mlp is None:
            continue
        hidden = mlp.fc2.in_features
        weight = mlp.fc1.weight.T  # (C, hidden) or, for SwiGLU, (C, 2 * hidden): [gate, value]
        bias = mlp.fc1.bias if mlp.fc1.bias is not None else torch.zeros(weight.shape[1])
        if isinstance(mlp, SwiGLU):
            (gate, value), (gate_b, value_b) = weight.split(hidden, dim=1), bias.split(hidden)
            weights = {f"blocks.{i}.mlp.W_gate": gate, f"blocks.{i}.mlp.W_in": value}
            biases = {f"blocks.{i}.mlp.W_gate": gate_b, f"blocks.{i}.mlp.W_in": value_b}
        else:
            weights, biases = {f"blocks.{i}.mlp.W_in": weight}, {f"blocks.{i}.mlp.W_in": bias}
        read(f"blocks.{i}.ln2", block.norm2, weights, biases)
        # HookedTransformer's gated MLP has no gate bias and adds b_in after the product: neither holds a bias here.
        if isinstance(mlp, SwiGLU) and (sd.pop(f"blocks.{i}.mlp.b_gate").any() or sd[f"blocks.{i}.mlp.b_in"].any()):
            raise ValueError(
                f"block {i}'s SwiGLU has a bias (or a folded norm shift); HookedTransformer's gated MLP cannot hold it"
            )
        sd[f"blocks.{i}.mlp.W_out"] = mlp.fc2.weight.T
        sd[f"blocks.{i}.mlp.b_out"] = mlp.fc2.bias if mlp.fc2.bias is not None else torch.zeros(mlp.fc2.out_features)
    return {k: v.detach().float().contiguous() for k, v in sd.items()}


def to_hooked_transformer(model: nn.Module, *, fold_norm: bool = False, use_attn_result: bool = False) -> Any:
    """A float32 CPU ``transformer_lens.HookedTransformer`` holding ``model``'s weights (a copy).

    ``fold_norm``: fold each norm's scale (and LayerNorm shift) into the weights after it, as
    ``from_pretrained(fold_ln=True)`` does. It is done here, not by TransformerLens's ``load_and_process_state_dict``,
    which in 3.9 scales ``W_U`` along the wrong axis when ``d_vocab == d_model`` (as in this suite's circuits models)
    and also centres the weights (the same outputs, other circuit matrices). ``use_attn_result``: TransformerLens's
    flag for the per-head ``attn.hook_result``. Raises ValueError for a SwiGLU bias (a LayerNorm shift folded into
    it included), which HookedTransformer's gated MLP cannot hold.
    """
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:
        raise ImportError(
            "to_hooked_transformer needs transformer-lens 3.x: pip install 'transformer-lens>=3,<4'"
        ) from err
    if not isinstance(model, TransformerLM):  # its config allows only what HookedTransformer has (norms, MLPs)
        raise TypeError(f"to_hooked_transformer converts a TransformerLM, got {type(model).__name__}")
    cfg, blocks = model.cfg, (model.transformer.blocks if model.transformer is not None else [])
    mlp = blocks[0].mlp if len(blocks) else None
    config = HookedTransformerConfig(
        n_layers=cfg.depth,
        d_model=cfg.dim,
        n_ctx=cfg.context_length,
        d_head=cfg.dim // cfg.heads,
        n_heads=cfg.heads,
        d_vocab=cfg.vocab_size,
        d_mlp=mlp.fc2.in_features if mlp is not None else None,
        act_fn=_ACTS[cfg.mlp],
        gated_mlp=cfg.mlp == "swiglu",
        attn_only=cfg.mlp == "none",
        normalization_type=_NORMS[cfg.norm] + "Pre" if fold_norm and cfg.norm != "none" else _NORMS[cfg.norm],
        eps=NORM_EPS,
        positional_embedding_type="standard",
        use_attn_result=use_attn_result,
        default_prepend_bos=False,
        device="cpu",
        dtype=torch.float32,
    )
    with warnings.catch_warnings():  # deprecated in 3.x for TransformerBridge, which wraps Hugging Face models only
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        hooked = HookedTransformer(config)
    state = _state_dict(model, fold_norm)
    buffers = {k: v for k, v in hooked.state_dict().items() if k not in state}  # causal masks and the like
    hooked.load_state_dict({**buffers, **state}, strict=True)
    return hooked.eval()
