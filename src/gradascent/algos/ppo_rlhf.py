"""PPO for RLHF: fine-tune a language model against a learned reward with a KL leash to the SFT model.

Papers: Ziegler et al. 2019 (arXiv:1909.08593: per-token reward -beta*KL plus the reward-model score at the
end, the proportional KL controller), Stiennon et al. 2020 (arXiv:2009.01325), Ouyang et al. 2022
(InstructGPT, arXiv:2203.02155: critic initialised from the reward model), Schulman et al. 2017 (PPO:
clipped surrogate, epochs of minibatches) and 2015 (GAE). The implementation details follow Huang et al.
2024, "The N+ Implementation Details of RLHF with PPO" (arXiv:2403.17031).

One update reads top to bottom:

    sample   B prompts -> B completions from the policy (lm.generate, explicit torch.Generator)
    score    frozen reward model r_phi(x, y); log-probs of pi_old, pi_ref; values of the critic
    rewards  r_t = -beta * KL_t (+ r_phi on the last token)          eq. (21)  core.kl_penalized_rewards
             GAE over r_t, advantages whitened                         eq. (5)   core.gae, core.whiten
    update   `epochs` passes of shuffled minibatches: clipped surrogate (10) + clipped value loss (13)
    adapt    beta fixed, proportional (18) or adaptive (17)
    log      reward-model score, KL, beta, entropy, approx_kl, clip fraction, value loss, explained
             variance, response length, hidden score of the built-in task

Deliberate deviations and choices:

- pi_old's log-probs are recomputed by a forward pass after sampling instead of taken from the sampler,
  so that the first minibatch's ratio is exactly 1 whatever kernels the sampling engine used.
- The critic is a separate model (backbone + value head), not a second head on the policy: InstructGPT's
  choice, which lets the critic start from the reward model (``value_init='reward_model'``).
- The KL controller sees the mean per-completion KL (sum over tokens of the ``kl_estimator`` estimate, k1 by default) of the batch just
  sampled, as in Ziegler et al.; ``kl_target`` is therefore in nats per completion.
- A completion cut at ``max_new_tokens`` without an EOS can have ``missing_eos_penalty`` subtracted from its
  score (Huang et al. 2024, detail 23.2, TRL's ``missing_eos_penalty``).
- Under data parallelism advantages are whitened per rank (as TRL does), and the token-mean losses are
  normalised by the global token count so that DDP's gradient mean is the gradient of the global mean.
- With ``lora_r > 0`` the policy is a LoRA adapter on the SFT weights, the reference is the same weights with
  the adapter switched off, and, when the reward model was trained with LoRA on the same SFT model, it is a
  second (frozen) adapter on those weights too: one copy of the base in memory (lm.adapters).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gradascent.core import (
    adaptive_kl_coef,
    categorical_kl,
    clipped_surrogate_loss,
    entropy_loss,
    gae,
    kl_penalized_rewards,
    masked_mean,
    proportional_kl_coef,
    value_loss,
    whiten,
)
from gradascent.errors import ConfigError, DataError, NonFiniteError
from gradascent.lm.tokenizers import check_fits_context, warn_unknown
from gradascent.run import distributed
from gradascent.run.checkpoint import capture_rng, check_data_fingerprint, data_fingerprint, latest_checkpoint
from gradascent.run.checkpoint import load_checkpoint, restore_rng, restoring, save_checkpoint
from gradascent.run.command import finish
from gradascent.run.config import add_config_flags, check_config, check_fields, flag_values, load_config, require
from gradascent.run.guard import NonFiniteGuard, StopOnSignal
from gradascent.run.optim import adamw
from gradascent.run.progress import progress_bar
from gradascent.run.rundir import RunDir, check_not_past, check_resume, require_path

HiddenScore = Callable[[list[str], list[str]], Sequence[float]]


@dataclass(frozen=True)
class PPORLHFConfig:
    policy: str = ""
    """The SFT model directory: the policy starts from it and, frozen, it is also the reference pi_ref
    (Ziegler et al. 2019). Required."""
    reward_model: str = ""
    """The reward-model directory written by `gradascent rm` (backbone + scalar head); frozen. Required."""
    reference: str | None = None
    """A reference model directory other than `policy` (it must use the same tokenizer); null: `policy`."""
    value_init: Literal["reward_model", "sft"] = "reward_model"
    """Where the critic starts: the reward model's backbone and head (InstructGPT, Ouyang et al. 2022) or the
    SFT backbone with a fresh value head."""
    prompts: str = "preference"
    """Prompts to optimise on: a built-in task name ('preference', which also reports its hidden ground-truth
    score), or a JSONL file whose rows hold a 'prompt' field."""
    out: str = "runs/ppo"
    """Run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/, policy/ and value/."""
    seed: int = 0
    """Seed of initial RNG states, prompt order, sampling and minibatch shuffling."""
    device: str = "cpu"
    """Torch device, e.g. 'cpu' or 'cuda'."""
    updates: int = 40
    """PPO iterations; each samples `batch_size` completions and trains `epochs` passes over them."""
    batch_size: int = 32
    """Prompts (one completion each) per update, over all ranks (TRL: 64; Huang et al. 2024: 512)."""
    minibatch_size: int = 16
    """Completions per gradient step, over all ranks (each takes minibatch_size / N); must divide batch_size."""
    epochs: int = 4
    """Passes over each batch (PPO's K; Ziegler et al. 2019: 4)."""
    lr: float = 1e-4
    """AdamW learning rate of the policy (Ziegler et al.: 1.41e-5 for GPT-2; tiny models from scratch take
    larger ones)."""
    vf_lr: float | None = None
    """Learning rate of the critic; null: `lr`."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Gradient norm clip over all trained parameters (PPO implementations: 0.5-1); 0 or null: no clipping."""
    max_new_tokens: int = 32
    """The most tokens sampled per completion."""
    temperature: float = 1.0
    """Sampling temperature; the log-probs of pi, pi_old and pi_ref are taken at the same temperature."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: off). The log-probs stay those of the whole softmax, so the
    tokens no longer come from pi and the per-token KL estimate is biased (docs/rlhf.md)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off); biases the KL estimate as top_k does."""
    engine: Literal["auto", "fused", "hf"] = "auto"
    """Sampling engine of lm.generate ('hf' is forced when LoRA adapters are on)."""
    gamma: float = 1.0
    """Discount over completion tokens (Ziegler et al.: 1)."""
    lam: float = 0.95
    """GAE lambda (Schulman et al. 2015; Ziegler et al.: 0.95)."""
    clip_eps: float = 0.2
    """PPO clip range of the ratio (Schulman et al. 2017: 0.2)."""
    vf_clip_eps: float | None = 0.2
    """Clip range of the value update around the rollout's values (PPO baselines: 0.2); null: unclipped."""
    vf_coef: float = 0.1
    """Weight of the value loss (TRL: 0.1)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (RLHF usually 0: the KL penalty already keeps entropy up)."""
    agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """How per-token losses are reduced (docs/equations.md, R1-R3)."""
    kl_coef: float = 0.5
    """Initial beta of the KL penalty in the reward (Ziegler et al. 2019: 0.1; TRL: 0.05)."""
    kl_control: Literal["fixed", "proportional", "adaptive"] = "proportional"
    """How beta moves: fixed; Ziegler et al.'s proportional controller (18); PPO-Penalty's doubling/halving (17)."""
    kl_target: float = 6.0
    """Target KL per completion in nats for the controllers (Ziegler et al.: 6 for 24-token completions)."""
    kl_threshold: float = 2.0
    """``adaptive`` control: beta halves below kl_target / kl_threshold and doubles above kl_target *
    kl_threshold (eq. 17); ours 2, the PPO paper 1.5."""
    kl_horizon: float = 500.0
    """Horizon H of the proportional controller, in completions (Ziegler et al.: 10000 for runs of 10^5+
    completions; shorter runs need a shorter horizon for beta to move at all)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the reward (Schulman 2020; Ziegler et al. use k1)."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch's completion tokens (PPO implementations)."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of a completion that ended without EOS (Huang et al. 2024); null: none."""
    lora_r: int = 0
    """LoRA rank of the policy adapter (Hu et al. 2021); 0: full fine-tuning. Needs peft."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the update is (alpha / r) B A (Hu et al.: alpha = 2r is common)."""
    eval_prompts: int = 64
    """Held-out prompts for the greedy evaluation (hidden score, reward-model score, KL to the reference)."""
    eval_every: int = 10
    """Updates between evaluations (and one at the start and at the end); 0: start and end only."""
    log_every: int = 1
    """Updates between rows of metrics.jsonl."""
    save_every: int = 10
    """Updates between checkpoints (and one at the end); 0: only at the end."""
    keep_last: int = 2
    """How many of the newest checkpoints to keep."""
    max_nonfinite: int = 5
    """Consecutive non-finite losses or gradients tolerated (each skips its step) before the run stops."""
    resume: bool = False
    """Continue the run in `out` from its newest checkpoint (same config; the result equals a run that never
    stopped). Without it, an `out` that already holds a run is an error."""
    progress: bool | None = None
    """Show a progress bar (None: only on a terminal)."""

    def __post_init__(self) -> None:
        check_fields(self)
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32)")
        require(self.updates >= 1, "updates", self.updates, "an int >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
        require(1 <= self.minibatch_size <= self.batch_size, "minibatch_size", self.minibatch_size,
                f"an int in [1, batch_size={self.batch_size}]")
        require(self.batch_size % self.minibatch_size == 0, "minibatch_size", self.minibatch_size,
                f"a divisor of batch_size={self.batch_size}")
        require(self.epochs >= 1, "epochs", self.epochs, "an int >= 1")
        require(self.lr > 0, "lr", self.lr, "a float > 0")
        require(self.vf_lr is None or self.vf_lr > 0, "vf_lr", self.vf_lr, "a float > 0 or null")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a float >= 0")
        require(self.max_grad_norm is None or self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm,
                "a float >= 0 (0: no clipping) or null")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "an int >= 1")
        require(self.temperature > 0, "temperature", self.temperature, "a float > 0")
        require(self.top_k >= 0, "top_k", self.top_k, "an int >= 0")
        require(0 < self.top_p <= 1, "top_p", self.top_p, "a float in (0, 1]")
        require(0 <= self.gamma <= 1, "gamma", self.gamma, "a float in [0, 1]")
        require(0 <= self.lam <= 1, "lam", self.lam, "a float in [0, 1]")
        require(0 < self.clip_eps < 1, "clip_eps", self.clip_eps, "in (0, 1)")
        require(self.vf_clip_eps is None or self.vf_clip_eps > 0, "vf_clip_eps", self.vf_clip_eps,
                "a float > 0 or null")
        require(self.vf_coef >= 0, "vf_coef", self.vf_coef, "a float >= 0")
        require(self.ent_coef >= 0, "ent_coef", self.ent_coef, "a float >= 0")
        require(self.kl_coef >= 0, "kl_coef", self.kl_coef, "a float >= 0")
        require(self.kl_target > 0, "kl_target", self.kl_target, "a float > 0")
        require(self.kl_threshold > 1, "kl_threshold", self.kl_threshold, "a float > 1 (the paper: 1.5)")
        require(self.kl_horizon > 0, "kl_horizon", self.kl_horizon, "a float > 0")
        require(self.missing_eos_penalty is None or self.missing_eos_penalty >= 0, "missing_eos_penalty",
                self.missing_eos_penalty, "a float >= 0 or null")
        require(self.lora_r >= 0, "lora_r", self.lora_r, "an int >= 0")
        require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "a float > 0")
        if self.reference is not None and self.lora_r > 0:
            raise ConfigError("with LoRA the reference is the policy's base weights: leave 'reference' null")
        require(self.eval_prompts >= 1, "eval_prompts", self.eval_prompts, "an int >= 1")
        require(self.eval_every >= 0, "eval_every", self.eval_every, "an int >= 0")
        require(self.log_every >= 1, "log_every", self.log_every, "an int >= 1")
        require(self.save_every >= 0, "save_every", self.save_every, "an int >= 0")
        require(self.keep_last >= 1, "keep_last", self.keep_last, "an int >= 1")
        require(self.max_nonfinite >= 1, "max_nonfinite", self.max_nonfinite, "an int >= 1")


