"""Supervised fine-tuning (SFT): maximise log pi(y | x) of demonstrated completions, loss on completion tokens only.

L^SFT = - (1 / |y-tokens|) sum_t log pi(y_t | x, y_<t)       (token mean over the batch's completion tokens)

The first stage of RLHF (Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", sec. 3.5) and the starting policy of GRPO. Each example is prompt + completion + EOS; the prompt
tokens are context only. Deliberate choices:

- The EOS token is part of the completion and is trained, so the model learns to stop.
- Packing (``packing: true``) concatenates whole examples into rows of ``max_length`` tokens with positions
  restarting at each example and attention confined to it, so a packed batch trains exactly the
  same per-example losses as an unpacked one, with fewer padding tokens.
- Data order: each epoch is a permutation drawn from a generator seeded by (seed, epoch); the position
  (epoch, offset) is checkpointed, so a resumed run sees the same batches in the same order.
- A step whose loss or gradient is NaN/inf is skipped (``run.guard.NonFiniteGuard``); ``max_nonfinite`` in
  a row abort the run.
- Data parallel (``torchrun --nproc-per-node N``): every rank builds the same global batch of ``batch_size``
  examples and trains on its share of the rows; the token mean's divisor is the global token count
  (``run.distributed.loss_divisor``), so the update does not depend on the number of processes.
  Evaluation is sharded and reduced; rank 0 alone writes the run directory, and its checkpoints resume at
  any number of processes.
- ``fsdp: true`` under torchrun shards weights, gradients and optimizer state over the processes (FSDP2)
  instead of replicating them (DDP); the update is the same. Checkpoints and the saved model hold whole
  tensors either way.

Run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/, tb/ and model/ (the final model and
tokenizer, loadable with ``lm.load_model``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gradascent.core.reduce import aggregate
from gradascent.errors import ConfigError, DataError
from gradascent.lm.generate import generate
from gradascent.lm.logprobs import SequenceLogprobs, sequence_logprobs
from gradascent.lm.models import count_parameters, eval_mode, load_model, save_model
from gradascent.lm.tokenizers import check_prompt_lengths, decode_completions, encode_prompts, eos_token_ids
from gradascent.lm.tokenizers import warn_unknown
from gradascent.rewards import check_columns, metric_names, score
from gradascent.run import distributed
from gradascent.run.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng, restoring, save_checkpoint
from gradascent.run.checkpoint import check_data_fingerprint, data_fingerprint, seed_everything
from gradascent.run.command import stop_message, stop_status
from gradascent.run.config import add_config_flags, check_config, check_fields, flag_values, load_config, require
from gradascent.run.guard import NonFiniteGuard, StopOnSignal
from gradascent.run.optim import adamw
from gradascent.run.progress import progress_bar
from gradascent.run.rundir import RunDir, check_not_past, check_resume, require_path
from gradascent.run.schedule import lr_multiplier, warn_short_warmup
from gradascent.tasks import Task, describe_rows, load_task, row_names, sft_example

# Metrics that measure the clock, not the run: they differ between a resumed run and an uninterrupted one.
WALL_CLOCK_METRICS = ("time_s", "tokens_per_s")


@dataclass(frozen=True)
class SFTConfig:
    model: str = "qwen2-1m"
    """Model to train: a preset (lm.models.PRESETS, random init, built-in character tokenizer) or a local
    model directory (with its tokenizer)."""
    task: str = "arithmetic"
    """Data: a built-in task (arithmetic, preference) or a JSONL file of prompt + completion/answer/chosen rows."""
    eval_file: str | None = None
    """Optional JSONL file of eval rows; by default a seeded 10% of a JSONL task file is held out."""
    n_train: int = 4000
    """Training examples drawn for a built-in task (ignored for files)."""
    n_eval: int = 200
    """Eval examples drawn for a built-in task (ignored for files)."""
    out: str = "runs/sft"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, model/)."""
    seed: int = 0
    """Seed of the model initialisation, the data and the data order."""
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    """Examples per step over all processes (packed rows per step with packing)."""
    lr: float = 1e-3
    """Peak AdamW learning rate; ~1e-3 for the small presets from scratch, ~1e-5 to 2e-5 for a pretrained model."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """Decay after warm-up (run.schedule.lr_multiplier), down to 10% of the peak for linear and cosine."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (Loshchilov & Hutter 2019)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; 0 or null: no clipping (the norm is still logged)."""
    max_length: int = 128
    """Most tokens of one example (prompt + completion + EOS), and the row length with packing; a longer
    example is an error, never silently cut."""
    packing: bool = False
    """Pack whole examples into rows of max_length tokens, attention confined to each example."""
    log_every: int = 10
    """Steps between two metrics rows (the loss is averaged over them)."""
    eval_every: int = 200
    """Steps between evaluations (eval loss, and the task reward of greedy completions); 0 = only at the end."""
    eval_generate: int = 100
    """Eval prompts completed greedily to report the task's rewards (0 = off; tasks without rewards skip it)."""
    stop_at: float | None = None
    """Stop after the first evaluation whose ``stop_metric`` reaches this value (None = train all steps);
    the model saved is the one evaluated."""
    stop_metric: str = "eval/reward"
    """Evaluation metric that ``stop_at`` watches, e.g. eval/reward or eval/reward/exact_match (a name
    eval/reward/<reward function> as logged in metrics.jsonl)."""
    save_every: int = 200
    """Steps between checkpoints (0 = only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    resume: bool = False
    """Continue from the newest complete checkpoint in out/checkpoints (bitwise as if never stopped)."""
    max_nonfinite: int = 5
    """Consecutive steps with a NaN/inf loss or gradient that abort the run (each one is skipped)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1..."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype during training."""
    fsdp: bool = False
    """Under torchrun, shard weights, gradients and optimizer state over the processes with FSDP2
    (``fully_shard`` per decoder layer) instead of replicating them with DDP: for a model whose training
    state does not fit one device. Same update, same checkpoints; ignored for one process (docs/distributed.md)."""
    progress: bool | None = None
    """Show a progress bar (None: only on a terminal)."""

    def __post_init__(self) -> None:
        check_fields(self)
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32)")
        require(self.steps >= 1, "steps", self.steps, ">= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        require(self.max_grad_norm is None or self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm,
                "a float >= 0 (0: no clipping) or null")
        require(self.max_length >= 2, "max_length", self.max_length, ">= 2")
        require(self.n_train >= 1, "n_train", self.n_train, ">= 1")
        require(self.n_eval >= 0, "n_eval", self.n_eval, ">= 0")
        require(self.log_every >= 1, "log_every", self.log_every, ">= 1")
        require(self.eval_every >= 0, "eval_every", self.eval_every, ">= 0")
        require(self.eval_generate >= 0, "eval_generate", self.eval_generate, ">= 0")
        require(self.save_every >= 0, "save_every", self.save_every, ">= 0")
        if self.stop_at is not None:
            require(math.isfinite(self.stop_at), "stop_at", self.stop_at, "a finite number or null")
            require(self.eval_every >= 1 and self.eval_generate >= 1, "stop_at", self.stop_at,
                    "null unless eval_every >= 1 and eval_generate >= 1 (it watches greedy evaluations)")
            require(self.stop_metric.startswith("eval/reward"), "stop_metric", self.stop_metric,
                    "eval/reward or eval/reward/<reward function>")
        require(self.keep_last >= 1, "keep_last", self.keep_last, ">= 1")
        require(self.max_nonfinite >= 1, "max_nonfinite", self.max_nonfinite, ">= 1")


