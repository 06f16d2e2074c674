"""`gradascent demo`: a model that learns arithmetic from scratch by SFT, then gets better at it by GRPO.

1. The built-in arithmetic task (``tasks.arithmetic_task``) at the difficulty below: SFT demonstrations
   drawn from the problem space, and held-out test and validation problems that no phase trains on.
2. SFT (``algos.sft``, with weight decay) of a randomly initialised preset, validated every few steps and
   stopped (``stop_at``) at the first validation whose greedy accuracy on the validation problems reaches a
   modest target: the model has learned the answer format and part of the arithmetic (its errors are mostly
   one off in the last digit). The step differs from seed to seed, since the accuracy of these models rises
   steeply once it starts to rise.
3. GRPO (``algos.grpo``) from the SFT model on the exact-match reward (plus a small format reward), its
   prompts drawn from every problem of the space except the held-out ones. No answer is ever shown to the
   model in this phase: it only learns which of its own answers were right.
4. The held-out exact-match accuracy of greedy answers, before and after GRPO.

Writes ``out/`` with ``demo.json`` (seed and settings), ``data/``, the run directories ``sft/`` and ``grpo/``
(each with its model/), plots of both in ``plots/``, and ``summary.json`` holding ``accuracy_before`` and
``accuracy_after`` (fractions), ``sft_seconds``, ``grpo_seconds`` and ``total_seconds``. A demo stopped by a
signal (Ctrl-C, SIGTERM) continues where it stopped when it is run again with the same ``out`` and seed (or
with ``gradascent resume OUT``): each phase resumes from its checkpoint, a finished phase is not run again,
and the seconds are summed over the runs (kept in ``timing.json``; a process killed without a signal leaves
its share out).
The settings are those of ``bench/grpo_learning.py``, which measures the gain over several seeds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gradascent.algos.grpo import GRPOConfig, evaluate, train_grpo
from gradascent.algos.sft import SFTConfig, train_sft
from gradascent.errors import ConfigError
from gradascent.lm import load_model
from gradascent.run import distributed
from gradascent.run.command import stop_message, stop_status
from gradascent.run.config import bool_flag, to_dict
from gradascent.run.plot import plot_runs
from gradascent.run.rundir import RunDir, make_dir, require_path
from gradascent.tasks import Task, arithmetic_task, exact_match
from gradascent.tasks.arithmetic import solve


@dataclass(frozen=True)
class DemoSettings:
    """The demo's recipe; ``bench/grpo_learning.py`` runs the same one over seeds."""

    model: str = "qwen2-1m"
    """Preset trained from scratch (about 1 M parameters)."""
    max_operand: int = 49
    """Operands are drawn from [0, max_operand]: 2,500 problems."""
    ops: str = "+"
    """Operators of the task."""
    n_train: int | None = None
    """SFT demonstrations: distinct problems outside test and validation; None: all of them (2,100)."""
    n_eval: int = 200
    """Held-out test problems: accuracy before and after GRPO is measured on them, nothing trains on them."""
    n_val: int = 200
    """Validation problems, disjoint from the test problems: they decide when SFT stops."""
    sft_target: float = 0.40
    """SFT stops at the first validation whose greedy accuracy reaches this; GRPO starts from that model."""
    sft_every: int = 10
    """SFT steps between two validations."""
    sft_steps: int = 1200
    """Most SFT steps (the cosine schedule spans them); if the target is never reached, the last model is taken."""
    sft_batch_size: int = 64
    """SFT examples per step."""
    sft_lr: float = 2e-3
    """SFT peak learning rate (20 warm-up steps, cosine decay to 10%)."""
    sft_weight_decay: float = 1.0
    """SFT AdamW weight decay: with it the models generalise after fewer passes over the demonstrations
    (without it some seeds reach the target only after 25-30 passes, and GRPO gains little from them)."""
    grpo: GRPOConfig = GRPOConfig(steps=500, prompts_per_step=128, group_size=8, lr=3e-4, temperature=1.0,
                                  loss_agg="token_mean", beta=0.0, save_every=100, eval_every=50, eval_prompts=200)
    """The GRPO run (its model, task, rewards and budget are filled in by the demo)."""


def arithmetic(settings: DemoSettings, seed: int) -> tuple[Task, Task, list[dict[str, Any]]]:
    """(SFT task, GRPO task, validation rows). Every problem of the space, shuffled by ``seed``: the first
    ``n_eval`` are the test problems (both tasks' eval rows), the next ``n_val`` the validation problems, and
    the rest are SFT's demonstrations (each once; the first ``n_train`` if set) and GRPO's prompts. Rewards:
    exact match (1.0) and a bare number (0.1)."""
    space = [{"prompt": f"{a}{op}{b}=", "answer": str(solve(a, op, b))}
             for a in range(settings.max_operand + 1) for op in settings.ops for b in range(settings.max_operand + 1)]
    random.Random(seed).shuffle(space)
    held = settings.n_eval + settings.n_val
    if len(space) <= held:
        raise ConfigError(f"n_eval + n_val = {held} leaves no training problems among the {len(space)} of the space")
    test, val, pool = space[:settings.n_eval], space[settings.n_eval:held], space[held:]
    base = arithmetic_task(n_train=1, n_eval=1, seed=seed, max_operand=settings.max_operand, ops=settings.ops)
    demos = pool if settings.n_train is None else pool[:settings.n_train]
    return replace(base, train=demos, eval=test), replace(base, train=pool, eval=test), val


def accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int) -> float:
    """Exact-match accuracy of greedy answers to ``rows``, a fraction in [0, 1]."""
    return evaluate(model, tokenizer, rows, [exact_match], max_new_tokens)["eval/exact_match"]


def plot_accuracy(out: Path, sft_step: int, before: float) -> Path:
    """plots/accuracy.png: SFT validation accuracy by SFT step, then held-out test accuracy by GRPO step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = [(r["step"], r["eval/reward/exact_match"]) for r in RunDir(out / "sft", tensorboard=False).read_metrics()
           if "eval/reward/exact_match" in r and r["step"] <= sft_step]
    grpo = [(sft_step, before)] + [(sft_step + r["step"], r["eval/exact_match"])
                                   for r in RunDir(out / "grpo", tensorboard=False).read_metrics()
                                   if "eval/exact_match" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*sft), marker=".", label="SFT (validation problems)")
    ax.plot(*zip(*grpo), marker=".", label="GRPO (held-out test problems)")
    ax.set_xlabel("SFT steps, then GRPO steps")
    ax.set_ylabel("greedy exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "plots" / "accuracy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _start_or_continue(out: Path, seed: int, settings: DemoSettings) -> bool:
    """Write ``out/demo.json`` for a new demo, or check that the demo already in ``out`` is this one (same seed
    and settings) and has not finished; returns True when continuing one."""
    record = {"seed": seed, "settings": to_dict(settings)}
    marker = out / "demo.json"
    if (out / "summary.json").exists() and marker.is_file():  # without demo.json: some other run (below)
        raise ConfigError(f"{out} already holds a finished demo run (summary.json); remove it or choose another "
                          "--out")
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            raise ConfigError(f"{marker} is damaged (not JSON); remove {out} or choose another --out") from None
        if saved != record:
            differ = "seed" if saved.get("seed") != seed else "settings"
            raise ConfigError(f"{out} holds a demo started with other {differ} (seed {saved.get('seed')}); continue "
                              f"it with --seed {saved.get('seed')}, or choose another --out")
        return True
    if out.exists() and not out.is_dir():
        raise ConfigError(f"cannot create demo directory {out}: a file is in the way (a directory is needed)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and holds no demo (no demo.json); remove it or choose another --out")
    make_dir(out, "demo directory")
    marker.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return False


def _add_seconds(out: Path, **seconds: float) -> dict[str, float]:
    """Add this run's seconds (by phase) to those of the earlier runs of the demo in ``out/timing.json``;
    returns the sums."""
    path = out / "timing.json"
    try:
        times = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        times = {}  # damaged: only this run's share is known
    if not isinstance(times, dict):
        times = {}
    for phase, s in seconds.items():
        prior = times.get(phase, 0.0)
        times[phase] = (prior if isinstance(prior, (int, float)) else 0.0) + s
    path.write_text(json.dumps(times, indent=1) + "\n", encoding="utf-8")
    return times


def _stopped(phase: str, run: dict[str, Any], out: Path, seed: int, seconds: dict[str, float]) -> dict[str, Any]:
    """The demo's summary when a phase was stopped by a signal: how it stopped and how to continue."""
    _add_seconds(out, **seconds)
    message = (f"{phase} {stop_message(run)}; its checkpoint is kept; continue with: gradascent demo --out {out} "
               f"--seed {seed} (or gradascent resume {out})")
    return {"stopped_by": run.get("stopped_by"), "stopped": message, "phase": phase, "steps": run.get("steps")}