# Fields that may change between a run and its resumption without changing what is computed.
RESUMABLE_CHANGES = frozenset({"out", "updates", "log_every", "save_every", "keep_last", "resume",
                               "eval_every", "progress"})


# --- the per-token reward and advantages (pure; the trainer's reward assembly) -------------------------


def assemble_rewards(
    score: Tensor,
    logp_old: Tensor,
    logp_ref: Tensor,
    mask: Tensor,
    finished: Tensor,
    kl_coef: float,
    *,
    kl_estimator: Literal["k1", "k2", "k3"] = "k1",
    missing_eos_penalty: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The trainer's per-token reward: the reward-model score, less the missing-EOS penalty for completions
    cut at the length limit, on the last token, and -beta * KL_t on every token (eq. 21).

    Shapes: score (B,), finished (B,) bool; logp_old, logp_ref, mask (B, T).
    Returns (rewards (B, T), kl (B, T), the score used (B,)).
    """
    if missing_eos_penalty is not None:
        score = torch.where(finished, score, score - missing_eos_penalty)
    rewards, kl = kl_penalized_rewards(score, logp_old, logp_ref, mask, kl_coef, kind=kl_estimator)
    return rewards, kl, score


def completion_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float, whiten_advantages: bool,
) -> tuple[Tensor, Tensor]:
    """GAE over completion tokens (eq. 5): V(s_{t+1}) is the next token's value, and the state after the last
    token is terminal. Returns (advantages, returns), both (B, T) and zero on padding."""
    values = torch.where(mask, values, torch.zeros_like(values))
    next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    next_values = torch.where(next_mask, next_values, torch.zeros_like(next_values))
    terminated = mask & ~next_mask  # the last completion token
    adv, returns = gae(rewards, values, next_values, gamma, lam, terminated=terminated)
    if whiten_advantages:
        adv = whiten(adv, mask)
    zero = torch.zeros_like(adv)
    return torch.where(mask, adv, zero), torch.where(mask, returns, zero)


# --- prompts -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptSet:
    """What PPO optimises on: training prompts, held-out prompts, and (built-in tasks) the hidden score."""

    train: list[str]
    eval: list[str]
    hidden_score: HiddenScore | None = None
    train_names: list[str] | None = None
    """Where each training prompt came from ('file.jsonl:LINE'), for errors; None: 'prompt i'."""
    eval_names: list[str] | None = None
    """Likewise for the held-out prompts."""

    def __post_init__(self) -> None:
        for split, prompts in (("train", self.train), ("eval", self.eval)):
            if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
                raise DataError(f"PromptSet.{split} must be a list of prompt strings, got {type(prompts).__name__}")
            if not prompts:
                raise DataError(f"PromptSet.{split} is empty; PPO needs at least one {split} prompt")
            for i, prompt in enumerate(prompts):
                if not isinstance(prompt, str) or not prompt:
                    raise DataError(f"PromptSet.{split}[{i}] is {prompt!r}, not a non-empty string")
            names = getattr(self, f"{split}_names")
            if names is not None and len(names) != len(prompts):
                raise DataError(f"PromptSet.{split}_names holds {len(names)} names for {len(prompts)} prompts")


def load_prompt_set(spec: str, n_eval: int, seed: int) -> PromptSet:
    """A built-in task's prompts (and hidden score) or a JSONL file's (see ``rlhf_data.prompt_set``)."""
    from gradascent.algos import rlhf_data

    return rlhf_data.prompt_set(spec, n_eval, seed)


def prompt_indices(n_prompts: int, batch: int, update: int, seed: int) -> list[int]:
    """Indices of the prompts of ``update``: positions [update * batch, (update + 1) * batch) of an endless
    sequence of shuffled passes over the prompts (pass e shuffled by a generator seeded with seed and e).
    A pure function of the update number, so a resumed run reads exactly the prompts it would have read."""
    out: list[int] = []
    pos = update * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, n_prompts)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_prompts, generator=g).tolist()
        take = min(batch - len(out), n_prompts - offset)
        out.extend(perm[offset:offset + take])
        pos += take
    return out


# --- models --------------------------------------------------------------------------------------------


@dataclass
class Models:
    """The four roles. ``lora`` is the peft handle when the policy is a LoRA adapter (see lm.adapters);
    then ``reference`` is None (the base with the adapter off) and ``reward`` may share the base."""

    policy: nn.Module
    critic: nn.Module
    reference: nn.Module | None
    reward: nn.Module
    tokenizer: Any
    lora: Any = None
    reward_adapter: bool = False


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers map every string to the same ids (same vocabulary and special tokens)."""
    return (a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id
            and type(a.backend_tokenizer.model).__name__ == type(b.backend_tokenizer.model).__name__
            if hasattr(a, "backend_tokenizer") and hasattr(b, "backend_tokenizer")
            else a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id)


def check_reference_tokenizer(reference: str, reference_tokenizer: Any, policy: str, tokenizer: Any) -> None:
    """A ConfigError unless the reference model reads the policy's token ids."""
    if not same_tokenizer(tokenizer, reference_tokenizer):
        raise ConfigError(f"the reference model in {reference} uses a different tokenizer from the policy in "
                          f"{policy}; the KL penalty compares log-probs of the same token ids")


def load_models(cfg: PPORLHFConfig) -> Models:
    """Policy and critic (trained), reference and reward model (frozen, eval mode, no gradients)."""
    from gradascent.lm import adapters
    from gradascent.lm.heads import RewardModel, ValueModel
    from gradascent.lm.models import load_model

    if not cfg.policy:
        raise ConfigError("config key 'policy' is empty: give the SFT model directory")
    if not cfg.reward_model:
        raise ConfigError("config key 'reward_model' is empty: give the directory written by `gradascent rm`")
    device = distributed.process_device(cfg.device)
    policy, tok = load_model(cfg.policy, device=device)
    reward, rm_tok = RewardModel.from_pretrained(cfg.reward_model, device=device)
    if not same_tokenizer(tok, rm_tok):
        raise ConfigError(f"the reward model in {cfg.reward_model} uses a different tokenizer from the policy in "
                          f"{cfg.policy}; they must share one (the reward model reads the policy's token ids)")
    reference: nn.Module | None = None
    lora = None
    reward_adapter = False
    if cfg.reference is not None:
        reference, ref_tok = load_model(cfg.reference, device=device)
        check_reference_tokenizer(cfg.reference, ref_tok, cfg.policy, tok)
    if cfg.value_init == "reward_model":
        critic = ValueModel(copy.deepcopy(reward.backbone), copy.deepcopy(reward.head))
    else:
        critic, _ = ValueModel.from_pretrained(cfg.policy, new_head=True, device=device)
    if cfg.lora_r > 0:
        lora = adapters.add_lora(policy, "policy", cfg.lora_r, cfg.lora_alpha)
        if adapters.has_adapter(cfg.reward_model):
            adapters.load_adapter(lora, cfg.reward_model, "reward", policy)
            reward = RewardModel(policy, reward.head)  # the shared base, read through the 'reward' adapter
            reward_adapter = True
    elif reference is None:
        reference = copy.deepcopy(policy)
    frozen = [m for m in (reference, reward.head if reward_adapter else reward) if m is not None]
    for m in frozen:
        m.eval()
        m.requires_grad_(False)
    critic.freeze_lm_head()  # the value head never reads it (and DDP wants every trained weight used)
    return Models(policy=policy, critic=critic.to(device), reference=reference, reward=reward, tokenizer=tok,
                  lora=lora, reward_adapter=reward_adapter)


def completion_logits(model: nn.Module, input_ids: Tensor, attn_mask: Tensor, n_completion: int) -> Tensor:
    """Full logits predicting the last ``n_completion`` tokens of each row (evaluation only: training goes
    through lm.completion_logprobs, which never builds them). Shapes: (N, P + T) -> (N, T, V)."""
    from gradascent.lm.models import position_ids_from_mask

    out = model(input_ids=input_ids, attention_mask=attn_mask.long(), position_ids=position_ids_from_mask(attn_mask),
                use_cache=False, logits_to_keep=n_completion + 1)
    return out.logits[:, :-1]


class PolicyLogprobs(nn.Module):
    """The policy seen as a function of (prompt, completion) -> per-token (logp, entropy) at ``temperature``:
    one module whose forward DistributedDataParallel can wrap."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                completion_mask: Tensor) -> tuple[Tensor, Tensor]:
        from gradascent.lm.logprobs import completion_logprobs

        return completion_logprobs(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask,  # type: ignore[return-value]
                                   temperature=self.temperature, with_entropy=True)


class CriticValues(nn.Module):
    """The critic seen as (prompt, completion) -> V(s_t) of each completion token (``completion_values``): one
    module whose forward DistributedDataParallel can wrap."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor) -> Tensor:
        return self.critic.completion_values(prompt_ids, prompt_mask, completion_ids, completion_mask)


def policy_logprobs(model: nn.Module, gen_like: Any, temperature: float) -> Tensor:
    """log pi(y_t | x, y_<t) of the completion tokens of a ``Generation``. Shapes: -> (N, T)."""
    from gradascent.lm.logprobs import completion_logprobs

    return completion_logprobs(model, gen_like.prompt_ids, gen_like.prompt_mask, gen_like.completion_ids,  # type: ignore[return-value]
                               gen_like.completion_mask, temperature=temperature)


def reference_logprobs(models: Models, gen: Any, temperature: float) -> Tensor:
    """log pi_ref of the completion tokens: the reference model, or the policy's base with LoRA off."""
    if models.reference is not None:
        return policy_logprobs(models.reference, gen, temperature)
    from gradascent.lm.adapters import use_adapter

    with use_adapter(models.lora, None):
        return policy_logprobs(models.policy, gen, temperature)


def _reference_logits(models: Models, input_ids: Tensor, attn_mask: Tensor, T: int) -> Tensor:
    if models.reference is not None:
        return completion_logits(models.reference, input_ids, attn_mask, T)
    from gradascent.lm.adapters import use_adapter

    with use_adapter(models.lora, None):
        return completion_logits(models.policy, input_ids, attn_mask, T)


def reward_scores(models: Models, input_ids: Tensor, attn_mask: Tensor) -> Tensor:
    """r_phi(x, y) of each row, read at its last real token. Shapes: (N, P + T) -> (N,)."""
    if not models.reward_adapter:
        return models.reward(input_ids, attn_mask)
    from gradascent.lm.adapters import use_adapter

    with use_adapter(models.lora, "reward"):
        return models.reward(input_ids, attn_mask)


# --- sampling and evaluation (no optimizer here) -------------------------------------------------------


def sample(models: Models, prompts: list[str], cfg: PPORLHFConfig, generator: torch.Generator | None,
           greedy: bool = False) -> Any:
    """Completions of ``prompts`` from the current policy through lm.generate."""
    from gradascent.lm.generate import generate
    from gradascent.lm.tokenizers import encode_prompts, eos_token_ids

    tok = models.tokenizer
    device = distributed.process_device(cfg.device)
    ids, mask = encode_prompts(tok, prompts, device=device)
    return generate(
        models.policy, ids, mask, max_new_tokens=cfg.max_new_tokens, eos_token_ids=eos_token_ids(tok, models.policy),
        pad_token_id=tok.pad_token_id, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        greedy=greedy, generator=generator, engine="hf" if models.lora is not None else cfg.engine,
    )


def decode(models: Models, gen: Any) -> list[str]:
    from gradascent.lm.tokenizers import decode_completions, eos_token_ids

    return decode_completions(models.tokenizer, gen.completion_ids.cpu(), gen.completion_mask.cpu(),
                              strip_eos=eos_token_ids(models.tokenizer, models.policy))


@torch.no_grad()
def evaluate(models: Models, prompts: list[str], hidden: HiddenScore | None, cfg: PPORLHFConfig,
             seed: int) -> dict[str, float]:
    """Greedy completions of ``prompts``: mean hidden score (built-in task), reward-model score and length;
    and KL(pi || pi_ref) per completion, summed exactly over the vocabulary along completions sampled at
    ``cfg.temperature`` with a generator seeded by ``seed``."""
    out: dict[str, float] = {}
    greedy = sample(models, prompts, cfg, None, greedy=True)
    ids, amask = greedy.input_ids, greedy.attention_mask
    out["eval_rm_score"] = float(reward_scores(models, ids, amask).mean())
    out["eval_length"] = float(greedy.lengths.float().mean())
    if hidden is not None:
        out["hidden_score"] = float(torch.tensor(list(hidden(prompts, decode(models, greedy))), dtype=torch.float64).mean())
    g = torch.Generator(device=cfg.device).manual_seed(seed)
    sampled = sample(models, prompts, cfg, g)
    ids, amask, cmask = sampled.input_ids, sampled.attention_mask, sampled.completion_mask
    T = cmask.shape[1]
    z = completion_logits(models.policy, ids, amask, T).float() / cfg.temperature
    z_ref = _reference_logits(models, ids, amask, T).float() / cfg.temperature
    kl_tok = torch.where(cmask, categorical_kl(z, z_ref), torch.zeros_like(cmask, dtype=torch.float32))
    out["kl_to_reference"] = float(kl_tok.sum(-1).mean())
    return out


# --- the trainer ---------------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def shortest_context(models: Models) -> tuple[int | None, str]:
    """The smallest context (max_position_embeddings) of the models that read a prompt and its completion
    (policy, reference, reward model, critic) and the role that has it; (None, "policy") where none says."""
    roles = [("policy", models.policy), ("reference", models.reference), ("reward model", models.reward),
             ("critic", models.critic)]
    found = []
    for role, m in roles:
        config = getattr(m, "config", None) or getattr(getattr(m, "backbone", None), "config", None)
        context = getattr(config, "max_position_embeddings", None)
        if isinstance(context, int):
            found.append((context, role))
    return min(found, key=lambda c: c[0]) if found else (None, "policy")


def check_lengths(cfg: PPORLHFConfig, prompt_set: PromptSet, tokenizer: Any, context: int | None,
                  source: str, holder: str = "policy") -> None:
    """Every prompt plus ``max_new_tokens`` fits ``context`` (the ``holder``'s: the shortest of the models'),
    or a ConfigError / DataError that names the first prompt that does not (``source`` says where the prompts
    came from)."""
    for prompts, split, names in ((prompt_set.train, "training", prompt_set.train_names),
                                  (prompt_set.eval, "held-out", prompt_set.eval_names)):
        check_fits_context(tokenizer, prompts, context, cfg.max_new_tokens, f"{source}, {split} prompts ({holder} "
                           f"context {context}, max_new_tokens {cfg.max_new_tokens})",
                           names[:len(prompts)] if names else None, holder=holder)


def train_ppo_rlhf(cfg: PPORLHFConfig, prompt_set: PromptSet | None = None,
                   models: Models | None = None) -> dict[str, Any]:
    """Run PPO-RLHF as configured; returns the summary (also written to ``out/summary.json``).

    ``prompt_set`` replaces ``cfg.prompts`` (the Python API's way to pass prompts and a hidden score), and
    ``models`` replaces loading them from ``cfg.policy`` / ``cfg.reward_model`` (``load_models(cfg)``
    builds one; the policy and critic are trained in place).
    """
    check_config(cfg, PPORLHFConfig, "train_ppo_rlhf")
    require_path(cfg.out, "run directory")  # an out that cannot be a directory stops the run before any loading
    dist_info = distributed.init(cfg.device)
    world, is_main = dist_info.world_size, dist_info.is_main
    local_batch, local_mb = check_batch_split(cfg, world)
    torch.manual_seed(cfg.seed + dist_info.rank)
    t_start = time.perf_counter()
    # prompts and models are loaded and checked before the run directory is touched
    source = cfg.prompts if prompt_set is None else "the prompt set passed from Python"
    prompt_set = prompt_set or load_prompt_set(cfg.prompts, cfg.eval_prompts, cfg.seed)
    models = models or load_models(cfg)
    policy, critic = models.policy, models.critic
    context, holder = shortest_context(models)
    check_lengths(cfg, prompt_set, models.tokenizer, context, source, holder=holder)
    names = (prompt_set.train_names or [f"training prompt {i + 1}" for i in range(len(prompt_set.train))]) + \
        (prompt_set.eval_names or [f"held-out prompt {i + 1}" for i in range(len(prompt_set.eval))])
    warn_unknown(models.tokenizer, prompt_set.train + prompt_set.eval, names, f"PPO on {source}")
    data_fp = data_fingerprint(prompt_set.train)  # of what it trains on: a resume refuses other data
    run = RunDir(cfg.out, dirs=("policy", "value")) if is_main else None
    resume_from = latest_checkpoint(Path(cfg.out) / "checkpoints") if cfg.resume else None
    check_not_past(resume_from, cfg.updates, "updates", cfg=cfg)
    if run is not None:
        check_resume(run, cfg, resume_from is not None, cfg.resume, RESUMABLE_CHANGES)
    if run is not None:
        run.write_config(cfg)
    # Dropout off throughout (eval mode): completions, pi_old and the old values come from the models without
    # it, so a training forward with it would make the first ratio dropout noise, not 1.
    policy.eval()
    critic.eval()
    policy_params, critic_params = _trainable(policy), _trainable(critic)
    optimizer = adamw(
        [{"params": policy_params, "lr": cfg.lr}, {"params": critic_params, "lr": cfg.vf_lr or cfg.lr}],
        weight_decay=cfg.weight_decay, eps=1e-5,
    )
    params = policy_params + critic_params
    policy_step: nn.Module = PolicyLogprobs(policy, cfg.temperature)
    critic_step: nn.Module = CriticValues(critic)
    if dist_info.enabled:
        policy_step = nn.parallel.DistributedDataParallel(policy_step)
        critic_step = nn.parallel.DistributedDataParallel(critic_step)
    device = distributed.process_device(cfg.device)
    sample_rng = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + dist_info.rank)
    shuffle_rng = torch.Generator().manual_seed(cfg.seed * 104729 + dist_info.rank)
    guard = NonFiniteGuard(cfg.max_nonfinite)
    kl_coef = cfg.kl_coef
    start, samples = 0, 0
    baseline: dict[str, float] = {}
    if resume_from is not None:
        with restoring(resume_from):
            _, state = load_checkpoint(resume_from)
            check_data_fingerprint(state, data_fp, f"the training prompts of {source}", resume_from)
            policy.load_state_dict(state["policy"])
            critic.load_state_dict(state["critic"])
            optimizer.load_state_dict(state["optimizer"])
            restore_rng(state["rng"])
            if len(state["sample_rng"]) == world:  # bit for bit: every rank continues its own streams
                sample_rng.set_state(state["sample_rng"][dist_info.rank])
                shuffle_rng.set_state(state["shuffle_rng"][dist_info.rank])
            else:  # another number of processes: everything but the per-rank streams carries over
                at = int(state["update"])
                sample_rng.manual_seed(cfg.seed * 7919 + dist_info.rank + 1_000_003 * at)
                shuffle_rng.manual_seed(cfg.seed * 104729 + dist_info.rank + 1_000_003 * at)
                if is_main:
                    print(f"resuming a checkpoint of {len(state['sample_rng'])} processes on {world}: sampling and "
                          "shuffling streams restart from the update (not bit-identical to an uninterrupted run)",
                          file=sys.stderr)
            guard.load_state_dict(state["guard"])
            kl_coef, start, samples = float(state["kl_coef"]), int(state["update"]), int(state["samples"])
            baseline = dict(state["baseline"])
        if run is not None:
            run.truncate_metrics(start)
    elif run is not None:
        run.clear_metrics()  # a fresh start: no rows of an earlier run
    if not baseline:  # the SFT model's figures, measured once before any update
        baseline = evaluate(models, prompt_set.eval, prompt_set.hidden_score, cfg, cfg.seed)
        if run is not None:
            run.log(0, {"samples": 0, **baseline, "kl_coef": kl_coef})

    def checkpoint(update: int) -> None:
        sample_states, shuffle_states = _gather_states(sample_rng), _gather_states(shuffle_rng)  # every rank
        if run is None:  # rank 0 writes
            return
        save_checkpoint(run.checkpoints, update, {
            "policy": policy.state_dict(), "critic": critic.state_dict(), "optimizer": optimizer.state_dict(),
            "sample_rng": sample_states, "shuffle_rng": shuffle_states,
            "rng": capture_rng(), "guard": guard.state_dict(), "kl_coef": kl_coef, "update": update,
            "samples": samples, "baseline": baseline, "data_fingerprint": data_fp,
        }, keep_last=cfg.keep_last)

    # Resumed from the final checkpoint (killed while saving the models): evaluate the trained policy again.
    last_eval = evaluate(models, prompt_set.eval, prompt_set.hidden_score, cfg, cfg.seed) if start >= cfg.updates \
        else dict(baseline)
    bar = progress_bar(cfg.updates, "ppo", unit="update", enabled=cfg.progress if is_main else False)
    bar.update(start)
    with StopOnSignal() as stop:
        for update in range(start, cfg.updates):
            t0 = time.perf_counter()
            # 1. sample this rank's share of the update's prompts
            idx = prompt_indices(len(prompt_set.train), cfg.batch_size, update, cfg.seed)
            idx = idx[dist_info.rank * local_batch:(dist_info.rank + 1) * local_batch]
            prompts = [prompt_set.train[i] for i in idx]
            gen = sample(models, prompts, cfg, sample_rng)
            ids, amask = gen.input_ids, gen.attention_mask  # (N, P + T)
            cids, mask = gen.completion_ids, gen.completion_mask  # (N, T)

            # 2. score: reward model, pi_old, pi_ref, critic
            with torch.no_grad():
                score = reward_scores(models, ids, amask)  # (N,)
                if not bool(torch.isfinite(score).all()):
                    bad = torch.nonzero(~torch.isfinite(score)).flatten().tolist()
                    raise NonFiniteError(
                        f"the reward model returned NaN or inf at update {update + 1}, batch of prompts "
                        f"{idx[:3]}{'...' if len(idx) > 3 else ''} (rows {bad[:5]}, first prompt "
                        f"{prompts[bad[0]]!r:.60}); stopping (the last checkpoint is intact)")
                logp_old = policy_logprobs(policy, gen, cfg.temperature)
                logp_ref = reference_logprobs(models, gen, cfg.temperature)
                values_old = critic.completion_values(gen.prompt_ids, gen.prompt_mask, cids, mask)  # (N, T)

                # 3. per-token rewards (21) and advantages (5)
                rewards, kl, score_used = assemble_rewards(
                    score, logp_old, logp_ref, mask, gen.finished, kl_coef,
                    kl_estimator=cfg.kl_estimator, missing_eos_penalty=cfg.missing_eos_penalty)
                adv, returns = completion_advantages(rewards, values_old, mask, cfg.gamma, cfg.lam,
                                                     cfg.whiten_advantages)

            # 4. epochs of minibatches
            stats_sum: dict[str, float] = {}
            n_mb = 0
            for _ in range(cfg.epochs):
                perm = torch.randperm(local_batch, generator=shuffle_rng)
                for k in range(0, local_batch, local_mb):
                    mb = perm[k:k + local_mb].to(device)
                    m = mask[mb]
                    t_mb = max(int(m.sum(-1).max()), 1)  # drop padding columns past the longest completion
                    m = m[:, :t_mb]
                    agg_kwargs = _agg_kwargs(cfg, m, dist_info.enabled)
                    logp, entropy = policy_step(gen.prompt_ids[mb], gen.prompt_mask[mb], cids[mb, :t_mb], m)
                    pg_loss, pg_stats = clipped_surrogate_loss(  # (10)
                        logp, logp_old[mb, :t_mb], adv[mb, :t_mb], m, clip_eps_low=cfg.clip_eps, agg=cfg.agg,
                        agg_kwargs=agg_kwargs)
                    if not cfg.ent_coef:
                        entropy = entropy.detach()
                    ent_loss, ent_stats = entropy_loss(entropy, m, agg=cfg.agg, agg_kwargs=agg_kwargs)
                    values = critic_step(gen.prompt_ids[mb], gen.prompt_mask[mb], cids[mb, :t_mb], m)
                    vf_loss, vf_stats = value_loss(  # (13)
                        values, returns[mb, :t_mb], values_old[mb, :t_mb], clip_eps=cfg.vf_clip_eps, mask=m,
                        agg=cfg.agg, agg_kwargs=agg_kwargs)
                    loss = pg_loss + cfg.vf_coef * vf_loss + cfg.ent_coef * ent_loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if guard.check(loss, params, where=f"update {update + 1}"):
                        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
                        optimizer.step()
                    else:
                        optimizer.zero_grad(set_to_none=True)
                    for key, v in {**pg_stats, **ent_stats, **vf_stats}.items():
                        stats_sum[key] = stats_sum.get(key, 0.0) + float(v)
                    n_mb += 1

            # 5. adapt beta on the KL per completion of the batch just sampled
            kl_seq = float(distributed.global_count((kl * mask).sum()) / cfg.batch_size)
            if cfg.kl_control == "proportional":
                kl_coef = proportional_kl_coef(kl_coef, kl_seq, cfg.kl_target, n_steps=cfg.batch_size,
                                               horizon=cfg.kl_horizon)
            elif cfg.kl_control == "adaptive":
                kl_coef = adaptive_kl_coef(kl_coef, kl_seq, cfg.kl_target, threshold=cfg.kl_threshold)
            samples += cfg.batch_size

            # 6. log, evaluate, checkpoint
            done = update + 1
            metrics: dict[str, Any] = {k: v / max(n_mb, 1) for k, v in stats_sum.items()}
            metrics.update({
                "rm_score": float(score.mean()),
                "score": float(score_used.mean()),
                "kl": kl_seq,
                "reward_total": float(rewards.sum(-1).mean()),  # per completion: score - beta * its KL
                "response_length": float(mask.sum(-1).float().mean()),
                "eos_fraction": float(gen.finished.float().mean()),
                "value_mean": float(masked_mean(values_old, mask)),
            })
            if prompt_set.hidden_score is not None:
                texts = decode(models, gen)
                metrics["hidden_score_sampled"] = float(torch.tensor(
                    list(prompt_set.hidden_score(prompts, texts)), dtype=torch.float64).mean())
            metrics = distributed.reduce_metrics(metrics)
            # over all ranks' tokens at once (a mean of the ranks' own would weigh each rank's spread)
            metrics["explained_variance"] = distributed.global_explained_variance(values_old, returns, mask)
            metrics["kl_coef"] = kl_coef
            metrics["skipped_updates"] = guard.skipped
            if done == cfg.updates or (cfg.eval_every and done % cfg.eval_every == 0):
                last_eval = evaluate(models, prompt_set.eval, prompt_set.hidden_score, cfg, cfg.seed)
                metrics.update(last_eval)
            metrics["wall_s"] = time.perf_counter() - t0
            if run is not None and (done % cfg.log_every == 0 or done == cfg.updates):
                run.log(done, {"samples": samples, **metrics})
            bar.update(1)
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.updates:
                checkpoint(done)
            if distributed.any_rank(stop.requested is not None) and done < cfg.updates:  # agreed on by every rank
                checkpoint(done)
                bar.close()
                if run is not None:
                    run.close()
                by = stop.requested or "a signal to another process"
                return {"stopped": f"stopped by {by} after update {done}; continue with --resume (or gradascent "
                                   f"resume {cfg.out})", "stopped_by": by, "updates_done": done}
    bar.close()

    summary: dict[str, Any] = {
        "updates": cfg.updates, "samples": samples,
        "hidden_score_sft": baseline.get("hidden_score"), "hidden_score_policy": last_eval.get("hidden_score"),
        "rm_score_sft": baseline.get("eval_rm_score"), "rm_score_policy": last_eval.get("eval_rm_score"),
        "kl_to_reference": last_eval.get("kl_to_reference"), "kl_coef": kl_coef,
        "length_sft": baseline.get("eval_length"), "length_policy": last_eval.get("eval_length"),
        "skipped_updates": guard.skipped, "wall_s": time.perf_counter() - t_start,
    }
    if run is not None:
        save_policy(models, Path(cfg.out) / "policy")
        critic.save_pretrained(Path(cfg.out) / "value", models.tokenizer)
        run.write_summary(summary)
        run.close()
    distributed.barrier()
    return summary