RESUMABLE_CHANGES = frozenset({"out", "resume", "progress", "log_every", "eval_every", "eval_generate", "save_every",
                               "keep_last", "max_nonfinite", "stop_at", "stop_metric", "steps", "device", "fsdp"})
"""Config fields a resumed run may change: where and how it runs, what it logs, and how long it goes on
(more ``steps`` stretches the rest of the learning-rate schedule)."""


# --- data ----------------------------------------------------------------------------------------------


def encode_examples(tokenizer: Any, rows: list[dict[str, Any]], max_length: int,
                    names: list[str] | None = None) -> list[tuple[list[int], int]]:
    """Each row as (prompt + completion + EOS token ids, number of prompt tokens).

    Prompt and completion are tokenized separately, so the boundary never merges across them. A row longer
    than ``max_length`` is a DataError naming it by its entry in ``names`` ('file.jsonl:12'), or else as
    'example <i>' counted from 1.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; SFT appends one to every completion")
    out = []
    for i, row in enumerate(rows):
        prompt, completion = sft_example(row)
        p = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False, verbose=False)["input_ids"]
        ids = p + c + [eos]
        if len(ids) > max_length:
            name = names[i] if names is not None else f"example {i + 1}"
            raise DataError(f"{name} is {len(ids)} tokens long (prompt {len(p)}, completion {len(c)}, EOS 1), "
                            f"more than max_length={max_length}: {prompt!r:.60}")
        out.append((ids, len(p)))
    return out


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded (ids, mask, target) of shape (B, L); target marks completion tokens and EOS."""
    L = max(len(ids) for ids, _ in examples)
    ids_t = torch.full((len(examples), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), L, dtype=torch.bool)
    target = torch.zeros(len(examples), L, dtype=torch.bool)
    for i, (ids, n_prompt) in enumerate(examples):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = True
        target[i, max(n_prompt, 1): len(ids)] = True  # a first token has nothing to condition on
    return ids_t, mask, target


