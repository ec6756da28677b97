"""GATO (Reed et al. 2022): one decoder-only transformer over the sequences of :mod:`multimodal.tokenizers.gato`.

Embedding (paper section 2.2 and appendix C):

- text, discrete, continuous and separator ids through one learned table (discrete ids share it with the first
  1,024 text ids, as in the paper);
- each 16 x 16 image patch through a single pre-activation ResNet v2 block with GroupNorm (appendix C.2) to one
  vector, plus learned within-image row and column position encodings;
- a learned local observation position encoding added to every observation token (its index within the timestep's
  observation); the separator and action tokens share one learned vector instead (figure 15).

Where the paper is silent we choose: learned absolute positions over the context window are added as well
(``pos_embed="learned"``; ``"none"`` relies on the causal mask alone), the output projection is tied to the token
table, and within-image positions are learned per patch row and column (the paper quantises normalised patch
intervals into 128 bins and samples within them during training; with one fixed patch grid this is the same
lookup).

The loss is next-token cross-entropy over the whole vocabulary, kept only where the target token is text or an
action (the tokenizer's loss mask). Logits are computed only at those positions: the vocabulary is 50k wide.

For many tasks the MLPs can be experts (``mlp``): token-routed (``moe``), task-routed (``task_moe``, Kudugunta et
al. 2021; a task's subnetwork comes out as a dense GATO with :meth:`Gato.extract_task`) or one per task (``demix``,
Gururangan et al. 2022; mixed by :meth:`Gato.task_posterior` when the task is unknown, extended with
:meth:`Gato.add_task`). Task-routed models read each sequence's task id from ``batch["task"]``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..nn import DEMixMlp, TaskMoEMlp, Transformer
from ..tokenizers.gato import NUM_BINS, PATCH_SIZE, Modality
from .registry import register_model

__all__ = ["Gato", "GatoConfig", "PatchResNetBlock"]

TASK_ROUTED = ("task_moe", "demix")


@dataclasses.dataclass(frozen=True)
class GatoConfig(Config):
    """Architecture of a :class:`Gato` model; the vocabulary layout must match its tokenizer's."""

    text_vocab_size: int = 49408  # open_clip's BPE; the paper's SentencePiece has 32,000
    num_bins: int = NUM_BINS
    patch_size: int = PATCH_SIZE
    in_chans: int = 3
    patch_channels: int = 32  # width of the patch ResNet block
    patch_groups: int = 8  # GroupNorm groups in that block
    max_patch_grid: int = 16  # rows and columns of within-image positions (256 px at 16 px patches)
    max_local_positions: int = 512  # tokens in one timestep's observation
    context_length: int = 256
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    mlp: Literal["gelu", "swiglu", "moe", "task_moe", "demix"] = "gelu"  # experts: see multimodal.nn.build_mlp
    moe: dict[str, Any] | None = None  # the experts' kwargs (num_experts, top_k, ...); num_tasks comes from tasks
    moe_every: int = 1  # experts in every moe_every-th block, dense MLPs between
    tasks: tuple[str, ...] = ()  # task names in id order (batch["task"] indexes them); task_moe and demix need them
    norm: Literal["layer", "rms"] = "layer"
    pos_embed: Literal["learned", "none"] = "learned"
    dropout: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.patch_channels % self.patch_groups:
            raise ValueError(
                f"patch_channels={self.patch_channels} must be divisible by patch_groups={self.patch_groups}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if self.mlp in TASK_ROUTED and not self.tasks:
            raise ValueError(f"mlp={self.mlp!r} routes by task: list the task names in id order in tasks")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks names a task twice: {list(self.tasks)}")
        if "num_tasks" in (self.moe or {}):
            raise ValueError("moe.num_tasks comes from the length of tasks; remove it from moe")

    @property
    def routes_by_task(self) -> bool:
        """True when the MLPs need each sequence's task (``batch["task"]``) or a mixture over tasks."""
        return self.mlp in TASK_ROUTED

    def experts_kwargs(self) -> dict[str, Any] | None:
        """The ``moe`` kwargs of the backbone's expert MLPs (with num_tasks for the task-routed ones)."""
        if self.mlp in TASK_ROUTED:
            return {**(self.moe or {}), "num_tasks": len(self.tasks)}
        return self.moe

    @property
    def vocab_size(self) -> int:
        """Text (and discrete) ids, the continuous bins, then the separator."""
        return self.text_vocab_size + self.num_bins + 1


class PatchResNetBlock(nn.Module):
    """An image patch (C, p, p) -> one vector: a 3x3 stem, one pre-activation ResNet v2 block with GroupNorm, then a
    linear map of the flattened features."""

    def __init__(self, in_chans: int, patch_size: int, dim: int, *, channels: int = 32, groups: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm_out = nn.GroupNorm(groups, channels)
        self.proj = nn.Linear(channels * patch_size * patch_size, dim)

    def forward(self, patches: Tensor) -> Tensor:
        """(N, C, p, p) -> (N, dim)."""
        x = self.stem(patches)  # (N, channels, p, p)
        x = x + self.conv2(F.gelu(self.norm2(self.conv1(F.gelu(self.norm1(x))))))
        return self.proj(F.gelu(self.norm_out(x)).flatten(1))


class Gato(nn.Module):
    """A decoder-only transformer over GATO token sequences; batches are :func:`collate_tokens` dicts."""

    def __init__(self, cfg: GatoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.patch_embed = PatchResNetBlock(
            cfg.in_chans, cfg.patch_size, cfg.dim, channels=cfg.patch_channels, groups=cfg.patch_groups
        )
        self.patch_row = nn.Embedding(cfg.max_patch_grid, cfg.dim)
        self.patch_col = nn.Embedding(cfg.max_patch_grid, cfg.dim)
        self.local_embed = nn.Embedding(cfg.max_local_positions, cfg.dim)
        self.action_position = nn.Parameter(torch.zeros(cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(cfg.context_length, cfg.dim)) if cfg.pos_embed == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(
            cfg.dim,
            cfg.depth,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            mlp=cfg.mlp,
            moe=cfg.experts_kwargs(),
            moe_every=cfg.moe_every,
            norm=cfg.norm,
            drop_path_rate=cfg.drop_path_rate,
            proj_drop=cfg.dropout,
        )
        self.norm = nn.LayerNorm(cfg.dim) if cfg.norm == "layer" else nn.RMSNorm(cfg.dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in (self.token_embed, self.patch_row, self.patch_col, self.local_embed):
            nn.init.normal_(table.weight, std=0.02)
        nn.init.normal_(self.action_position, std=0.02)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """Token, patch and position embeddings of a collated batch: (B, T, dim)."""
        tokens, modality, local = batch["tokens"], batch["modality"], batch["local_position"]
        B, T = tokens.shape
        if self.cfg.context_length < T:
            raise ValueError(f"{T} tokens exceed the model's context_length={self.cfg.context_length}")
        is_image = modality == int(Modality.IMAGE)  # an int: dynamo compares a tensor with an IntEnum as a bool
        x = self.token_embed(torch.where(is_image, 0, tokens))  # (B, T, dim)
        patches = batch.get("patches")
        if is_image.any():
            if patches is None:
                raise ValueError("the batch has image tokens but no 'patches'")
            P = patches.shape[1]
            rows, cols = batch["patch_position"].unbind(-1)  # 2 x (B, P)
            if rows.max() >= self.cfg.max_patch_grid or cols.max() >= self.cfg.max_patch_grid:
                raise ValueError(
                    f"an image has more than max_patch_grid={self.cfg.max_patch_grid} patch rows or columns"
                )
            vectors = self.patch_embed(patches.flatten(0, 1).to(x.dtype)).view(B, P, -1)  # (B, P, dim)
            vectors = vectors + self.patch_row(rows) + self.patch_col(cols)
            index = torch.where(is_image, tokens, 0).clamp(max=P - 1)
            x = torch.where(is_image[..., None], vectors.gather(1, index[..., None].expand(-1, -1, x.shape[-1])), x)
        if local.max() >= self.cfg.max_local_positions:
            raise ValueError(f"an observation of more than max_local_positions={self.cfg.max_local_positions} tokens")
        observed = (local >= 0)[..., None]
        x = x + torch.where(observed, self.local_embed(local.clamp(min=0)), self.action_position)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:T]
        return self.drop(x)

    def forward(
        self, batch: dict[str, Tensor], *, compute_loss: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Final hidden states (B, T, dim), or with ``compute_loss`` the output of :meth:`loss` (so that a
        distributed wrapper sees the loss computed inside its forward).

        Right padding needs no mask: under the causal mask no real token attends to a later padding token. A model
        whose experts route by task reads ``batch["task"]`` (B,) ids of ``cfg.tasks``, or for DEMix
        ``batch["task_weights"]`` (B, tasks), a mixture such as :meth:`task_posterior` gives.
        """
        task_ids, task_weights = batch.get("task"), batch.get("task_weights")
        if self.cfg.routes_by_task and task_ids is None and task_weights is None:
            raise ValueError(
                f"this GATO's experts route by task ({self.cfg.mlp}): the batch needs 'task', one id of "
                f"{list(self.cfg.tasks)} per sequence" + (", or 'task_weights'" if self.cfg.mlp == "demix" else "")
            )
        x = self.transformer(self.embed(batch), causal=True, task_ids=task_ids, task_weights=task_weights)
        hidden = self.norm(x)
        return self._loss(batch, hidden) if compute_loss else hidden

    @property
    def aux_loss(self) -> Tensor:
        """The experts' load-balancing loss of the last forward (zero for dense MLPs and DEMix)."""
        return self.transformer.aux_loss

    def task_id(self, name: str) -> int | None:
        """What routes this model's experts on dataset ``name``: its id in ``cfg.tasks`` when the experts route by
        task, None otherwise."""
        return self.task_index(name) if self.cfg.routes_by_task else None

    def task_index(self, name: str) -> int:
        """The id of task ``name`` in ``cfg.tasks``."""
        if name not in self.cfg.tasks:
            raise ValueError(f"task {name!r} is not one of this model's tasks {list(self.cfg.tasks)}")
        return self.cfg.tasks.index(name)

    @torch.no_grad()
    def context_log_likelihood(self, batch: dict[str, Tensor], task_ids: Tensor | None = None) -> Tensor:
        """Sum of log-probabilities of each sequence's text and action targets, under the experts of ``task_ids``
        (B,) when the model routes by task: (B,) float32."""
        routed = {k: v for k, v in batch.items() if k not in ("task", "task_weights")}
        if task_ids is not None:
            routed["task"] = task_ids
        return self.target_log_likelihood(batch, self(routed))

    def target_log_likelihood(self, batch: dict[str, Tensor], hidden: Tensor) -> Tensor:
        """Sum of log-probabilities of each sequence's text and action targets given this model's final hidden
        states (B, T, dim) of the batch: (B,) float32."""
        hidden = hidden[:, :-1]  # (B, T-1, dim): position t predicts token t+1
        mask = batch["loss_mask"][:, 1:] & batch["padding_mask"][:, 1:]  # (B, T-1)
        out = torch.zeros(hidden.shape[0], device=hidden.device)
        if mask.any():
            logits = self.logits(hidden[mask]).float()  # (K, vocab)
            log_p = logits.log_softmax(-1).gather(1, batch["tokens"][:, 1:][mask][:, None])[:, 0]  # (K,)
            out.index_add_(0, mask.nonzero()[:, 0], log_p)
        return out

    @torch.no_grad()
    def task_posterior(self, batch: dict[str, Tensor], prior: Tensor | None = None) -> Tensor:
        """DEMix's posterior over tasks from each sequence's context: softmax over tasks of the context's
        log-likelihood under that task's experts plus the log prior (uniform by default): (B, tasks), rows summing
        to one. A sequence with no text or action target yet keeps the prior."""
        if self.cfg.mlp != "demix":
            raise ValueError(f"task_posterior mixes DEMix experts; this model's mlp is {self.cfg.mlp!r}")
        B, n = batch["tokens"].shape[0], len(self.cfg.tasks)
        device = batch["tokens"].device
        if prior is not None and (prior.shape != (n,) or (prior < 0).any() or abs(float(prior.sum()) - 1) > 1e-4):
            raise ValueError(f"prior must be {n} non-negative task probabilities summing to 1, got {prior.tolist()}")
        log_prior = torch.full((n,), -math.log(n), device=device) if prior is None else prior.to(device).log()
        scores = torch.stack(
            [self.context_log_likelihood(batch, torch.full((B,), t, device=device)) for t in range(n)], dim=1
        )  # (B, tasks)
        return (scores + log_prior).softmax(-1)

    def add_task(self, name: str, *, init_from: str | None = None) -> int:
        """A DEMix expert for a new task ``name`` in every expert block, a copy of task ``init_from``'s (or freshly
        initialised); the old tasks' outputs stay bit-identical. Returns the new task's id."""
        if self.cfg.mlp != "demix":
            raise ValueError(f"tasks are added to DEMix experts; this model's mlp is {self.cfg.mlp!r}")
        if name in self.cfg.tasks:
            raise ValueError(f"task {name!r} is already one of {list(self.cfg.tasks)}")
        source = None if init_from is None else self.task_index(init_from)
        for block in self.transformer.blocks:
            if isinstance(block.mlp, DEMixMlp):
                block.mlp.add_expert(init_from=source)
        self.cfg = self.cfg.replace(tasks=(*self.cfg.tasks, name))
        return len(self.cfg.tasks) - 1

    @torch.no_grad()
    def extract_task(self, name: str) -> Gato:
        """Task ``name``'s subnetwork as a dense GATO (``cfg.tasks == (name,)``) that gives that task the same
        outputs: task MoE's chosen experts merged per block (gates folded in), or DEMix's expert of the task."""
        if not self.cfg.routes_by_task:
            raise ValueError(
                f"only task-routed experts (task_moe, demix) have a task subnetwork; mlp={self.cfg.mlp!r}"
            )
        task = self.task_index(name)
        dense = {  # block index -> the task's dense MLP
            i: block.mlp.dense_expert(task) if self.cfg.mlp == "task_moe" else copy.deepcopy(block.mlp.experts[task])
            for i, block in enumerate(self.transformer.blocks)
            if isinstance(block.mlp, (TaskMoEMlp, DEMixMlp))
        }
        hidden = {m.fc2.in_features for m in dense.values()}
        if self.cfg.moe_every > 1:
            hidden.add(int(self.cfg.dim * self.cfg.mlp_ratio))
        if len(hidden) != 1:
            raise ValueError(
                f"the dense MLPs between expert blocks are {int(self.cfg.dim * self.cfg.mlp_ratio)} wide and the "
                f"task's merged experts {max(hidden)}: one dense GATO cannot hold both (use top_k=1 or moe_every=1)"
            )
        cfg = self.cfg.replace(
            mlp=(self.cfg.moe or {}).get("expert", "gelu"),
            moe=None,
            moe_every=1,
            mlp_ratio=hidden.pop() / self.cfg.dim,
            tasks=(name,),
        )
        with torch.random.fork_rng(devices=[]):
            out = Gato(cfg).to(self.token_embed.weight.device)
        experts = tuple(f"transformer.blocks.{i}.mlp." for i in dense)
        missing, unexpected = out.load_state_dict(
            {k: v for k, v in self.state_dict().items() if not k.startswith(experts)}, strict=False
        )
        assert not unexpected and all(k.startswith(experts) for k in missing)
        for i, mlp in dense.items():
            out.transformer.blocks[i].mlp.load_state_dict(mlp.state_dict())
        return out.train(self.training)

    def logits(self, hidden: Tensor, token_range: tuple[int, int] | None = None) -> Tensor:
        """Hidden states (..., dim) -> logits over the vocabulary, or over ids [lo, hi) of ``token_range``."""
        weight = self.token_embed.weight
        if token_range is not None:
            lo, hi = token_range
            if not 0 <= lo < hi <= self.vocab_size:
                raise ValueError(f"token_range must be within [0, {self.vocab_size}), got [{lo}, {hi})")
            weight = weight[lo:hi]
        return hidden @ weight.to(hidden.dtype).T

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Next-token cross-entropy on text and action targets; logs the loss and accuracy of each."""
        return self(batch, compute_loss=True)

    def _loss(self, batch: dict[str, Tensor], hidden: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        hidden = hidden[:, :-1]  # (B, T-1, dim): position t predicts token t+1
        target_mask = batch["loss_mask"][:, 1:]
        if not target_mask.any():
            raise ValueError("the batch has no text or action tokens to learn: every loss mask is False")
        targets = batch["tokens"][:, 1:][target_mask]  # (K,)
        logits = self.logits(hidden[target_mask]).float()  # (K, vocab)
        per_token = F.cross_entropy(logits, targets, reduction="none")
        correct = (logits.argmax(-1) == targets).float()
        is_text = batch["modality"][:, 1:][target_mask] == int(Modality.TEXT)
        logs = {"loss": per_token.mean().detach()}
        for name, keep in (("text", is_text), ("action", ~is_text)):
            if keep.any():
                logs[f"{name}_loss"] = per_token[keep].mean().detach()
                logs[f"{name}_acc"] = correct[keep].mean()
        return per_token.mean(), logs

    @torch.no_grad()
    def next_token(
        self,
        batch: dict[str, Tensor],
        token_range: tuple[int, int],
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The next id after each sequence's last real token, restricted to ``token_range``: (B,).

        ``temperature`` 0 takes the most likely id; above 0 samples from the tempered distribution.
        """
        hidden = self(batch)[last_positions(batch)]  # (B, dim)
        logits = self.logits(hidden, token_range).float()  # (B, hi - lo)
        if temperature > 0:
            choice = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
        else:
            choice = logits.argmax(-1)
        return choice + token_range[0]


def last_positions(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(rows, columns) indexing each sequence's last real token of a right-padded batch."""
    last = batch["padding_mask"].long().sum(1) - 1  # (B,)
    if (last < 0).any():
        raise ValueError("a sequence in the batch is empty")
    return torch.arange(last.shape[0], device=last.device), last


def _gato(preset: GatoConfig, overrides: dict[str, Any]) -> Gato:
    return Gato(preset.replace(**overrides))


@register_model
def gato_nano(**overrides: Any) -> Gato:
    """A 4-layer, 192-wide GATO for the CPU recipe (control and shapes captions): 13.2M parameters, 9.7M of them
    the 50k-entry token table."""
    return _gato(GatoConfig(dim=192, depth=4, heads=4, context_length=256), overrides)


@register_model
def gato_small(**overrides: Any) -> Gato:
    """The paper's smallest size for GPUs: 8 layers of width 768, 24 heads, context 1024 (79M parameters with the
    paper's 33k vocabulary, 109M with the 50k BPE)."""
    return _gato(
        GatoConfig(dim=768, depth=8, heads=24, mlp_ratio=4.0, context_length=1024, patch_channels=64), overrides
    )