def check_batch_split(cfg: PPORLHFConfig, world: int) -> tuple[int, int]:
    """(per-rank batch, per-rank minibatch) of ``world`` processes. Both sizes are global, so that the
    optimizer takes epochs * batch_size / minibatch_size steps an update on any number of processes; each
    must split evenly over them. ConfigError otherwise (``rlhf`` checks it before its first stage)."""
    require(cfg.batch_size % world == 0, "batch_size", cfg.batch_size, f"a multiple of the world size {world}")
    require(cfg.minibatch_size % world == 0, "minibatch_size", cfg.minibatch_size,
            f"a multiple of the world size {world} (it is global: each process takes minibatch_size / {world})")
    return cfg.batch_size // world, cfg.minibatch_size // world


def _agg_kwargs(cfg: PPORLHFConfig, mask: Tensor, ddp: bool) -> dict[str, Any] | None:
    """The reduction's divisors. R3 divides by the fixed L = max_new_tokens, never by the minibatch's width
    (which varies: each minibatch is cut to its longest completion), with one process or several."""
    kwargs: dict[str, Any] = {"norm_len": float(cfg.max_new_tokens)} if cfg.agg == "seq_mean_token_sum_norm" else {}
    if ddp and cfg.agg == "token_mean":
        kwargs["num_tokens"] = distributed.loss_divisor(mask.sum()).to(torch.float32)
    elif ddp:
        kwargs["num_seqs"] = distributed.loss_divisor(float(mask.shape[0])).to(torch.float32)
    return kwargs or None