def pack(examples: list[tuple[list[int], int]], length: int, pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows of ``length`` tokens holding whole examples in order: (ids, mask, target, position_ids), (R, length).

    Positions restart at 0 at each example; the padding tail of a row is one more segment, masked out.
    """
    rows: list[list[tuple[list[int], int]]] = [[]]
    used = 0
    for ex in examples:
        if used + len(ex[0]) > length:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += len(ex[0])
    ids_t = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    target = torch.zeros(len(rows), length, dtype=torch.bool)
    pos = torch.zeros(len(rows), length, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for ids, n_prompt in row:
            n = len(ids)
            ids_t[r, at: at + n] = torch.tensor(ids)
            mask[r, at: at + n] = True
            target[r, at + max(n_prompt, 1): at + n] = True
            pos[r, at: at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(length - at)
    return ids_t, mask, target, pos


class DataOrder:
    """Seeded epochs of a dataset of ``n`` examples; the position (epoch, offset) is the whole state."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def begin(self) -> None:
        """Start the next epoch if this one is used up."""
        if self.offset >= self.n:
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)

    @property
    def remaining(self) -> int:
        return self.n - self.offset

    def peek(self) -> int:
        return self._perm[self.offset]

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices of the current epoch (fewer at its end)."""
        self.begin()
        out = self._perm[self.offset: self.offset + k]
        self.offset += len(out)
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._perm = self._permutation(self.epoch)


def next_batch(cfg: SFTConfig, examples: list[tuple[list[int], int]], order: DataOrder,
               pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(ids, mask, target, position_ids or None) of the next step; a batch never spans two epochs."""
    if not cfg.packing:
        idx = order.take(min(cfg.batch_size, len(examples)))
        return (*collate([examples[i] for i in idx], pad_id), None)
    # Packing: whole examples, in order, until batch_size rows of max_length are full (same rule as pack()).
    order.begin()
    chosen: list[tuple[list[int], int]] = []
    rows, used = 1, 0
    while order.remaining:
        n = len(examples[order.peek()][0])
        if used + n > cfg.max_length:
            if rows == cfg.batch_size:
                break
            rows, used = rows + 1, 0
        chosen.append(examples[order.take(1)[0]])
        used += n
    return pack(chosen, cfg.max_length, pad_id)


# --- evaluation ----------------------------------------------------------------------------------------


