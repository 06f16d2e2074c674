"""`gradascent demo`: a model that learns arithmetic from scratch by SFT, then gets better at it by GRPO.

1. The built-in arithmetic task (``tasks.arithmetic_task``) with the difficulty below, written to JSONL.
2. SFT (``algos.sft``) of a randomly initialised preset, long enough to learn the answer format and part of
   the arithmetic: a modest held-out accuracy.
3. The held-out exact-match accuracy of greedy answers, before and after:
4. GRPO (``algos.grpo``) from the SFT model on the exact-match reward (plus a small format reward).

Writes ``out/`` with ``data/``, the run directories ``sft/`` and ``grpo/`` (each with its model/), plots of
both in ``plots/``, and ``summary.json`` holding ``accuracy_before`` and ``accuracy_after`` (fractions).
The settings are those of ``bench/grpo_learning.py``, which measures the gain over several seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gradascent.algos.grpo import GRPOConfig, evaluate, train_grpo
from gradascent.algos.sft import SFTConfig, train_sft
from gradascent.errors import ConfigError
from gradascent.lm import load_model
from gradascent.run.plot import plot_runs
from gradascent.run.rundir import RunDir
from gradascent.tasks import Task, arithmetic_task, exact_match


@dataclass(frozen=True)
class DemoSettings:
    """The demo's recipe; ``bench/grpo_learning.py`` runs the same one over seeds."""

    model: str = "qwen2-1m"
    """Preset trained from scratch (about 1 M parameters)."""
    max_operand: int = 99
    """Operands are drawn from [0, max_operand]."""
    ops: str = "+"
    """Operators of the task."""
    n_train: int = 4000
    """Training problems."""
    n_eval: int = 200
    """Held-out problems, never a training prompt; accuracy is measured on them."""
    sft_steps: int = 400
    """SFT steps: enough for the format and part of the arithmetic."""
    sft_batch_size: int = 64
    """SFT examples per step."""
    sft_lr: float = 2e-3
    """SFT peak learning rate (cosine decay to 10%)."""
    grpo: GRPOConfig = GRPOConfig(steps=150, prompts_per_step=16, group_size=8, lr=3e-4, temperature=1.0,
                                  loss_agg="token_mean", beta=0.0, save_every=50, eval_every=50, eval_prompts=200)
    """The GRPO run (its model, task, rewards and budget are filled in by the demo)."""


def arithmetic(settings: DemoSettings, seed: int) -> Task:
    """The demo's arithmetic task: exact match (1.0) and a bare-number format reward (0.1)."""
    return arithmetic_task(n_train=settings.n_train, n_eval=settings.n_eval, seed=seed,
                           max_operand=settings.max_operand, ops=settings.ops)


def accuracy(model: Any, tokenizer: Any, task: Task) -> float:
    """Held-out exact-match accuracy of greedy answers, a fraction in [0, 1]."""
    return evaluate(model, tokenizer, task.eval, [exact_match], task.max_new_tokens)["eval/exact_match"]


def run_demo(out: str | Path = "runs/demo", seed: int = 0, settings: DemoSettings | None = None,
             progress: bool | None = None, verbose: bool = True) -> dict[str, Any]:
    """SFT then GRPO on arithmetic; prints and returns the summary (``accuracy_before``, ``accuracy_after``)."""
    settings = settings or DemoSettings()
    out = Path(out)
    if (out / "summary.json").exists() or (out / "sft" / "metrics.jsonl").exists():
        raise ConfigError(f"{out} already holds a demo run; remove it or choose another --out")
    say = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    task = arithmetic(settings, seed)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", task.train), ("eval", task.eval)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    say(f"task: {len(task.train)} training and {len(task.eval)} held-out problems like "
        f"{task.train[0]['prompt']}{task.train[0]['answer']}")

    # ---- SFT from scratch: the format and part of the arithmetic
    say(f"SFT of a random {settings.model} for {settings.sft_steps} steps ...", flush=True)
    sft = SFTConfig(model=settings.model, task=str(data / "train.jsonl"), eval_file=str(data / "eval.jsonl"),
                    out=str(out / "sft"), seed=seed, steps=settings.sft_steps, batch_size=settings.sft_batch_size,
                    lr=settings.sft_lr, warmup_steps=20, eval_every=0, eval_generate=0, save_every=0,
                    log_every=20, progress=progress)
    train_sft(sft)
    t_sft = time.perf_counter() - t0
    model, tokenizer = load_model(out / "sft" / "model")
    before = accuracy(model, tokenizer, task)
    say(f"held-out accuracy after SFT (greedy): {before:.1%}  [{t_sft:.0f} s]", flush=True)

    # ---- GRPO from the SFT model on the exact-match reward
    cfg = replace(settings.grpo, model=str(out / "sft" / "model"), seed=seed)
    say(f"GRPO for {cfg.steps} steps of {cfg.prompts_per_step} prompts x {cfg.group_size} completions ...", flush=True)
    torch.manual_seed(seed)
    train_grpo(cfg, out / "grpo", model=model, tokenizer=tokenizer, task=task, progress=progress)
    after = accuracy(model, tokenizer, task)
    elapsed = time.perf_counter() - t0
    say(f"held-out accuracy after GRPO (greedy): {after:.1%}  ({after - before:+.1%})  [{elapsed:.0f} s in all]")

    plots = plot_runs([out / "sft", out / "grpo"], out / "plots")
    summary = {"accuracy_before": before, "accuracy_after": after, "gain": after - before, "seed": seed,
               "model": settings.model, "sft_steps": settings.sft_steps, "grpo_steps": cfg.steps,
               "eval_problems": len(task.eval), "sft_seconds": t_sft, "total_seconds": elapsed}
    RunDir(out, tensorboard=False).write_summary(summary)
    say(f"run directory: {out} (summary.json, sft/, grpo/, plots/{plots[-1].name})")
    return summary


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="SFT then GRPO on arithmetic, from scratch, in minutes",
                       description="Train a small model from scratch on the built-in arithmetic task: SFT to a "
                                   "modest accuracy, then GRPO on the exact-match reward; prints the held-out "
                                   "accuracy before and after and writes the run directory with plots.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory [default: runs/demo]")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the sampling [default: 0]")
    p.set_defaults(func=lambda args: run_demo(args.out, args.seed) and 0)