def _gather_states(g: torch.Generator) -> list[Tensor]:
    """Every rank's generator state (rank order), so that rank 0's checkpoint restores them all."""
    state = g.get_state()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [state]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, state)
    return out


def save_policy(models: Models, path: Path) -> Path:
    """The trained policy as a plain causal LM directory (LoRA merged), loadable with lm.load_model."""
    from gradascent.lm.models import save_model

    if models.lora is not None:
        from gradascent.lm.adapters import merged_copy

        return save_model(merged_copy(models.lora, "policy"), models.tokenizer, path)
    return save_model(models.policy, models.tokenizer, path)


# --- command line --------------------------------------------------------------------------------------


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ppo", parents=[common], help="PPO-RLHF: optimise a policy against a reward model",
                       description="PPO against a frozen reward model with a KL penalty to the SFT reference "
                                   "(Ziegler et al. 2019). Writes the run directory and out/policy, out/value.")
    p.add_argument("--config", metavar="FILE.yaml", default=None, help="YAML file of PPORLHFConfig fields")
    add_config_flags(p, PPORLHFConfig)
    p.set_defaults(func=_cmd)


def train(cfg: PPORLHFConfig, resume: bool = False) -> dict[str, Any]:
    """The trainer as `gradascent resume` calls it: ``train_ppo_rlhf`` with ``resume`` forced on if asked."""
    return train_ppo_rlhf(dataclasses.replace(cfg, resume=True) if resume else cfg)


def _cmd(args: argparse.Namespace) -> int:
    cfg = load_config(PPORLHFConfig, args.config, flag_overrides=flag_values(args))
    return finish("ppo", train_ppo_rlhf(cfg), _summary_line)


def _summary_line(summary: dict[str, Any]) -> str:
    parts = []
    for k in ("hidden_score_sft", "hidden_score_policy", "rm_score_sft", "rm_score_policy", "kl_to_reference"):
        v = summary.get(k)
        if isinstance(v, float) and math.isfinite(v):
            parts.append(f"{k}={v:.3f}")
    return "ppo: " + " ".join(parts)