def run_demo(out: str | Path = "runs/demo", seed: int = 0, settings: DemoSettings | None = None,
             progress: bool | None = None, verbose: bool = True) -> dict[str, Any]:
    """SFT then GRPO on arithmetic; prints and returns the summary (``accuracy_before``, ``accuracy_after``).

    Stopped by a signal, it returns ``{"stopped_by": SIGNAL, "stopped": message, ...}`` and writes no
    summary.json; called again with the same ``out`` and ``seed`` it continues (see the module docstring)."""
    settings = settings or DemoSettings()
    require_path(out, "demo directory")
    out = Path(out)
    distributed.refuse_several_processes("demo")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    continuing = _start_or_continue(out, seed, settings)
    say = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    task, rl_task, val = arithmetic(settings, seed)
    if continuing:
        say(f"continuing the demo in {out}", flush=True)
    data = out / "data"
    make_dir(data, "demo data directory")
    for split, rows in (("train", task.train), ("val", val), ("test", task.eval)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    say(f"task: problems like {task.train[0]['prompt']}{task.train[0]['answer']}; {len(task.train)} SFT "
        f"demonstrations, {len(rl_task.train)} GRPO prompts, {len(task.eval)} held-out test problems")

    # ---- SFT from scratch, stopped at the first validation with a modest accuracy; GRPO starts from there
    say(f"SFT of a random {settings.model}, validated every {settings.sft_every} steps until "
        f"{settings.sft_target:.0%} (at most {settings.sft_steps} steps) ...", flush=True)
    sft = train_sft(SFTConfig(
        model=settings.model, task=str(data / "train.jsonl"), eval_file=str(data / "val.jsonl"), out=str(out / "sft"),
        seed=seed, steps=settings.sft_steps, batch_size=settings.sft_batch_size, lr=settings.sft_lr,
        weight_decay=settings.sft_weight_decay, warmup_steps=20, eval_every=settings.sft_every,
        eval_generate=settings.n_val, save_every=0,
        stop_at=settings.sft_target, stop_metric="eval/reward/exact_match", log_every=settings.sft_every,
        progress=progress, resume=continuing))
    if stop_message(sft) is not None:
        return _stopped("SFT", sft, out, seed, {"sft_seconds": time.perf_counter() - t0,
                                                "total_seconds": time.perf_counter() - t0})
    steps, val_acc = sft["steps"], sft["eval/reward/exact_match"]
    start = Path(sft["model_dir"])  # what GRPO starts from, loadable as is
    model, tokenizer = load_model(start)
    t_sft = time.perf_counter() - t0  # this run's share (only the reloading where SFT had finished before)
    before = accuracy(model, tokenizer, task.eval, task.max_new_tokens)
    say(f"after {steps} SFT steps: validation {val_acc:.1%}, held-out test accuracy (greedy) {before:.1%}  "
        f"[{t_sft:.0f} s{' this run' if continuing else ''}]", flush=True)

    # ---- GRPO from the SFT model on the exact-match reward
    cfg = replace(settings.grpo, model=str(start), seed=seed)
    say(f"GRPO for {cfg.steps} steps of {cfg.prompts_per_step} prompts x {cfg.group_size} completions ...", flush=True)
    t_grpo = time.perf_counter()
    grpo = train_grpo(cfg, out / "grpo", model=model, tokenizer=tokenizer, task=rl_task, progress=progress,
                      resume=continuing)
    if stop_message(grpo) is not None:
        return _stopped("GRPO", grpo, out, seed, {"sft_seconds": t_sft, "grpo_seconds": time.perf_counter() - t_grpo,
                                                  "total_seconds": time.perf_counter() - t0})
    t_grpo = time.perf_counter() - t_grpo
    after = accuracy(model, tokenizer, task.eval, task.max_new_tokens)
    times = _add_seconds(out, sft_seconds=t_sft, grpo_seconds=t_grpo, total_seconds=time.perf_counter() - t0)
    say(f"held-out test accuracy after GRPO (greedy): {after:.1%}  ({100 * (after - before):+.1f} points)  "
        f"[{times['total_seconds']:.0f} s in all{', over the runs of this demo' if continuing else ''}]")

    plots = plot_runs([out / "sft", out / "grpo"], out / "plots")
    plots.append(plot_accuracy(out, steps, before))
    summary = {"accuracy_before": before, "accuracy_after": after, "gain": after - before, "seed": seed,
               "model": settings.model, "sft_steps": steps, "sft_val_accuracy": val_acc, "grpo_steps": cfg.steps,
               "test_problems": len(task.eval), "max_new_tokens": task.max_new_tokens,
               **{k: times.get(k, 0.0) for k in ("sft_seconds", "grpo_seconds", "total_seconds")}}
    RunDir(out, tensorboard=False).write_summary(summary)
    say(f"run directory: {out} (summary.json, plots/, and the runs sft/ and grpo/, each with its model/)")
    say(f"try the model: gradascent generate {out / 'grpo' / 'model'} --prompt {json.dumps(task.eval[0]['prompt'])} "
        f"-n 4\n               gradascent eval {out / 'grpo' / 'model'} --task {data / 'test.jsonl'} "
        f"--max-new-tokens {task.max_new_tokens}")
    return summary


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="SFT then GRPO on arithmetic, from scratch, in minutes",
                       description="Train a small model from scratch on the built-in arithmetic task: SFT to a "
                                   "modest accuracy, then GRPO on the exact-match reward; prints the held-out "
                                   "accuracy before and after and writes the run directory with plots.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory [default: runs/demo]")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the sampling [default: 0]")
    p.add_argument("--progress", nargs="?", const=True, default=None, type=bool_flag, metavar="BOOL",
                   help="show progress bars [default: only on a terminal]")
    p.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    summary = run_demo(args.out, args.seed, progress=args.progress)
    if "stopped" in summary:
        print(f"gradascent demo: {summary['stopped']}", file=sys.stderr)
        return stop_status(summary)
    return 0
