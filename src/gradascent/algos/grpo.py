"""GRPO: group relative policy optimization of a causal language model on scored completions.

Shao et al. 2024, *DeepSeekMath* (arXiv:2402.03300), sec. 4.1: for every prompt q sample G completions
o_1..o_G from pi_old, score them, and climb

    J(theta) = agg_{i,t} [ min(r_{i,t} A_i, clip(r_{i,t}, 1 - eps_low, 1 + eps_high) A_i) - beta k3_{i,t} ]

with r_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(...), A_i the group-relative advantage (eq. 7 of
docs/equations.md), k3 the KL estimate to a frozen reference pi_ref (eq. 15) and agg one of the aggregations
(R1)-(R3). docs/grpo.md writes the loss out with the config field of every term.

Deliberate deviations and choices, each a config field:

- ``advantage``: besides the paper's ``group`` (eq. 7) the trainer offers ``group_no_std`` (Dr. GRPO, Liu et
  al. 2025), ``rloo`` (Ahmadian et al. 2024) and ``batch_mean`` (REINFORCE with a batch baseline).
- ``clip_eps_high`` may differ from ``clip_eps_low`` (clip-higher, DAPO: Yu et al. 2025).
- ``loss_agg``: the paper's per-sequence mean (``seq_mean_token_mean``), DAPO's ``token_mean``, or Dr. GRPO's
  ``seq_mean_token_sum_norm`` with the constant L = ``max_new_tokens``. Divisors are global counts over all
  data-parallel ranks (``run.distributed.loss_divisor``), so the update does not depend on the world size,
  whether the ranks replicate the policy (DDP) or shard it (``fsdp``, FSDP2). Under FSDP2, sampling and
  evaluation gather the whole policy for their duration; the reference model is a whole copy per rank.
- ``beta = 0`` (DAPO, Dr. GRPO) loads no reference model at all and runs no reference forward.
- ``num_iterations = 1`` and one minibatch: pi_old is pi_theta itself, so ``logp_old = logp.detach()`` and no
  separate pass computes it; otherwise the old log-probs are computed once, before any update, and reused.
- ``filter_zero_std``: groups whose rewards all agree carry no signal; their tokens are taken out of the loss
  and out of its divisors (DAPO's dynamic sampling without the resampling).
- ``mask_truncated``: completions that never wrote EOS within ``max_new_tokens`` are taken out of the loss
  (DAPO's overlong filtering).
- The KL penalty is added per token before aggregation, as in the paper, and uses k3 by default.
- Not a deviation in the maths: the training forward runs each prompt once for its G completions
  (``lm.grouped``), which gives the same log-probs and gradients as G separate rows for less compute;
  minibatches therefore hold whole groups.
- Not a deviation either: with ``beta = 0`` and ``ent_coef = 0``, a group whose advantages are all 0 adds
  exactly 0 to the gradient (while its log-probs are finite), so in one process it runs no forward or
  backward (``silent_groups``; it stays in the loss divisors). The entropy and ratio metrics are then means
  over the groups that were trained.

Sampling and per-token log-probs come from ``gradascent.lm``; this file never calls ``model.generate``.
Sampling draws from an explicit ``torch.Generator`` whose state is checkpointed, and the prompt order is a
pure function of (seed, position), so a resumed run continues bit for bit on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gradascent.core import (
    aggregate,
    batch_mean_advantages,
    clipped_surrogate_loss,
    entropy_loss,
    group_advantages,
    kl_estimate,
    masked_mean,
    rloo_advantages,
)
from gradascent.errors import ConfigError, DataError
from gradascent.lm import (
    decode_completions,
    encode_prompts,
    eos_token_ids,
    generate,
    load_model,
    save_model,
)
from gradascent.lm.adapters import base_fingerprint
from gradascent.lm.grouped import GroupedLogprobs
from gradascent.lm.models import check_vocab, eval_mode
from gradascent.lm.tokenizers import check_fits_context, warn_unknown
from gradascent.rewards import RewardFn, check_columns, resolve_reward, score
from gradascent.tasks import Task, describe_rows, load_task, row_names
from gradascent.run import distributed
from gradascent.run.checkpoint import (
    capture_rng,
    check_data_fingerprint,
    data_fingerprint,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    restoring,
    save_checkpoint,
    seed_everything,
)
from gradascent.run.config import add_config_flags, check_config, bool_flag, check_fields, flag_values, load_config, require
from gradascent.run.guard import NonFiniteGuard, StopOnSignal
from gradascent.run.optim import adamw
from gradascent.run.progress import progress_bar
from gradascent.run.command import stop_status, summary_line
from gradascent.run.rundir import RunDir, check_not_past, check_resume, require_path
from gradascent.run.schedule import lr_multiplier, warn_short_warmup

Advantage = Literal["group", "group_no_std", "rloo", "batch_mean"]
LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]

RESUMABLE_CHANGES = frozenset({"steps", "micro_batch_prompts", "eval_every", "eval_prompts", "save_every",
                               "keep_last", "log_every", "max_nonfinite", "device", "fsdp"})
"""Config fields a resumed run may change: where and how it runs, what it logs, and how long it goes on
(more ``steps`` stretches the rest of the learning-rate schedule). Any other change is refused."""
PYTHON_TASK = "python:"  # config.yaml's ``task`` (``model``) of a run given a Task (a model) object from Python:
# "python:<its name>" ("python:<its class>")

# Metrics that measure wall-clock time: the only ones that differ between a resumed and an unbroken run.
TIME_KEYS = ("time/step_s", "time/sample_s", "time/train_s", "time/elapsed_s")


@dataclass(frozen=True)
class GRPOConfig:
    """Every setting of a GRPO run. YAML files and ``gradascent grpo --field`` flags map onto these fields."""

    model: str = "qwen2-1m"
    """The policy: a preset name of gradascent.lm (e.g. qwen2-1m) or a local directory written by save_pretrained."""
    task: str = "arithmetic"
    """The prompts: a built-in task name (arithmetic) or a JSONL file with a 'prompt' field per line; other
    fields reach the reward functions as columns (e.g. 'answer')."""
    n_train: int | None = None
    """Training prompts of a built-in task (None: the task's default, 4000 for arithmetic); ignored for files."""
    n_eval: int | None = None
    """Held-out prompts of a built-in task (None: the task's default, 200 for arithmetic); ignored for files."""
    rewards: tuple[str, ...] | None = None
    """Reward functions: built-in names (exact_match, numeric_match, format_number, length_penalty), built-ins with an
    argument (regex(PATTERN), length_penalty(N)), module:function or path/to/file.py:function; the total reward
    is their weighted sum. None: the task's own (arithmetic: exact_match + 0.1 format_number)."""
    reward_weights: tuple[float, ...] | None = None
    """One weight per reward function; None weighs each 1.0 (or the task's weights for the task's rewards)."""
    seed: int = 0
    """Seed of the model initialisation (presets), the prompt order and the sampling generator."""
    steps: int = 100
    """Number of GRPO steps; each samples a fresh batch of prompts_per_step x group_size completions."""
    prompts_per_step: int = 8
    """Prompts per step over all ranks (the global batch of questions); typical 8-1024."""
    group_size: int = 8
    """G, completions sampled per prompt (GRPO paper: 64; TRL default 8). At least 2."""
    max_new_tokens: int | None = None
    """Longest completion in tokens; also the constant L of seq_mean_token_sum_norm (Dr. GRPO). None: the
    task's budget (arithmetic with operands up to 99: 5)."""
    stop_at_eos: bool = True
    """End a completion at the tokenizer's EOS; False samples exactly max_new_tokens tokens (benchmarks)."""
    temperature: float = 1.0
    """Sampling temperature tau; log-probs are taken at the same tau (docs/equations.md, eq. 19). Typical 0.7-1.0."""
    lr: float = 1e-4
    """AdamW learning rate. Typical 1e-6 for billion-parameter models, 1e-4 to 5e-4 for the tiny presets."""
    weight_decay: float = 0.0
    """AdamW weight decay (GRPO paper: 0.1 with lr 1e-6; 0.0 is common for short runs)."""
    warmup_steps: int = 0
    """Optimizer updates of linear learning-rate warm-up from 0."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after warm-up, over all optimizer updates of the run (to 0 for linear and cosine)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; 0 or null: no clipping (the norm is still logged). Typical
    1.0."""
    num_iterations: int = 1
    """mu: passes over each rollout (GRPO paper, Algorithm 1). 1 is strictly on-policy and needs no old log-probs."""
    num_minibatches: int = 1
    """Optimizer updates per pass: each rank's groups are split into this many minibatches of whole groups (it
    must divide each rank's prompts_per_step / world_size)."""
    micro_batch_prompts: int | None = None
    """Prompts (each with its G completions) per forward/backward pass; a minibatch's gradient is accumulated
    over its passes with the minibatch's divisors, so the update is unchanged. Lower it to save memory. None:
    the whole minibatch in one pass."""
    clip_eps_low: float = 0.2
    """epsilon_low of the clipped ratio, 1 - eps_low below (PPO; GRPO paper 0.2)."""
    clip_eps_high: float = 0.2
    """epsilon_high of the clipped ratio, 1 + eps_high above (DAPO's clip-higher: 0.28)."""
    beta: float = 0.0
    """KL coefficient to the reference (initial) policy (GRPO paper: 0.04; DAPO, Dr. GRPO: 0). At 0 no
    reference model is loaded."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator of the penalty (Schulman 2020); GRPO uses k3, whose gradient is the reverse KL's;
    k2's is the forward KL's; k1 (expected gradient 0 as a loss term) is refused with beta > 0."""
    advantage: Advantage = "group"
    """group: (r - mean) / (std + eps) per prompt (GRPO); group_no_std: r - mean (Dr. GRPO); rloo: leave-one-out
    baseline (Ahmadian et al. 2024); batch_mean: r - mean over the whole batch."""
    adv_eps: float = 1e-4
    """epsilon added to the group std of the 'group' advantage."""
    loss_agg: LossAgg = "seq_mean_token_mean"
    """Loss aggregation: seq_mean_token_mean (GRPO paper), token_mean (DAPO), seq_mean_token_sum_norm (Dr. GRPO,
    L = max_new_tokens)."""
    ent_coef: float = 0.0
    """Weight of an entropy bonus in the loss (0 in GRPO; entropy is logged either way)."""
    filter_zero_std: bool = False
    """Leave groups whose rewards are all equal out of the loss (DAPO dynamic sampling, without resampling)."""
    mask_truncated: bool = False
    """Leave completions without EOS within max_new_tokens out of the loss (DAPO overlong filtering)."""
    eval_every: int = 0
    """Greedy evaluation on held-out prompts every this many steps (and at the end); 0: never."""
    eval_prompts: int = 64
    """Held-out prompts per evaluation, when the task has a held-out split."""
    save_every: int = 50
    """Write a checkpoint every this many steps and at the end; 0: only at the end (and on SIGTERM / Ctrl-C),
    as for the other trainers, so that a finished run can be extended with --resume. The final model is saved
    either way."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    log_every: int = 1
    """Write a metrics row every this many steps."""
    max_nonfinite: int = 5
    """Consecutive updates with a NaN/inf loss or gradient that are skipped before the run stops."""
    device: str = "cpu"
    """Torch device of the policy (cpu, cuda, cuda:1)."""
    fsdp: bool = False
    """Under torchrun, shard the policy's weights, gradients and optimizer state over the processes with FSDP2
    (``fully_shard`` per decoder layer) instead of replicating them with DDP: for a policy whose training
    state does not fit one device. Same update, same checkpoints; ignored for one process (docs/distributed.md)."""

    def __post_init__(self) -> None:
        check_fields(self)
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32)")
        require(self.steps >= 1, "steps", self.steps, ">= 1")
        require(self.prompts_per_step >= 1, "prompts_per_step", self.prompts_per_step, ">= 1")
        require(self.n_train is None or self.n_train >= 1, "n_train", self.n_train, ">= 1 or null")
        require(self.n_eval is None or self.n_eval >= 0, "n_eval", self.n_eval, ">= 0 or null")
        require(self.group_size >= 2, "group_size", self.group_size, ">= 2 (a group of one has no baseline)")
        require(self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens,
                ">= 1 or null")
        require(self.temperature > 0, "temperature", self.temperature, "> 0")
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        require(self.max_grad_norm is None or self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm,
                ">= 0 (0: no clipping) or null")
        require(self.num_iterations >= 1, "num_iterations", self.num_iterations, ">= 1")
        require(self.num_minibatches >= 1, "num_minibatches", self.num_minibatches, ">= 1")
        require(self.micro_batch_prompts is None or self.micro_batch_prompts >= 1, "micro_batch_prompts",
                self.micro_batch_prompts, ">= 1 or null")
        require(self.prompts_per_step % self.num_minibatches == 0, "num_minibatches", self.num_minibatches,
                "a divisor of prompts_per_step (minibatches hold whole groups)")
        # as PPO's clip_eps: each side of the clip range has a width > 0
        require(0 < self.clip_eps_low < 1, "clip_eps_low", self.clip_eps_low, "in (0, 1)")
        require(self.clip_eps_high > 0, "clip_eps_high", self.clip_eps_high, "> 0")
        require(self.beta >= 0, "beta", self.beta, ">= 0")
        # k1 = log pi - log pi_ref as a loss term: its gradient grad log pi has expectation 0 under pi, so the
        # penalty would add noise and no pull toward the reference (docs/equations.md, section 5)
        require(self.beta == 0 or self.kl_estimator != "k1", "kl_estimator", self.kl_estimator,
                "'k3' (GRPO's) or 'k2' when beta > 0: differentiated as a loss term, k1 has an expected gradient "
                "of 0, so its penalty would not pull the policy toward the reference")
        require(self.adv_eps > 0, "adv_eps", self.adv_eps, "> 0")
        require(self.ent_coef >= 0, "ent_coef", self.ent_coef, ">= 0")
        require(self.rewards is None or len(self.rewards) >= 1, "rewards", self.rewards,
                "at least one reward function, or null for the task's")
        require(self.reward_weights is None or self.rewards is not None
                and len(self.reward_weights) == len(self.rewards), "reward_weights", self.reward_weights,
                "one weight per reward function in 'rewards'")
        require(self.eval_every >= 0, "eval_every", self.eval_every, ">= 0")
        require(self.eval_prompts >= 1, "eval_prompts", self.eval_prompts, ">= 1")
        require(self.save_every >= 0, "save_every", self.save_every, ">= 0")
        require(self.keep_last >= 1, "keep_last", self.keep_last, ">= 1")
        require(self.log_every >= 1, "log_every", self.log_every, ">= 1")
        require(self.max_nonfinite >= 1, "max_nonfinite", self.max_nonfinite, ">= 1")

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def needs_old_logprobs(self) -> bool:
        """More than one update per rollout: every update but the first is off-policy and needs pi_old."""
        return self.num_iterations > 1 or self.num_minibatches > 1


# --- the maths, assembled from gradascent.core --------------------------------------------------------


def advantages(rewards: Tensor, kind: Advantage, group_size: int, eps: float = 1e-4) -> Tensor:
    """Per-completion advantages of a flat (B,) reward vector whose groups of ``group_size`` are contiguous.

    group (eq. 7), group_no_std (eq. 7 without the std), rloo (eq. 8), batch_mean (eq. 9). Shapes: (B,) -> (B,).
    """
    if kind == "group":
        return group_advantages(rewards, group_size, scale_by_std=True, eps=eps)
    if kind == "group_no_std":
        return group_advantages(rewards, group_size, scale_by_std=False)
    if kind == "rloo":
        return rloo_advantages(rewards, group_size)
    if kind == "batch_mean":
        return batch_mean_advantages(rewards)
    raise ConfigError(f"config key 'advantage': {kind!r} is not allowed")


def grpo_loss(
    logp: Tensor,
    logp_old: Tensor,
    adv: Tensor,
    mask: Tensor,
    cfg: GRPOConfig,
    *,
    logp_ref: Tensor | None = None,
    entropy: Tensor | None = None,
    num_tokens: Tensor | float | None = None,
    num_seqs: Tensor | float | None = None,
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of one minibatch: -agg[min(r A, clip(r) A)] + beta agg[k3] - ent_coef agg[H].

    Args:
        logp: (B, T) log pi_theta of the completion tokens, with gradient.
        logp_old: (B, T) log pi_old (no gradient); ``logp.detach()`` when on-policy.
        adv: (B,) per-completion advantage, broadcast to every token of the completion.
        mask: (B, T) bool, True on the tokens that count.
        cfg: supplies clip_eps_low/high, beta, kl_estimator, ent_coef and loss_agg.
        logp_ref: (B, T) log pi_ref, needed when beta > 0.
        entropy: (B, T) per-token entropy; with gradient when ent_coef > 0.
        num_tokens, num_seqs: global divisors (``run.distributed.loss_divisor``); None: this batch's counts.
        norm_len: L of seq_mean_token_sum_norm, the completion budget max_new_tokens (default: T).

    Returns:
        (loss, stats): stats hold policy_loss, approx_kl, clipfrac(_low/_high), and kl / entropy when given.
        kl and entropy are token means over the mask, whatever ``loss_agg`` weighs in the loss (with
        ``token_mean`` the two agree; with the per-sequence aggregations, loss - policy_loss is beta times
        their aggregate, not beta * kl).
    """
    agg_kwargs = {"norm_len": norm_len, "num_tokens": num_tokens, "num_seqs": num_seqs}
    adv_t = adv.detach().unsqueeze(-1).expand_as(logp)  # every token of completion i gets A_i
    # (10): L^CLIP with clip-higher, aggregated by (R1)-(R3)
    loss, stats = clipped_surrogate_loss(
        logp, logp_old, adv_t, mask, clip_eps_low=cfg.clip_eps_low, clip_eps_high=cfg.clip_eps_high,
        agg=cfg.loss_agg, agg_kwargs=agg_kwargs)
    if cfg.beta > 0:
        if logp_ref is None:
            raise ValueError("beta > 0 needs logp_ref")
        kl = kl_estimate(logp, logp_ref.detach(), cfg.kl_estimator)  # (15): k3 per token, to pi_ref
        loss = loss + cfg.beta * aggregate(kl, mask, cfg.loss_agg, **agg_kwargs)
        stats["kl"] = masked_mean(kl, mask).detach()  # logged as a token mean whatever loss_agg weighs
    if entropy is not None:
        ent_loss, _ = entropy_loss(entropy, mask, agg=cfg.loss_agg, agg_kwargs=agg_kwargs)  # (14)
        stats["entropy"] = masked_mean(entropy, mask).detach()
        if cfg.ent_coef > 0:
            loss = loss + cfg.ent_coef * ent_loss
    stats["loss"] = loss.detach()
    return loss, stats


def silent_groups(adv: Tensor, cfg: GRPOConfig, run_all: bool = False) -> Tensor:
    """(P,) bool: the groups whose tokens add exactly 0 to the gradient, which the update need not run.

    With beta = 0 and ent_coef = 0 a token's loss is min(r A, clip(r) A): 0 with a 0 gradient when A = 0 and
    r is finite. So a group whose advantages are all exactly 0 (``group``/``rloo``/``group_no_std`` give
    that to every group whose rewards agree) is silent; with a KL or entropy term no group is, nor with
    ``run_all`` (DDP and FSDP2, where every rank must make the same passes).
    """
    P = adv.numel() // cfg.group_size
    if run_all or cfg.beta != 0 or cfg.ent_coef != 0:
        return torch.zeros(P, dtype=torch.bool, device=adv.device)
    return (adv.view(P, cfg.group_size) == 0).all(-1)


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) bool: True for the completions of groups whose rewards are all equal (no learning signal)."""
    g = rewards.reshape(-1, group_size)
    flat = (g == g[:, :1]).all(dim=-1)  # (P,)
    return flat.repeat_interleave(group_size)


def load_reference(cfg: GRPOConfig, policy: nn.Module) -> nn.Module:
    """The frozen reference pi_ref: the policy as it was before training (called only when beta > 0)."""
    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    ref.eval()
    return ref


# --- the trainer ----------------------------------------------------------------------------------------


def prompt_index(position: int, n: int, seed: int) -> int:
    """The dataset row at global prompt ``position``: epoch e = position // n walks a permutation of the n rows
    drawn from (seed, e), so the order is a pure function of the position and a resumed run sees the same."""
    epoch, k = divmod(position, n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return int(torch.randperm(n, generator=g)[k])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    reward_fns: Sequence[RewardFn],
    max_new_tokens: int,
    batch_size: int = 128,
) -> dict[str, float]:
    """Greedy completions of held-out ``rows`` scored by each reward function: {'eval/<name>': mean}.

    With an exact-match reward (numeric_match) ``eval/<name>`` is the held-out accuracy.
    """
    eos = eos_token_ids(tokenizer, model)
    sums: dict[str, float] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        prompts = [r["prompt"] for r in chunk]
        columns = {k: [r[k] for r in chunk] for k in chunk[0] if k != "prompt"}
        ids, pmask = encode_prompts(tokenizer, prompts, device=_device(model))
        out = generate(model, ids, pmask, max_new_tokens=max_new_tokens, eos_token_ids=eos,
                       pad_token_id=tokenizer.pad_token_id, greedy=True)
        texts = decode_completions(tokenizer, out.completion_ids.cpu(), out.completion_mask.cpu(), strip_eos=eos)
        _, means = score(reward_fns, prompts, texts, columns)
        for k, v in means.items():
            sums[k] = sums.get(k, 0.0) + v * len(chunk)
    return {"eval/" + k.split("/", 1)[1]: v / max(1, len(rows)) for k, v in sums.items()}


@dataclass(frozen=True)
class Rollout:
    """One step's scored completions on this rank, what ``grpo_update`` trains on: P prompts with G
    completions each, B = P * G rows, the completions of one prompt contiguous.

    Shapes: prompt_ids, prompt_mask (P, Lp), left-padded; completion_ids, completion_mask (B, T); finished
    (B,) bool, True where the completion wrote EOS within the budget; rewards (B,).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    finished: Tensor
    rewards: Tensor


