"""Reward model: a scalar head on the SFT model, trained on preference pairs with the Bradley-Terry loss.

Papers: Bradley & Terry 1952; Ziegler et al. 2019 (arXiv:1909.08593) and Ouyang et al. 2022 (InstructGPT,
arXiv:2203.02155, eq. 1): r_phi(x, y) is a linear head on the last hidden state of the last token of
prompt + completion, and L = -log sigmoid(r_phi(x, y_c) - r_phi(x, y_r)) (docs/equations.md, eq. 20).
Options: a per-pair margin m (Touvron et al. 2023, Llama 2) and the centring term
c * (r_c + r_r)^2 (Eisenstein et al. 2023), both through ``core.bradley_terry_loss``.

One step reads top to bottom: a minibatch of pairs -> chosen and rejected sequences in one forward ->
Bradley-Terry loss -> AdamW step. Held-out pairwise accuracy is measured at the start, every
``eval_every`` steps and at the end.

Deliberate choices:

- The sequence the head reads is prompt + completion + EOS, exactly what PPO's sampler produces for a
  finished completion, so the reward model scores at the token where PPO reads it.
- The head starts from N(0, 1/(H+1)) (lm.heads); no reward normalisation after training (Ziegler et al.
  normalise to mean 0 and std 1 over the SFT policy's samples; the KL controller and advantage whitening of
  PPO make it unnecessary here, and ``center_coef`` keeps the scale anchored when wanted).
- With ``lora_r > 0`` only a LoRA adapter of the backbone and the head are trained; the saved model is the
  merged one (loadable like any other), and the adapter is saved beside it (``model/lora``) so that PPO can
  share the SFT weights between policy, reference and reward model.
- Data parallel (``torchrun --nproc-per-node N``): every rank draws the same global batch of pairs and
  trains on its share; the mean over pairs divides by the global number of pairs
  (``run.distributed.loss_divisor``), so the update does not depend on the number of processes. The
  held-out evaluation is sharded and gathered; rank 0 alone writes the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradascent.algos.rlhf_data import PreferencePair, encode_sequences, preference_data
from gradascent.core import bradley_terry_loss
from gradascent.errors import ConfigError, DataError
from gradascent.run import distributed
from gradascent.run.checkpoint import capture_rng, check_data_fingerprint, data_fingerprint, latest_checkpoint
from gradascent.run.checkpoint import load_checkpoint, restore_rng, restoring, save_checkpoint
from gradascent.run.command import finish
from gradascent.run.config import add_config_flags, check_config, check_fields, flag_values, load_config, require
from gradascent.run.guard import NonFiniteGuard, StopOnSignal
from gradascent.run.optim import adamw
from gradascent.run.progress import progress_bar
from gradascent.run.rundir import RunDir, check_resume, require_path


@dataclass(frozen=True)
class RewardModelConfig:
    model: str = ""
    """The SFT model directory the reward model starts from (its backbone; the head is new). Required."""
    data: str = "preference"
    """Preference pairs: a built-in task name ('preference'), or a JSONL file of
    {"prompt", "chosen", "rejected"} rows (optional numeric "margin")."""
    out: str = "runs/rm"
    """Run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/ and model/."""
    seed: int = 0
    """Seed of the pair order (and of the built-in task's pairs)."""
    device: str = "cpu"
    """Torch device, e.g. 'cpu' or 'cuda'."""
    train_pairs: int = 4000
    """Training pairs drawn from the built-in task (a JSONL file uses all its rows but the held-out ones)."""
    eval_pairs: int = 256
    """Held-out pairs of the built-in task for the pairwise accuracy."""
    eval_fraction: float = 0.1
    """Share of a JSONL file's pairs held out for the pairwise accuracy (a seeded split)."""
    epochs: int = 1
    """Passes over the training pairs (Ouyang et al. 2022: 1; more overfits)."""
    batch_size: int = 32
    """Pairs per gradient step over all processes (InstructGPT: 64 prompts of K=4..9 completions)."""
    lr: float = 1e-3
    """AdamW learning rate (Ouyang et al.: 9e-6 for 6B; tiny models from scratch take larger ones)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Gradient norm clip; 0 or null: no clipping."""
    use_margin: bool = False
    """Use each pair's 'margin' as m in -log sigmoid(r_c - r_r - m) (Llama 2); pairs without one get 0."""
    center_coef: float = 0.0
    """Weight c of the centring term c * (r_c + r_r)^2 (Eisenstein et al. 2023: 0.01); 0: off."""
    max_length: int = 256
    """The most tokens of prompt + completion + EOS; a longer pair is an error, never truncated."""
    lora_r: int = 0
    """LoRA rank of the backbone's adapter (Hu et al. 2021); 0: the whole backbone is trained. Needs peft."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (update = alpha / r * B A)."""
    eval_every: int = 0
    """Steps between held-out evaluations (besides start and end); 0: start and end only."""
    log_every: int = 10
    """Steps between rows of metrics.jsonl."""
    save_every: int = 0
    """Steps between checkpoints (and one at the end); 0: only at the end."""
    keep_last: int = 2
    """How many of the newest checkpoints to keep."""
    max_nonfinite: int = 5
    """Consecutive non-finite losses or gradients tolerated (each skips its step) before the run stops."""
    resume: bool = False
    """Continue the run in `out` from its newest checkpoint (same config). Without it, an `out` that already
    holds a run is an error."""
    progress: bool | None = None
    """Show a progress bar (None: only on a terminal)."""

    def __post_init__(self) -> None:
        check_fields(self)
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32)")
        require(self.train_pairs >= 1, "train_pairs", self.train_pairs, "an int >= 1")
        require(self.eval_pairs >= 1, "eval_pairs", self.eval_pairs, "an int >= 1")
        require(0 < self.eval_fraction < 1, "eval_fraction", self.eval_fraction, "a float in (0, 1)")
        require(self.epochs >= 1, "epochs", self.epochs, "an int >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
        require(self.lr > 0, "lr", self.lr, "a float > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a float >= 0")
        require(self.max_grad_norm is None or self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm,
                "a float >= 0 (0: no clipping) or null")
        require(self.center_coef >= 0, "center_coef", self.center_coef, "a float >= 0")
        require(self.max_length >= 2, "max_length", self.max_length, "an int >= 2")
        require(self.lora_r >= 0, "lora_r", self.lora_r, "an int >= 0")
        require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "a float > 0")
        require(self.eval_every >= 0, "eval_every", self.eval_every, "an int >= 0")
        require(self.log_every >= 1, "log_every", self.log_every, "an int >= 1")
        require(self.save_every >= 0, "save_every", self.save_every, "an int >= 0")
        require(self.keep_last >= 1, "keep_last", self.keep_last, "an int >= 1")
        require(self.max_nonfinite >= 1, "max_nonfinite", self.max_nonfinite, "an int >= 1")