def eval_loss(model: Any, examples: list[tuple[list[int], int]], batch_size: int, pad_id: int,
              device: torch.device) -> float:
    """Token-mean negative log-likelihood of the completion tokens (EOS included) of ``examples``; under
    data parallelism each rank scores its share and the sums are all-reduced."""
    info = distributed.info()
    rows, weight = distributed.local_rows(len(examples), info.rank, info.world_size)
    mine = examples[rows] if weight else []
    total, count = 0.0, 0
    with torch.no_grad(), eval_mode(model):
        for s in range(0, len(mine), batch_size):
            ids, mask, target = (t.to(device) for t in collate(mine[s: s + batch_size], pad_id))
            logp = sequence_logprobs(model, ids, mask, target)
            total += float(-logp[target].sum())
            count += int(target.sum())
    return float(distributed.global_count(total) / distributed.global_count(count).clamp(min=1))


def eval_rewards(model: Any, tokenizer: Any, task: Task, n: int, device: torch.device) -> dict[str, float]:
    """The task's rewards of greedy completions of the first ``n`` eval prompts: 'reward' and 'reward/<fn>'.
    Under data parallelism each rank completes its share of the prompts and every rank scores them all."""
    rows = task.eval[:n]
    if not rows or not task.reward_fns:
        return {}
    prompts = [str(r["prompt"]) for r in rows]
    info = distributed.info()
    share, weight = distributed.local_rows(len(prompts), info.rank, info.world_size)
    mine = prompts[share] if weight else []
    eos = eos_token_ids(tokenizer, model)
    texts: list[str] = []
    for s in range(0, len(mine), 256):
        ids, mask = encode_prompts(tokenizer, mine[s: s + 256], device=device)
        g = generate(model, ids, mask, max_new_tokens=task.max_new_tokens, eos_token_ids=eos,
                     pad_token_id=tokenizer.pad_token_id, greedy=True)
        texts += decode_completions(tokenizer, g.completion_ids.cpu(), g.completion_mask.cpu(), strip_eos=eos)
    texts = distributed.gather_list(texts)  # every rank's completions, in prompt order
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
    total, metrics = score(task.reward_fns, prompts, texts, columns, task.reward_weights)
    return {"reward": float(total.mean()), **metrics}


def watched(metrics: dict[str, float], cfg: SFTConfig) -> float:
    """The value of ``cfg.stop_metric`` in an evaluation's metrics; an unknown name is a ConfigError."""
    if cfg.stop_metric not in metrics:
        known = sorted(k for k in metrics if k.startswith("eval/reward"))
        raise ConfigError(f"stop_metric: {cfg.stop_metric!r} is not among the evaluation's metrics "
                          f"(expected one of: {', '.join(known) or 'none: the task has no reward functions'})")
    return metrics[cfg.stop_metric]


# --- training ------------------------------------------------------------------------------------------


def sft_step(lm: nn.Module, optimizer: torch.optim.Optimizer, guard: NonFiniteGuard,
             batch: tuple[Tensor, Tensor, Tensor, Tensor | None], max_grad_norm: float | None, device: torch.device,
             where: str = "") -> tuple[Tensor, Tensor | None]:
    """One optimizer update of L^SFT on this rank's rows of a global batch (``next_batch``'s output, the same
    on every rank).

    ``lm`` is ``distributed.wrap(SequenceLogprobs(model))``: DDP or FSDP2 under torchrun. A rank's loss
    is its completion tokens' negative log-likelihood sum over (global completion tokens / world size), so
    that DDP's mean of the ranks' gradients is the gradient of the global token mean: one process holding
    the whole batch and N holding a share each make the same update (FSDP2 averages gradients as DDP does).
    ``max_grad_norm`` 0 or None does not clip.

    Returns (this rank's loss, the gradient norm before clipping, or None if the guard skipped the update).
    """
    info = distributed.info()
    ids, mask, target, pos = batch  # (R, L) each
    rows, weight = distributed.local_rows(len(ids), info.rank, info.world_size)
    ids, mask, target = ids[rows].to(device), mask[rows].to(device), target[rows].to(device)
    logp = lm(ids, mask, target, position_ids=None if pos is None else pos[rows].to(device))
    num_tokens = distributed.loss_divisor(weight * target.sum())
    loss = weight * aggregate(-logp, target, "token_mean", num_tokens=num_tokens)  # L^SFT
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not guard.check(loss, params, where=where):
        optimizer.zero_grad(set_to_none=True)
        return loss.detach(), None
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf)
    optimizer.step()
    return loss.detach(), grad_norm