def grpo_update(
    rollout: Rollout,
    cfg: GRPOConfig,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    guard: NonFiniteGuard,
    *,
    ref_model: nn.Module | None = None,
    generator: torch.Generator | None = None,
    norm_len: int,
    where: str = "",
) -> dict[str, float]:
    """Everything a GRPO step does after sampling and scoring: advantages (eq. 7/8/9), the loss mask,
    pi_old and pi_ref, then ``num_iterations`` passes of ``num_minibatches`` optimizer updates.

    ``policy`` is ``distributed.wrap(GroupedLogprobs(model))``, DDP or FSDP2 under torchrun: the
    divisors are global counts and the batch_mean baseline is taken over all ranks, so one process holding
    the whole rollout and N processes holding a shard each make the same update. ``generator`` shuffles the
    minibatches (needed when num_minibatches > 1); ``norm_len`` is L of seq_mean_token_sum_norm.

    Returns the update's metrics: zero_std_frac, tokens_in_loss and the means over its optimizer updates
    of grpo_loss's stats, lr and grad_norm.
    """
    ddp = isinstance(policy, nn.parallel.DistributedDataParallel)
    model = (policy.module if ddp else policy).model
    synced = ddp or distributed.is_sharded(policy)  # every rank takes part in every forward and backward
    device = rollout.completion_ids.device
    G, P = cfg.group_size, rollout.prompt_ids.shape[0]
    if P % cfg.num_minibatches:
        raise ConfigError(f"num_minibatches={cfg.num_minibatches} does not divide the {P} prompts of this "
                          "rollout (minibatches hold whole groups, the same number in each)")
    rewards = rollout.rewards
    if cfg.advantage == "batch_mean" and synced:  # the baseline is the mean over all ranks
        info = distributed.info()
        adv = advantages(_all_gather(rewards), "batch_mean", G).chunk(info.world_size)[info.rank]
    else:
        adv = advantages(rewards, cfg.advantage, G, cfg.adv_eps)
    adv = adv.to(device)
    flat = zero_std_groups(rewards, G).to(device)  # (B,)
    mask = rollout.completion_mask.clone()  # (B, T)
    if cfg.filter_zero_std:
        mask &= ~flat.unsqueeze(-1)
    if cfg.mask_truncated:
        mask &= rollout.finished.unsqueeze(-1)
    # Training runs whole groups, each prompt once for its G completions (lm.grouped). Groups that add exactly
    # 0 to the gradient keep their place in the minibatches and their divisors, but need no forward or
    # backward: those whose advantages are all 0 when there is no KL or entropy term (silent_groups), and
    # those whose tokens are all masked out (filter_zero_std, mask_truncated). Under DDP or FSDP2 every rank
    # makes every pass, so none is skipped there. Either way each step makes num_iterations *
    # num_minibatches optimizer updates, the number the learning-rate schedule counts.
    silent = silent_groups(adv, cfg, run_all=synced)  # (P,)
    if not synced:
        silent |= ~mask.view(P, G, -1).any(-1).any(-1)
    live = (~silent).nonzero().flatten()  # the groups that will be trained

    def rows_of(g: Tensor) -> Tensor:  # (n,) group indices -> (n * G,) row indices
        return (g.unsqueeze(-1) * G + torch.arange(G, device=device)).flatten()

    def logprobs(net: nn.Module, g: Tensor, with_entropy: bool = False) -> Any:
        r = rows_of(g)
        return net(rollout.prompt_ids[g], rollout.prompt_mask[g], rollout.completion_ids[r],
                   rollout.completion_mask[r], G, temperature=cfg.temperature, with_entropy=with_entropy)

    # log-probs fixed during the update, of the groups trained: pi_old (off-policy updates), pi_ref (beta > 0)
    logp_old = logp_ref = None  # (P * G, T), 0 on the rows of silent groups
    if cfg.needs_old_logprobs:
        logp_old = torch.zeros(P * G, rollout.completion_ids.shape[1], device=device)
        if len(live):
            with torch.no_grad(), eval_mode(model), distributed.full_weights(policy):
                logp_old[rows_of(live)] = logprobs(GroupedLogprobs(model), live)
    if ref_model is not None:
        logp_ref = torch.zeros(P * G, rollout.completion_ids.shape[1], device=device)
        if len(live):
            with torch.no_grad():
                logp_ref[rows_of(live)] = logprobs(GroupedLogprobs(ref_model), live)

    stats_rows: list[dict[str, Tensor]] = []
    for _ in range(cfg.num_iterations):
        order = torch.randperm(P, generator=generator, device=device) if cfg.num_minibatches > 1 \
            else torch.arange(P, device=device)
        for mb in order.chunk(cfg.num_minibatches):  # P is a multiple of num_minibatches: every chunk is full
            m = mask[rows_of(mb)]  # (b, T)
            num_tokens = distributed.loss_divisor(m.sum())  # the minibatch's divisors, for every pass
            num_seqs = distributed.loss_divisor(m.any(-1).sum())
            optimizer.zero_grad(set_to_none=True)
            trained = mb[~silent[mb]]
            passes = trained.split(cfg.micro_batch_prompts or len(mb)) if len(trained) else ()  # accumulated
            loss, parts = torch.zeros((), device=device), []
            if not len(trained):  # every group silent: the gradient is 0 (and AdamW still steps)
                for p in model.parameters():
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
            for i, part in enumerate(passes):
                rows = rows_of(part)
                logp, entropy = logprobs(policy, part, with_entropy=True)
                part_loss, part_stats = grpo_loss(
                    logp, logp_old[rows] if logp_old is not None else logp.detach(), adv[rows], mask[rows],
                    cfg, logp_ref=logp_ref[rows] if logp_ref is not None else None,
                    entropy=entropy if cfg.ent_coef > 0 else entropy.detach(),
                    num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
                sync = contextlib.nullcontext() if i == len(passes) - 1 or not ddp \
                    else policy.no_sync()  # type: ignore[operator]  (DDP averages once, after the last)
                with sync:
                    part_loss.backward()
                loss = loss + part_loss.detach()
                parts.append((part_stats, mask[rows].sum()))
            stats = _merge_pass_stats(parts) if parts else {"loss": loss.clone(), "policy_loss": loss.clone()}
            stats["lr"] = torch.tensor(scheduler.get_last_lr()[0], dtype=torch.float64)  # 1e-4, not float32's
            if guard.check(loss, model.parameters(), where=where):
                max_norm = cfg.max_grad_norm or float("inf")
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            stats_rows.append(stats)
    return {
        "zero_std_frac": float(flat.float().mean()),
        "tokens_in_loss": float(mask.sum()),
        **{k: float(torch.stack([s[k].double() for s in stats_rows if k in s]).mean())
           for k in dict.fromkeys(k for s in stats_rows for k in s)},
    }


def train_grpo(
    cfg: GRPOConfig,
    out: str | Path,
    *,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    task: Task | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train a policy with GRPO, writing the run directory ``out``; returns the summary.

    From Python, ``model`` + ``tokenizer`` replace what ``cfg.model`` names, and a ``gradascent.tasks.Task``
    (train/eval rows with a 'prompt' and the reward columns, reward callables and weights, a completion
    budget) replaces what ``cfg.task`` names; ``cfg.rewards``, when set, still overrides the task's rewards.
    ``resume=True`` continues from the newest checkpoint in ``out/checkpoints`` (a fresh start if none).
    The final policy is saved with ``save_pretrained`` to ``out/model``.

    Raises:
        RewardError: a reward function raised or returned something unusable (it and the sample are named).
        ConfigError, DataError, CheckpointError: bad settings, prompts, model directory or checkpoint.
        NonFiniteError: ``max_nonfinite`` consecutive updates had a NaN/inf loss or gradient.
    """
    check_config(cfg, GRPOConfig, "train_grpo")
    require_path(out, "run directory")  # an out that cannot be a directory stops the run before any loading
    dist_info = distributed.init(cfg.device)
    if cfg.prompts_per_step % dist_info.world_size:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} does not split evenly over "
                          f"{dist_info.world_size} processes; choose a multiple of {dist_info.world_size}")
    per_rank = cfg.prompts_per_step // dist_info.world_size
    if per_rank % cfg.num_minibatches:
        raise ConfigError(f"each of {dist_info.world_size} processes holds {per_rank} prompts a step, which "
                          f"num_minibatches={cfg.num_minibatches} does not divide; choose a prompts_per_step "
                          f"that is a multiple of {dist_info.world_size * cfg.num_minibatches}")
    device = distributed.process_device(cfg.device)
    seed_everything(cfg.seed)

    # ---- what the run works on: policy, reference, prompts, rewards (all checked before out/ is touched)
    from_python = model is not None
    if not from_python:
        if cfg.model.startswith(PYTHON_TASK):
            raise ConfigError(f"this run trained a model passed from Python ({cfg.model[len(PYTHON_TASK):]}); resume it "
                              "from Python with the same model: train_grpo(cfg, out, model=..., tokenizer=..., "
                              "resume=True)")
        model, tokenizer = load_model(cfg.model, tokenizer, seed=cfg.seed)
    elif tokenizer is None:
        raise ConfigError("train_grpo: a model passed from Python needs its tokenizer")
    check_vocab(model, tokenizer)
    # Dropout off throughout (eval mode): completions and pi_old come from the model without it, so a training
    # forward with it would make the first ratio dropout noise, not 1.
    model.to(device).eval()
    ref_model = load_reference(cfg, model) if cfg.beta > 0 else None  # beta = 0: no reference at all
    # pi_ref is the policy as loaded from cfg.model, again at every resume: a model changed since is refused
    ref_fp = None if ref_model is None else base_fingerprint(ref_model)
    # config.yaml records what the run trains on: a Task passed from Python is named as such, so that a resume
    # that does not pass it again is refused rather than continued on cfg.task
    recorded = cfg if task is None else dataclasses.replace(cfg, task=f"{PYTHON_TASK}{task.name}")
    if from_python:  # the same for a model object: cfg.model names a model that was not used
        recorded = dataclasses.replace(recorded, model=f"{PYTHON_TASK}{type(model).__name__}")
    if task is None:
        if cfg.task.startswith(PYTHON_TASK):
            raise ConfigError(f"this run trained on a task passed from Python ({cfg.task[len(PYTHON_TASK):]!r}); "
                              "resume it from Python with the same task: train_grpo(cfg, out, task=..., resume=True)")
        task = load_task(cfg.task, n_train=cfg.n_train, n_eval=cfg.n_eval, seed=cfg.seed)
    train_rows, eval_rows = list(task.train), list(task.eval)[:cfg.eval_prompts]
    data_fp = data_fingerprint(train_rows)  # of what it trains on: a resume refuses other data
    if not train_rows:
        raise DataError(f"task {task.name!r} has no training prompts")
    if cfg.rewards is not None:
        reward_fns, reward_weights = [resolve_reward(r) for r in cfg.rewards], cfg.reward_weights
    else:
        reward_fns, reward_weights = list(task.reward_fns), list(task.reward_weights) or None
    if not reward_fns:
        raise ConfigError(f"no reward functions: task {task.name!r} ({describe_rows(task)}) has none of its own; "
                          "set 'rewards'")
    for rows, split in ((train_rows, "training"), (eval_rows, "held-out")):
        if rows:
            check_columns(reward_fns, [k for k in rows[0] if k != "prompt"], f"task {task.name!r} ({split})")
    # text the model can neither read nor write: a prompt, or an answer it could then never give
    texts = [" ".join(str(r[k]) for k in ("prompt", "answer") if k in r) for r in train_rows]
    warn_unknown(tokenizer, texts, row_names(task, "train"), f"GRPO on task {task.name!r} (prompts and answers)")
    max_new = cfg.max_new_tokens or task.max_new_tokens
    context = getattr(model.config, "max_position_embeddings", None)
    for rows, split, names in ((train_rows, "training", row_names(task, "train")),  # prompt + completion fit
                               (eval_rows, "held-out", row_names(task, "eval"))):
        check_fits_context(tokenizer, [r["prompt"] for r in rows], context, max_new,
                           f"task {task.name!r}, {split} rows (model context {context}, max_new_tokens {max_new})",
                           names[:len(rows)])
    run = RunDir(out, tensorboard=True, dirs=("model",)) if dist_info.is_main else None
    eos = eos_token_ids(tokenizer, model) if cfg.stop_at_eos else []
    # The training forward; under torchrun in DDP, or sharded with FSDP2 (then model's parameters are shards).
    policy = distributed.wrap(GroupedLogprobs(model), fsdp=cfg.fsdp)
    optimizer = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    updates_per_step = cfg.num_iterations * cfg.num_minibatches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_multiplier(
        u, cfg.steps * updates_per_step, cfg.warmup_steps, cfg.lr_schedule))
    warn_short_warmup(cfg.warmup_steps, cfg.steps * updates_per_step, cfg.lr, "optimizer updates")
    guard = NonFiniteGuard(cfg.max_nonfinite)
    # Sampling draws from its own generator, one stream per rank; its state is in every checkpoint.
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + 104729 * dist_info.rank + 1)

    # ---- resume: weights, optimizer, schedule, guard, sampling and global RNGs, metrics up to the checkpoint
    step, elapsed, last_eval = 0, 0.0, {}
    resumed_metrics: dict[str, Any] = {}
    ckpt = latest_checkpoint(Path(out) / "checkpoints") if resume else None
    check_not_past(ckpt, cfg.steps, cfg=cfg)
    if run is not None:
        check_resume(run, recorded, ckpt is not None, resume, RESUMABLE_CHANGES)
        if ckpt is None and run.read_metrics():
            run.clear_metrics()  # stopped before its first checkpoint: start over
    if ckpt is not None:
        with restoring(ckpt):
            step, state = load_checkpoint(ckpt)
            check_data_fingerprint(state, data_fp, f"the training rows of task {task.name!r}", ckpt)
            if ref_fp is not None and state.get("reference_fingerprint", ref_fp) != ref_fp:
                raise ConfigError(f"the reference pi_ref, the policy's weights as loaded for this resume, differs "
                                  f"from the one the run trained against up to checkpoint {ckpt} (the model "
                                  "changed since); resume from the model the run started from")
            same_world = state["world_size"] == dist_info.world_size
            distributed.load_full_state(model, optimizer, state["model"], state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            guard.load_state_dict(state["guard"])
            restore_rng(state["rng"])
            if same_world:  # bit for bit: every rank continues its own sampling stream
                gen.set_state(state["sampler_rng"][dist_info.rank])
            else:  # another number of processes: the weights, optimizer, schedule and data position carry over,
                # the sampling streams start afresh (seeded by the step), so the run goes on but not bit for bit
                gen.manual_seed(cfg.seed * 7919 + 104729 * dist_info.rank + 1 + 1_000_003 * step)
                if dist_info.is_main:
                    print(f"resuming a checkpoint of {state['world_size']} processes on {dist_info.world_size}: "
                          "sampling streams restart from the step (not bit-identical to an uninterrupted run)",
                          file=sys.stderr)
            elapsed, last_eval = float(state["elapsed_s"]), dict(state["last_eval"])
        if run is not None:
            run.truncate_metrics(step)
            logged = [r for r in run.read_metrics() if r.get("step") == step]  # the summary of a finished run
            resumed_metrics = {k: v for k, v in logged[-1].items() if k != "step"} if logged else {}
    if run is not None:
        run.write_config(recorded)

    def checkpoint(at: int) -> None:
        gens = [gen.get_state()]
        if dist_info.enabled:
            gens = [None] * dist_info.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gens, gen.get_state())
        model_state, optim_state = distributed.full_state(model, optimizer)  # whole tensors, also under FSDP2
        if run is not None:
            save_checkpoint(run.checkpoints, at, {
                "model": model_state, "optimizer": optim_state,
                "scheduler": scheduler.state_dict(), "guard": guard.state_dict(), "sampler_rng": gens,
                "rng": capture_rng(), "elapsed_s": elapsed, "world_size": dist_info.world_size,
                "last_eval": last_eval, "data_position": at * cfg.prompts_per_step, "data_fingerprint": data_fp,
                "reference_fingerprint": ref_fp,
            }, keep_last=cfg.keep_last)

    G = cfg.group_size
    metrics: dict[str, Any] = resumed_metrics  # replaced at the first step, if there is one left
    stopped_by = None
    bar = progress_bar(cfg.steps, "grpo", enabled=progress if dist_info.is_main else False, initial=step)
    with StopOnSignal() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            # ---- 1. this step's prompts: the global batch, then this rank's slice
            first = step * cfg.prompts_per_step
            batch = [train_rows[prompt_index(first + k, len(train_rows), cfg.seed)] for k in range(cfg.prompts_per_step)]
            batch = distributed.shard(batch, dist_info.rank, dist_info.world_size)
            prompt_ids, prompt_mask = encode_prompts(tokenizer, [r["prompt"] for r in batch], device=device)

            # ---- 2. sample G completions per prompt from pi_old, the current policy; B = prompts x G rows
            with distributed.full_weights(policy):  # the sampling engine reads the weights directly
                roll = generate(model, prompt_ids, prompt_mask, max_new_tokens=max_new, eos_token_ids=eos,
                                pad_token_id=tokenizer.pad_token_id, num_samples=G, temperature=cfg.temperature,
                                generator=gen)
            completions = decode_completions(tokenizer, roll.completion_ids.cpu(), roll.completion_mask.cpu(),
                                             strip_eos=eos)
            t_sample = time.perf_counter() - t0

            # ---- 3. score: prompts and columns repeated G times, completions of one prompt contiguous
            prompts = [r["prompt"] for r in batch for _ in range(G)]
            columns = {k: [r[k] for r in batch for _ in range(G)] for k in batch[0] if k != "prompt"}
            rewards, reward_means = score(reward_fns, prompts, completions, columns, reward_weights)  # (B,)

            # ---- 4-6. advantages, the tokens that count, epochs of minibatches of whole groups
            t_train = time.perf_counter()
            rollout = Rollout(prompt_ids, prompt_mask, roll.completion_ids, roll.completion_mask, roll.finished,
                              rewards)
            update_stats = grpo_update(rollout, cfg, policy, optimizer, scheduler, guard, ref_model=ref_model,
                                       generator=gen, norm_len=max_new, where=f"step {step + 1}")
            step += 1
            t_end = time.perf_counter()
            elapsed += t_end - t0

            # ---- 7. log (means over the step's updates; over ranks under DDP), evaluate, checkpoint
            lengths = roll.completion_mask.sum(-1).float()
            # the spread of the whole step's rewards (a mean of the ranks' stds would not be it)
            step_rewards = torch.tensor(distributed.gather_list(rewards.tolist())) if dist_info.enabled else rewards
            metrics = {
                "samples": step * cfg.completions_per_step,
                "reward": float(rewards.mean()), "reward_std": float(step_rewards.std()), **reward_means,
                "completion_len": float(lengths.mean()),
                "truncated_frac": float((~roll.finished).float().mean()),
                **update_stats,
                "nonfinite_skipped": guard.skipped,
            }
            metrics = distributed.reduce_metrics(metrics, sums=("tokens_in_loss",))
            if eval_rows and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                with eval_mode(model), distributed.full_weights(policy):  # rank 0 evaluates, on whole weights
                    if run is not None:
                        last_eval = evaluate(model, tokenizer, eval_rows, reward_fns, max_new)
                        metrics.update(last_eval)
            metrics.update({"time/step_s": t_end - t0, "time/sample_s": t_sample, "time/train_s": t_end - t_train,
                            "time/elapsed_s": elapsed})
            if run is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                run.log(step, metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}")
            stopping = distributed.any_rank(stop.requested is not None)  # a signal may reach the ranks a step apart
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or stopping:
                checkpoint(step)
            if stopping:
                stopped_by = stop.requested or "a signal to another process"
                break
    bar.close()

    summary: dict[str, Any] = {"steps": step, "stopped_by": stopped_by, "elapsed_s": elapsed,
                               **{k: v for k, v in metrics.items() if k not in TIME_KEYS}, **last_eval}
    weights = distributed.full_model_state(model) if stopped_by is None else None  # whole, also under FSDP2
    if run is not None:
        if stopped_by is None:
            save_model(model, tokenizer, run.path / "model", state_dict=weights)
        run.write_summary(summary)
        run.close()
    distributed.barrier()
    return summary


def _merge_pass_stats(parts: list[tuple[dict[str, Tensor], Tensor]]) -> dict[str, Tensor]:
    """Stats of one update from those of its accumulation passes: the losses (each already divided by the
    minibatch's divisors) add up; per-token means are weighted by the passes' counted tokens."""
    if len(parts) == 1:
        return parts[0][0]
    total = torch.stack([n for _, n in parts]).sum().clamp(min=1)
    out = {}
    for key in parts[0][0]:
        values = torch.stack([s[key] for s, _ in parts])
        out[key] = values.sum() if key in ("loss", "policy_loss") else \
            (values * torch.stack([n for _, n in parts])).sum() / total
    return out


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _all_gather(x: Tensor) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# --- the command line -----------------------------------------------------------------------------------


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "grpo", parents=[common], help="train a language model with GRPO on rewarded completions",
        description="GRPO (Shao et al. 2024): sample a group of completions per prompt, score them with reward "
                    "functions, and climb the clipped, group-normalised objective. Fields come from --config "
                    "FILE.yaml, then from the flags below.")
    p.add_argument("--config", metavar="FILE.yaml", default=None, help="YAML file of GRPOConfig fields")
    p.add_argument("--out", metavar="DIR", default="runs/grpo", help="run directory [default: runs/grpo]")
    p.add_argument("--resume", nargs="?", const=True, default=False, type=bool_flag, metavar="BOOL",
                   help="continue from the newest checkpoint in DIR/checkpoints")
    p.add_argument("--progress", nargs="?", const=True, default=None, type=bool_flag, metavar="BOOL",
                   help="show a progress bar [default: only on a terminal]")
    add_config_flags(p, GRPOConfig)
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    cfg = load_config(GRPOConfig, args.config, flag_overrides=flag_values(args))
    summary = train_grpo(cfg, args.out, resume=args.resume, progress=args.progress)
    if not distributed.info().is_main:
        return 0
    shown = {k: summary[k] for k in ("steps", "reward") if k in summary}
    shown.update({k: v for k, v in summary.items() if k.startswith("eval/")})
    print(summary_line(shown))
    if summary.get("stopped_by"):
        print(f"gradascent grpo: stopped by {summary['stopped_by']} after step {summary['steps']}; continue with: gradascent "
              f"resume {args.out}",
              file=sys.stderr)
        return stop_status(summary)
    print(f"run directory: {args.out} (final model in {Path(args.out) / 'model'})")
    return 0


# The entry point of ``gradascent resume DIR``: train(cfg, out=DIR, resume=True).
train = train_grpo