RESUMABLE_CHANGES = frozenset({"out", "log_every", "save_every", "keep_last", "resume", "eval_every", "progress"})


def pair_batch(tokenizer: Any, pairs: list[PreferencePair], max_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows, one padded batch. Shapes: -> ids, mask (2B, L)."""
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    where = [f"{p.where} (chosen)" for p in pairs] + [f"{p.where} (rejected)" for p in pairs]
    ids, mask = encode_sequences(tokenizer, prompts, completions, add_eos=True, max_length=max_length, where=where)
    return ids.to(device), mask.to(device)


def check_lengths(tokenizer: Any, pairs: list[PreferencePair], max_length: int) -> None:
    """A DataError naming the first pair whose prompt plus chosen or rejected completion exceeds ``max_length``,
    or whose two completions encode to the same tokens (what tells them apart is text the tokenizer can only
    read as its unknown token: no preference is left); a warning for pairs that hold such text."""
    from gradascent.lm.tokenizers import warn_unknown

    for k in range(0, len(pairs), 256):
        chunk = pairs[k:k + 256]
        ids, mask = pair_batch(tokenizer, chunk, max_length, torch.device("cpu"))
        n = len(chunk)
        for i, p in enumerate(chunk):
            if torch.equal(ids[i][mask[i]], ids[n + i][mask[n + i]]):
                raise DataError(f"{p.where}: chosen {p.chosen!r:.40} and rejected {p.rejected!r:.40} encode to the "
                                f"same tokens (the tokenizer reads what differs as {tokenizer.unk_token}); the "
                                "pair expresses no preference")
    texts = [p.prompt + c for p in pairs for c in (p.chosen, p.rejected)]
    names = [f"{p.where} ({which})" for p in pairs for which in ("chosen", "rejected")]
    warn_unknown(tokenizer, texts, names, "reward model pairs")


def pair_rewards(model: nn.Module, tokenizer: Any, pairs: list[PreferencePair], max_length: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (B,)."""
    ids, mask = pair_batch(tokenizer, pairs, max_length, device)
    r = model(ids, mask)  # (2B,)
    return r[:len(pairs)], r[len(pairs):]


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer: Any, pairs: list[PreferencePair], cfg: RewardModelConfig) -> dict[str, float]:
    """Held-out pairwise accuracy (fraction with r_chosen > r_rejected), loss and mean margin. Under data
    parallelism each rank scores its share of the pairs and every rank gathers all the rewards."""
    info = distributed.info()
    rows, weight = distributed.local_rows(len(pairs), info.rank, info.world_size)
    mine = pairs[rows] if weight else []
    was_training = model.training
    model.eval()
    scored: list[tuple[torch.Tensor, torch.Tensor]] = []  # (r_chosen, r_rejected) of each chunk, on the CPU
    for k in range(0, len(mine), 64):
        c, r = pair_rewards(model, tokenizer, mine[k:k + 64], cfg.max_length, next(model.parameters()).device)
        scored.append((c.cpu(), r.cpu()))
    model.train(was_training)
    scored = distributed.gather_list(scored)
    rc, rr = [c for c, _ in scored], [r for _, r in scored]
    loss, stats = bradley_terry_loss(torch.cat(rc), torch.cat(rr))
    return {"eval_accuracy": float(stats["accuracy"]), "eval_loss": float(loss), "eval_margin": float(stats["margin"]),
            "eval_reward_mean": float(torch.cat(rc + rr).mean())}