def sft_task(cfg: SFTConfig) -> Task:
    """``cfg.task`` loaded, once checked to hold completions and the metric ``stop_at`` watches."""
    task = load_task(cfg.task, n_train=cfg.n_train, n_eval=cfg.n_eval, seed=cfg.seed, eval_file=cfg.eval_file)
    if task.kind == "prompt":
        raise DataError(f"task {cfg.task!r} holds prompts alone ({describe_rows(task)}); SFT needs a "
                        "'completion' or an 'answer' beside each prompt")
    if cfg.stop_at is not None:  # the watched metric must exist before any training starts
        watched({"eval/reward": 0.0, **{f"eval/reward/{name}": 0.0 for name in metric_names(task.reward_fns)}}, cfg)
    return task


def check_examples(cfg: SFTConfig, task: Task, tokenizer: Any,
                   context: int | None) -> tuple[list[tuple[list[int], int]], list[tuple[list[int], int]]]:
    """The (training, eval) examples encoded, once checked to fit ``max_length`` and the model's context
    (and the eval prompts that ``eval_generate`` completes, to leave room for the task's completion budget)."""
    names = {split: row_names(task, split) for split in ("train", "eval")}
    train_ex = encode_examples(tokenizer, task.train, cfg.max_length, names["train"])
    eval_ex = encode_examples(tokenizer, task.eval, cfg.max_length, names["eval"]) if task.eval else []
    warn_unknown(tokenizer, ["".join(sft_example(r)) for r in task.train + task.eval], names["train"] + names["eval"],
                 f"SFT on {cfg.task}", encoded=[ids for ids, _ in train_ex + eval_ex])
    for split, examples in (("train", train_ex), ("eval", eval_ex)):  # positions restart per example
        too_long = [i for i, (ids, _) in enumerate(examples) if context is not None and len(ids) > context]
        if too_long:
            i = too_long[0]
            raise DataError(f"{names[split][i]} ({split} example) is {len(examples[i][0])} tokens long, more than "
                            f"the model's context of {context} tokens ({len(too_long)} such examples)")
    if cfg.eval_generate and task.reward_fns and task.eval:  # greedy evaluations are scored with these columns
        check_columns(task.reward_fns, [k for k in task.eval[0] if k != "prompt"], f"{cfg.task} (eval)")
    if context is not None and cfg.eval_generate and task.reward_fns:  # greedy evaluations complete these
        check_prompt_lengths(tokenizer, [str(r["prompt"]) for r in task.eval[:cfg.eval_generate]],
                             context - task.max_new_tokens, f"{cfg.task}, eval prompts completed by eval_generate "
                             f"(model context {context}, completion budget {task.max_new_tokens})", names["eval"])
    return train_ex, eval_ex