def _order(n: int, epoch: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def train_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    """Train a reward model as configured; returns the summary (also written to ``out/summary.json``).

    The model is saved to ``out/model`` (``lm.RewardModel.from_pretrained`` loads it).
    """
    from gradascent.lm import adapters
    from gradascent.lm.heads import RewardModel

    check_config(cfg, RewardModelConfig, "train_reward_model")
    if not cfg.model:
        raise ConfigError("config key 'model' is empty: give the SFT model directory the reward model starts from")
    require_path(cfg.out, "run directory")  # an out that cannot be a directory stops the run before any loading
    t_start = time.perf_counter()
    dist_info = distributed.init(cfg.device)
    torch.manual_seed(cfg.seed)
    device = distributed.process_device(cfg.device)

    train, held_out = preference_data(cfg.data, cfg.train_pairs, cfg.eval_pairs, cfg.seed, cfg.eval_fraction)
    model, tok = RewardModel.from_pretrained(cfg.model, new_head=True, device=device)
    lora = None
    if cfg.lora_r > 0:
        fingerprint = adapters.base_fingerprint(model.backbone)
        lora = adapters.add_lora(model.backbone, "reward", cfg.lora_r, cfg.lora_alpha)
    model.freeze_lm_head()  # never used by the reward (and DDP wants every trained weight used)
    context = getattr(model.backbone.config, "max_position_embeddings", None)
    if context is not None and cfg.max_length > context:  # longer pairs would index past its positions
        raise ConfigError(f"max_length={cfg.max_length} is more than the context of the model {cfg.model} "
                          f"({context} tokens, its max_position_embeddings); set max_length <= {context}")
    check_lengths(tok, train + held_out, cfg.max_length)
    data_fp = data_fingerprint([(p.prompt, p.chosen, p.rejected, p.margin) for p in train])
    # the run directory is made only once the data and the model have loaded and the pairs fit
    run = RunDir(cfg.out, dirs=("model",)) if dist_info.is_main else None
    resume_from = latest_checkpoint(Path(cfg.out) / "checkpoints") if cfg.resume else None
    if run is not None:
        check_resume(run, cfg, resume_from is not None, cfg.resume, RESUMABLE_CHANGES)
        run.write_config(cfg)
    model.train()
    scorer: nn.Module = model  # the training forward; under DDP, gradients averaged over ranks
    if dist_info.enabled:
        scorer = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    guard = NonFiniteGuard(cfg.max_nonfinite)
    start = 0
    first_eval: dict[str, float] = {}
    window: dict[str, float] = {}  # metric sums since the last metrics row
    n_window = 0
    if resume_from is not None:
        with restoring(resume_from):
            _, state = load_checkpoint(resume_from)
            check_data_fingerprint(state, data_fp, f"the training pairs of {cfg.data}", resume_from)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            restore_rng(state["rng"])
            guard.load_state_dict(state["guard"])
            start, first_eval = int(state["step"]), dict(state["first_eval"])
            window, n_window = dict(state["window"]), int(state["n_window"])
        if run is not None:
            run.truncate_metrics(start)
    else:
        if run is not None:
            run.clear_metrics()
        first_eval = evaluate(model, tok, held_out, cfg)
        if run is not None:
            run.log(0, {"pairs": 0, **first_eval})

    def checkpoint(step: int) -> None:
        if run is None:  # rank 0 writes; the state is the same on every rank
            return
        save_checkpoint(run.checkpoints, step, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": capture_rng(),
            "guard": guard.state_dict(), "step": step, "first_eval": first_eval, "window": window,
            "n_window": n_window, "data_fingerprint": data_fp,
        }, keep_last=cfg.keep_last)

    # Resumed from the final checkpoint (killed while saving the model): measure the trained model again.
    last_eval = evaluate(model, tok, held_out, cfg) if start >= total else first_eval
    bar = progress_bar(total, "rm", enabled=cfg.progress if dist_info.is_main else False)
    bar.update(start)
    with StopOnSignal() as stop:
        for step in range(start, total):
            t0 = time.perf_counter()
            epoch, k = divmod(step, steps_per_epoch)
            order = _order(len(train), epoch, cfg.seed)
            batch = [train[i] for i in order[k * cfg.batch_size:(k + 1) * cfg.batch_size]]  # the global batch
            rows, weight = distributed.local_rows(len(batch), dist_info.rank, dist_info.world_size)
            batch = batch[rows]  # this rank's pairs
            r_chosen, r_rejected = pair_rewards(scorer, tok, batch, cfg.max_length, device)
            margin = torch.tensor([p.margin or 0.0 for p in batch], device=device) if cfg.use_margin else None
            loss, stats = bradley_terry_loss(r_chosen, r_rejected, margin, cfg.center_coef)  # (20)
            if dist_info.enabled:  # the mean over this rank's pairs -> their sum over (global pairs / world size)
                n = weight * len(batch)
                loss = weight * loss * (len(batch) / distributed.loss_divisor(n))
                totals = distributed.global_count(torch.stack([v.double() * n for v in stats.values()] + [
                    torch.tensor(n, dtype=torch.float64, device=device)]))  # one all-reduce
                stats = {key: totals[i] / totals[-1] for i, key in enumerate(stats)}  # means over all pairs
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if guard.check(loss, params, where=f"step {step + 1}"):
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
                optimizer.step()
            else:
                optimizer.zero_grad(set_to_none=True)
            for key, v in stats.items():
                window[key] = window.get(key, 0.0) + float(v)
            n_window += 1
            done = step + 1
            bar.update(1)
            row: dict[str, Any] = {}
            if done == total or (cfg.eval_every and done % cfg.eval_every == 0):
                last_eval = evaluate(model, tok, held_out, cfg)
                row.update(last_eval)
            if done % cfg.log_every == 0 or done == total or row:
                row = {"pairs": min(done * cfg.batch_size, cfg.epochs * len(train)),
                       **{k: v / n_window for k, v in window.items()}, **row,
                       "skipped_updates": guard.skipped, "wall_s": time.perf_counter() - t0}
                if run is not None:
                    run.log(done, row)
                window, n_window = {}, 0
            if (cfg.save_every and done % cfg.save_every == 0) or done == total:
                checkpoint(done)
            if distributed.any_rank(stop.requested is not None) and done < total:  # agreed on by every rank
                checkpoint(done)
                bar.close()
                if run is not None:
                    run.close()
                by = stop.requested or "a signal to another process"
                return {"stopped": f"stopped by {by} after step {done}; continue with --resume (or gradascent "
                                   f"resume {cfg.out})", "stopped_by": by, "steps_done": done}
    bar.close()

    out_dir = Path(cfg.out) / "model"
    if run is not None and lora is not None:
        merged = RewardModel(adapters.merged_copy(lora, "reward"), model.head)
        merged.save_pretrained(out_dir, tok)
        adapters.save_adapter(lora, "reward", out_dir, fingerprint)
    elif run is not None:
        model.save_pretrained(out_dir, tok)
    summary = {
        "rm_accuracy": last_eval["eval_accuracy"], "rm_accuracy_initial": first_eval["eval_accuracy"],
        "eval_loss": last_eval["eval_loss"], "eval_margin": last_eval["eval_margin"], "steps": total,
        "train_pairs": len(train), "eval_pairs": len(held_out), "skipped_updates": guard.skipped,
        "model_dir": str(out_dir), "wall_s": time.perf_counter() - t_start,
    }
    if run is not None:
        run.write_summary(summary)
        run.close()
    distributed.barrier()
    return summary


# --- command line --------------------------------------------------------------------------------------


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("rm", parents=[common], help="train a reward model on preference pairs",
                       description="Train a scalar reward model on preference pairs with the Bradley-Terry loss, "
                                   "starting from the SFT model. Writes the run directory and out/model.")
    p.add_argument("--config", metavar="FILE.yaml", default=None, help="YAML file of RewardModelConfig fields")
    add_config_flags(p, RewardModelConfig)
    p.set_defaults(func=_cmd)


def train(cfg: RewardModelConfig, resume: bool = False) -> dict[str, Any]:
    """The trainer as `gradascent resume` calls it: ``train_reward_model`` with ``resume`` forced on if asked."""
    return train_reward_model(dataclasses.replace(cfg, resume=True) if resume else cfg)


def _cmd(args: argparse.Namespace) -> int:
    cfg = load_config(RewardModelConfig, args.config, flag_overrides=flag_values(args))
    return finish("rm", train_reward_model(cfg), lambda s: f"rm: held-out pairwise accuracy {s['rm_accuracy']:.3f} "
                  f"(start {s['rm_accuracy_initial']:.3f}); model in {s['model_dir']}")