def train_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Run SFT as configured; returns the summary (also written to out/summary.json by rank 0).

    Under torchrun each process trains on its share of every global batch (``sft_step``)."""
    check_config(cfg, SFTConfig, "train_sft")
    require_path(cfg.out, "run directory")  # an out that cannot be a directory stops the run before any loading
    dist_info = distributed.init(cfg.device)
    # Data, settings, the model and the examples' lengths are checked before the run directory is touched, so
    # bad input leaves it as it was.
    task = sft_task(cfg)
    seed_everything(cfg.seed)
    device = distributed.process_device(cfg.device)

    model, tokenizer = load_model(cfg.model, seed=cfg.seed, dtype=cfg.dtype, device=device)
    pad_id = tokenizer.pad_token_id
    train_ex, eval_ex = check_examples(cfg, task, tokenizer, getattr(model.config, "max_position_embeddings", None))
    data_fp = data_fingerprint(list(task.train))  # of what it trains on: a resume refuses other data
    run = RunDir(cfg.out, dirs=("model",)) if dist_info.is_main else None
    ckpt = latest_checkpoint(Path(cfg.out) / "checkpoints") if cfg.resume else None
    check_not_past(ckpt, cfg.steps, cfg=cfg)
    if run is not None:
        check_resume(run, cfg, ckpt is not None, cfg.resume, RESUMABLE_CHANGES)
        if ckpt is None and run.read_metrics():
            run.clear_metrics()  # stopped before its first checkpoint: start over
    if run is not None:
        run.write_config(cfg)

    # The training forward; under torchrun in DDP, or sharded with FSDP2 (then model's parameters are shards).
    lm = distributed.wrap(SequenceLogprobs(model), fsdp=cfg.fsdp)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, cfg.steps, cfg.warmup_steps, cfg.lr_schedule, min_ratio=0.1))
    warn_short_warmup(cfg.warmup_steps, cfg.steps, cfg.lr)
    order = DataOrder(len(train_ex), cfg.seed)
    guard = NonFiniteGuard(cfg.max_nonfinite)
    acc = {"loss_sum": 0.0, "steps": 0, "tokens": 0}  # running sums of the current log interval
    step, tokens_seen = 0, 0
    stopped_at: int | None = None
    last_eval: dict[str, float] = {}

    if ckpt is not None:
        with restoring(ckpt):
            step, state = load_checkpoint(ckpt)
            check_data_fingerprint(state, data_fp, f"the training examples of {cfg.task}", ckpt)
            distributed.load_full_state(model, opt, state["model"], state["optim"])
            sched.load_state_dict(state["sched"])
            order.load_state_dict(state["data"])
            guard.load_state_dict(state["guard"])
            acc, tokens_seen = dict(state["acc"]), int(state["tokens_seen"])
            if state.get("stopped_at") is not None:  # it had reached stop_at: nothing is left to train
                stopped_at, last_eval = int(state["stopped_at"]), dict(state["last_eval"])
            restore_rng(state["rng"])
        if run is not None:
            run.truncate_metrics(step)

    def checkpoint_now() -> None:
        # Nothing in the state belongs to one rank (the running loss is the mean over ranks), so any number
        # of processes can resume it.
        mean_acc = {**acc, **distributed.reduce_metrics({"loss_sum": acc["loss_sum"]})}
        model_state, optim_state = distributed.full_state(model, opt)  # whole tensors, also under FSDP2
        if run is not None:
            save_checkpoint(run.checkpoints, step, {
                "model": model_state, "optim": optim_state, "sched": sched.state_dict(),
                "data": order.state_dict(), "guard": guard.state_dict(), "acc": mean_acc,
                "tokens_seen": tokens_seen, "rng": capture_rng(),
                "stopped_at": stopped_at, "last_eval": last_eval,  # a run that reached stop_at is finished
                "data_fingerprint": data_fp,
            }, keep_last=cfg.keep_last)

    def evaluate() -> dict[str, float]:
        with distributed.full_weights(lm):  # generation reads the weights directly
            return _evaluate()

    def _evaluate() -> dict[str, float]:
        out: dict[str, float] = {}
        if eval_ex:
            out["eval/loss"] = eval_loss(model, eval_ex, cfg.batch_size, pad_id, device)
        if cfg.eval_generate:
            out.update({f"eval/{k}": v for k, v in eval_rewards(model, tokenizer, task, cfg.eval_generate,
                                                                  device).items()})
        return out

    t_start, stopped = time.perf_counter(), None
    bar = progress_bar(cfg.steps, "sft", enabled=cfg.progress if dist_info.is_main else False, initial=step)
    model.train()
    with StopOnSignal() as stop:
        while step < cfg.steps and stopped_at is None:
            batch = next_batch(cfg, train_ex, order, pad_id)  # the global batch; sft_step takes this rank's rows
            step_lr = sched.get_last_lr()[0]  # the learning rate this step uses (logged below)
            loss, grad_norm = sft_step(lm, opt, guard, batch, cfg.max_grad_norm, device, where=f"step {step + 1}")
            if grad_norm is not None:
                acc["loss_sum"] += float(loss)
                acc["steps"] += 1
                acc["grad_norm"] = float(grad_norm)
            sched.step()
            step += 1
            n_tok = int(batch[2].sum())  # completion tokens of the global batch
            tokens_seen += n_tok
            acc["tokens"] += n_tok
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t_start
                loss_sum = distributed.reduce_metrics({"loss_sum": acc["loss_sum"]})["loss_sum"]  # over ranks
                row = {"loss": loss_sum / max(acc["steps"], 1), "lr": step_lr,
                       "grad_norm": acc.get("grad_norm", float("nan")), "tokens": tokens_seen,
                       "epoch": order.epoch, "skipped": guard.skipped,
                       "time_s": elapsed, "tokens_per_s": acc["tokens"] / max(elapsed, 1e-9)}
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                    last_eval = evaluate()
                    row.update(last_eval)
                if run is not None:
                    run.log(step, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                acc = {"loss_sum": 0.0, "steps": 0, "tokens": 0}
                t_start = time.perf_counter()
            elif cfg.eval_every and step % cfg.eval_every == 0:
                last_eval = evaluate()
                if run is not None:
                    run.log(step, dict(last_eval))
            # The evaluation is the same on every rank (sharded and reduced), so is this decision.
            reached = cfg.stop_at is not None and bool(last_eval) and cfg.eval_every and step % cfg.eval_every == 0 \
                and watched(last_eval, cfg) >= cfg.stop_at
            if reached:
                stopped_at = step
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or reached:
                checkpoint_now()
            if reached:
                break
            if distributed.any_rank(stop.requested is not None):  # a signal may reach the ranks a step apart
                checkpoint_now()
                stopped = stop.requested or "a signal to another process"
                break
    bar.close()
    if not last_eval and not stopped:  # resumed from the final checkpoint: nothing left to train
        last_eval = evaluate()

    model_dir = Path(cfg.out) / "model"
    summary: dict[str, Any] = {"steps": step, "parameters": count_parameters(model), "tokens": tokens_seen,
                               "skipped_steps": guard.skipped, **last_eval}
    if stopped_at is not None:
        summary["stopped_at_target"] = {"step": stopped_at, "metric": cfg.stop_metric, "value": last_eval[cfg.stop_metric]}
    if stopped:
        summary["stopped_by"] = stopped
    else:
        summary["model_dir"] = str(model_dir)
    weights = distributed.full_model_state(model) if not stopped else None  # whole tensors, also under FSDP2
    if run is not None:
        if not stopped:
            save_model(model, tokenizer, model_dir, state_dict=weights)
        run.write_summary(summary)
        run.close()
    distributed.barrier()
    return summary


# --- command line --------------------------------------------------------------------------------------


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("sft", parents=[common], help="supervised fine-tuning on prompt/completion data",
                              description="Supervised fine-tuning: loss on completion tokens only. Config values "
                                          "come from the dataclass defaults, then --config, then flags.")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of SFTConfig fields")
    add_config_flags(p, SFTConfig)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(SFTConfig, args.config, flag_overrides=flag_values(args))
    summary = train_sft(cfg)
    is_main = distributed.info().is_main
    distributed.cleanup()
    if not is_main:
        return 0
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}
    print(" ".join(f"{k}={v}" for k, v in shown.items()))
    stopped = stop_message(summary)
    if stopped is not None:
        print(f"gradascent sft: {stopped}; continue with: gradascent resume {cfg.out}", file=sys.stderr)
        return stop_status(summary)
    return 0


def train(cfg: SFTConfig, resume: bool = False) -> dict[str, Any]:
    """``train_sft`` with ``resume`` as an argument: the entry point of ``gradascent resume DIR``."""
    return train_sft(dataclasses.replace(cfg, resume=resume or cfg.resume))
