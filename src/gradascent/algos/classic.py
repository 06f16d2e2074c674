"""What the classic-control trainers (REINFORCE, A2C, PPO) share: the base config and the run's bookkeeping.

``ClassicRun`` owns everything that is not the algorithm: environments, policy, optimizer, the run
directory, metrics, periodic evaluation, checkpoints, resume, signals and the non-finite guard. A trainer
builds one, then reads top to bottom: collect -> advantages -> epochs of minibatches -> ``end_update``.

Exact resume. A checkpoint is written at an update boundary and holds the weights, the optimizer, the
counters (the learning-rate schedule is a function of them), the algorithm's own state (PPO-Penalty's
beta), the global RNGs and the collector's state (normalisers, and the environments as "reset seed +
actions since", replayed on load; see rl/rollout.py). The trainers reset the environments with a seed
derived from (seed, update) at every update whose index is a multiple of ``save_every``, in every run,
interrupted or not, so the action log never spans more than ``save_every`` updates. A resumed run is
therefore bit-for-bit the run that never stopped (same machine, same ``torch_threads``).
"""

from __future__ import annotations

import json
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from gradascent.errors import CheckpointError, ConfigError, GradascentError, GradascentWarning, NonFiniteError
from gradascent.rl.envs import ObsNormalizer, RewardScaler, make_vec_env, spaces_of
from gradascent.rl.policy import ActorCritic
from gradascent.rl.rollout import Batch, Collector
from gradascent.rl.saved import META, WEIGHTS, load_policy, run_episodes, save_policy
from gradascent.run.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    restoring,
    save_checkpoint,
    seed_everything,
)
from gradascent.run import distributed
from gradascent.run.config import check_fields, load_config, require, to_dict
from gradascent.run.guard import StopOnSignal
from gradascent.run.progress import progress_bar
from gradascent.run.rundir import RunDir, check_run_kind, require_path

# Metrics that measure the machine, not the run: the only fields allowed to differ between two runs with
# the same seed (and between a resumed run and the one that never stopped).
WALL_CLOCK_METRICS = ("sps", "wall_seconds", "eval_seconds")


@dataclass(frozen=True)
class ClassicConfig:
    """Fields shared by every classic-control trainer; each algorithm's config extends it."""

    env: str = "CartPole-v1"
    """Gymnasium environment id (or `module:EnvId`): a 1-D Box observation, a Discrete or bounded 1-D Box action."""
    total_steps: int = 100_000
    """Budget of environment steps, all copies together; the run stops at the first update boundary at or
    past it."""
    seed: int = 1
    """Seeds torch, numpy, python and the environments: same seed, same run on the same machine."""
    num_envs: int = 4
    """Copies of the environment stepped together (B)."""
    lr: float = 2.5e-4
    """Learning rate. 2.5e-4 (CleanRL PPO), 7e-4 (A2C, Mnih et al. 2016 / SB3)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over total_steps (PPO paper, Atari; CleanRL)."""
    optimizer: Literal["adam", "rmsprop"] = "adam"
    """Adam, or RMSprop(alpha=0.99) as in A2C (Mnih et al. 2016)."""
    optimizer_eps: float = 1e-5
    """Epsilon of Adam/RMSprop: 1e-5 as in the baselines implementations, rather than torch's 1e-8."""
    max_grad_norm: float | None = 0.5
    """Clip the global gradient norm to this (0.5 in baselines/CleanRL); 0 or null: no clipping."""
    gamma: float = 0.99
    """Discount factor in [0, 1]."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (eq. 14); 0.01 in CleanRL PPO."""
    vf_coef: float = 0.5
    """Weight of the value loss (eq. 13) in the total loss."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor's and the critic's MLPs."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden activation; tanh is the classic-control standard (Andrychowicz et al. 2021)."""
    shared_network: bool = False
    """One trunk with a policy head and a value head, instead of separate actor and critic networks."""
    ortho_init: bool = True
    """Orthogonal initialisation: gain sqrt(2) hidden, 0.01 policy head, 1 value head; zero biases."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions); state-independent."""
    normalize_obs: bool = False
    """Standardise observations with running statistics (saved with the policy) and clip them."""
    normalize_reward: bool = False
    """Divide rewards by the running std of the discounted return (SB3 VecNormalize) and clip them."""
    norm_clip: float = 10.0
    """Clip range of normalised observations and rewards."""
    eval_every: int = 0
    """Deterministic evaluation every this many updates, logged in metrics.jsonl as eval_return_*; the final
    evaluation, which always runs, goes to summary.json (0: only that one)."""
    eval_episodes: int = 10
    """Episodes of each deterministic evaluation, played in parallel."""
    stop_at_return: float | None = None
    """Stop as soon as a periodic evaluation's mean return reaches this (needs eval_every > 0)."""
    save_every: int = 50
    """Checkpoint every this many updates. The environments are also reseeded from (seed, update) there,
    which makes a resumed run identical to an uninterrupted one; keep the steps per copy between two
    reseeds (save_every * num_steps) well above the episode length."""
    keep_last: int = 2
    """Checkpoints kept on disk (the newest ones)."""
    max_nonfinite: int = 5
    """Abort after this many consecutive optimizer steps skipped for a non-finite loss or gradient."""
    torch_threads: int = 1
    """torch.set_num_threads for the run; 1 is fastest for these small MLPs."""
    tensorboard: bool = True
    """Also write the metrics as TensorBoard events under OUT/tb."""

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.total_steps > 0, "total_steps", self.total_steps, "an integer > 0")
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32) (gymnasium's seeds)")
        require(self.num_envs >= 1, "num_envs", self.num_envs, "an integer >= 1")
        require(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite float > 0")
        require(self.optimizer_eps > 0, "optimizer_eps", self.optimizer_eps, "a float > 0")
        require(self.max_grad_norm is None or self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm,
                "a float >= 0 (0: no clipping) or null")
        require(0.0 <= self.gamma <= 1.0, "gamma", self.gamma, "in [0, 1]")
        require(self.ent_coef >= 0, "ent_coef", self.ent_coef, "a float >= 0")
        require(self.vf_coef >= 0, "vf_coef", self.vf_coef, "a float >= 0")
        require(len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes), "hidden_sizes",
                self.hidden_sizes, "a non-empty list of integers >= 1")
        require(self.norm_clip > 0, "norm_clip", self.norm_clip, "a float > 0")
        require(-20.0 <= self.init_log_std <= 5.0, "init_log_std", self.init_log_std,
                "a finite float in [-20, 5] (a starting std of e^-20 to e^5)")
        require(self.eval_every >= 0, "eval_every", self.eval_every, "an integer >= 0")
        require(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "an integer >= 1")
        require(self.stop_at_return is None or math.isfinite(self.stop_at_return), "stop_at_return",
                self.stop_at_return, "a number or null")
        require(self.stop_at_return is None or self.eval_every > 0, "eval_every", self.eval_every,
                "an integer > 0 when stop_at_return is set")
        require(self.save_every >= 1, "save_every", self.save_every, "an integer >= 1")
        require(self.keep_last >= 1, "keep_last", self.keep_last, "an integer >= 1")
        require(self.max_nonfinite >= 1, "max_nonfinite", self.max_nonfinite, "an integer >= 1")
        require(self.torch_threads >= 1, "torch_threads", self.torch_threads, "an integer >= 1")


_RESUMABLE = ("total_steps", "tensorboard")  # config fields a resumed run may change


class TrainingInterrupted(GradascentError):
    """SIGTERM or Ctrl-C: a checkpoint was written and the run stopped; ``--resume`` continues it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def derived_seed(*keys: int) -> int:
    """A 31-bit seed that depends on every key (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1)[0] >> 1)


def mean_stats(rows: list[dict[str, Tensor]]) -> dict[str, float]:
    """Mean of each key over the minibatches that reported it."""
    keys = {k for row in rows for k in row}
    return {k: float(torch.stack([row[k].float() for row in rows if k in row]).mean()) for k in sorted(keys)}


class ClassicRun:
    """One training run: build with the config, use as a context manager, call ``end_update`` after each
    update and ``finish`` at the end."""

    def __init__(self, cfg: ClassicConfig, algo: str, out: str | Path | None = None, *, resume: bool = False,
                 progress: bool | None = None) -> None:
        self.cfg, self.algo = cfg, algo
        if out is not None:
            require_path(out, "run directory")
        distributed.refuse_several_processes(f"rl {algo}")
        self._caller_threads = torch.get_num_threads()  # restored when the run ends (the caller's setting)
        torch.set_num_threads(cfg.torch_threads)
        try:
            self.envs = make_vec_env(cfg.env, cfg.num_envs)
        except BaseException:
            torch.set_num_threads(self._caller_threads)
            raise
        try:
            self._setup(Path(out) if out is not None else Path("runs") / f"{algo}-{cfg.env}-seed{cfg.seed}",
                        resume, progress)
        except BaseException:
            self.envs.close()
            torch.set_num_threads(self._caller_threads)
            raise

    def _setup(self, out: Path, resume: bool, progress: bool | None) -> None:
        cfg, algo = self.cfg, self.algo
        obs_dim, self.action = spaces_of(self.envs, cfg.env, algo)
        self._check_reseed_span()
        self.rundir = self._open_rundir(out, resume)

        seed_everything(cfg.seed)
        self.policy = ActorCritic(obs_dim, self.action, cfg.hidden_sizes, cfg.activation, cfg.shared_network,
                                  cfg.ortho_init, cfg.init_log_std)
        # fused Adam / foreach RMSprop: the same update rule in fewer kernel calls (most of the cost here)
        if cfg.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr,
                                                                     eps=cfg.optimizer_eps, fused=True)
        else:
            self.optimizer = torch.optim.RMSprop(self.policy.parameters(), lr=cfg.lr, alpha=0.99,
                                                 eps=cfg.optimizer_eps, foreach=True)
        self.collector = Collector(self.envs, self.action,
                                   ObsNormalizer(obs_dim, cfg.normalize_obs, cfg.norm_clip),
                                   RewardScaler(cfg.num_envs, cfg.gamma, cfg.normalize_reward, cfg.norm_clip))
        self.eval_seed = derived_seed(cfg.seed, 2)

        self.update = 0  # updates done
        self.env_steps = 0
        self.algo_state: dict[str, Any] = {}  # the algorithm's own state, e.g. PPO-Penalty's kl_coef
        self.reached: dict[str, Any] | None = None  # when stop_at_return was first reached
        self._nonfinite_streak = 0
        self._skipped = 0  # optimizer steps skipped in the current update
        self._wall0, self._eval_seconds = 0.0, 0.0
        self._last_eval: tuple[int, np.ndarray] | None = None
        self._saved_at: int | None = None  # update of the newest checkpoint written or read by this process
        self._finished_summary: dict[str, Any] | None = None  # set by _restore for a run that had finished
        if resume:
            self._restore()
        self.rundir.write_config(cfg)
        self._start = time.perf_counter() - self._wall0
        self._update_start = time.perf_counter()
        self._bar = progress_bar(cfg.total_steps, algo, unit="step", enabled=progress, initial=self.env_steps)
        self._stop = StopOnSignal()  # SIGINT / SIGTERM: checkpoint at the end of the update, then stop

    # --- setup and resume ------------------------------------------------------------------------------

    def _open_rundir(self, out: Path, resume: bool) -> RunDir:
        rundir = RunDir(out, tensorboard=self.cfg.tensorboard, files=(WEIGHTS, META))
        outputs = (rundir.metrics_path, out / "summary.json", out / WEIGHTS, out / META)
        if not resume and (any(p.exists() for p in outputs) or latest_checkpoint(rundir.checkpoints) is not None):
            raise GradascentError(f"run directory {out} already holds a run: pass --resume to continue it, "
                                  f"or choose another --out")
        if resume:  # another trainer's run is named as that, not by the first key its config lacks
            check_run_kind(out, self.cfg)
        if resume and (out / "config.yaml").exists():
            self._refuse_changes(to_dict(load_config(type(self.cfg), out / "config.yaml")), out, "changed")
        return rundir

    def _refuse_changes(self, saved: dict[str, Any], out: Path, how: str) -> None:
        """A ConfigError naming the fields outside ``_RESUMABLE`` in which this config differs from ``saved``."""
        changed = [k for k, v in to_dict(self.cfg).items() if k not in _RESUMABLE and saved.get(k) != v]
        if changed:
            raise ConfigError(f"cannot resume {out} with a different config: {', '.join(changed)} {how} (only "
                              "total_steps and tensorboard may change on resume)")

    def _restore(self) -> None:
        ckpt = latest_checkpoint(self.rundir.checkpoints)
        if ckpt is None:  # killed before its first checkpoint: start over
            self.rundir.clear_metrics()
            return
        with restoring(ckpt):
            step, state = load_checkpoint(ckpt)
            # The checkpoint's own config (since it records one) is the reference: config.yaml may have been
            # edited.
            if state.get("config") is not None:
                self._refuse_changes(state["config"], self.rundir.path, "differ from its checkpoint's")
            # The last rollout may overshoot total_steps: a finished run resumed with its own budget is finished,
            # not refused; a budget lowered below the steps taken is.
            saved_budget = (state.get("config") or {}).get("total_steps")
            if self.cfg.total_steps < int(state["env_steps"]) and self.cfg.total_steps != saved_budget:
                raise ConfigError(f"total_steps={self.cfg.total_steps} is below the {int(state['env_steps'])} env "
                                  f"steps {self.rundir.path} has already taken; a resume can only extend the budget")
            self.collector.load_state_dict(state["collector"])
            self.policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.update, self.env_steps = int(state["update"]), int(state["env_steps"])
            self.algo_state = dict(state["algo_state"])
            self.reached = state["reached"]
            self._nonfinite_streak = int(state["nonfinite_streak"])
            self._wall0, self._eval_seconds = float(state["wall_seconds"]), float(state["eval_seconds"])
            restore_rng(state["rng"])
        self.rundir.truncate_metrics(step)
        self._saved_at = self.update  # the checkpoint just read is this update's
        summary = self.rundir.path / "summary.json"
        if self.done and summary.is_file():  # finished before: finish() hands back its summary as it was
            self._finished_summary = self._intact_outputs(summary)

    def _intact_outputs(self, summary: Path) -> dict[str, Any] | None:
        """A finished run's summary, where it and the saved policy are intact; None (finish() writes both again
        from the final checkpoint, with a warning) where either is damaged or missing."""
        try:
            saved = json.loads(summary.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError(f"it holds a {type(saved).__name__}, not an object")
            load_policy(self.rundir.path)
            return saved
        except (OSError, UnicodeDecodeError, ValueError, CheckpointError) as exc:
            warnings.warn(f"{self.rundir.path} finished, but its outputs are damaged ({exc}); the saved policy "
                          "and summary.json are written again from the final checkpoint", GradascentWarning,
                          stacklevel=2)
            return None

    def save(self) -> Path:
        """Checkpoint at the current update boundary."""
        state = {
            "update": self.update,
            "env_steps": self.env_steps,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "collector": self.collector.state_dict(),
            "algo_state": dict(self.algo_state),
            "reached": self.reached,
            "nonfinite_streak": self._nonfinite_streak,
            "wall_seconds": self.wall_seconds(),
            "eval_seconds": self._eval_seconds,
            "rng": capture_rng(),
            "config": to_dict(self.cfg),
        }
        path = save_checkpoint(self.rundir.checkpoints, self.update, state, keep_last=self.cfg.keep_last)
        self._saved_at = self.update
        return path

    # --- the loop --------------------------------------------------------------------------------------

    def _check_reseed_span(self) -> None:
        """Warn where the environments are reseeded (every save_every updates of num_steps steps a copy) more
        often than an episode at the time limit lasts: episode_return would count only the episodes that end
        sooner, and understate a policy that lasts."""
        num_steps = getattr(self.cfg, "num_steps", None)  # REINFORCE collects whole episodes: never cut
        limit = getattr(getattr(self.envs, "spec", None), "max_episode_steps", None)
        if num_steps is None or not limit or self.cfg.save_every * num_steps >= limit:
            return
        span = self.cfg.save_every * num_steps
        warnings.warn(f"the environments are reseeded every save_every * num_steps = {span} steps a copy, fewer "
                      f"than the {limit} of {self.cfg.env}'s time limit: the logged episode_return counts only "
                      f"episodes shorter than {span} steps; set save_every to {math.ceil(limit / num_steps)} or "
                      "more", GradascentWarning, stacklevel=4)

    def __enter__(self) -> ClassicRun:
        self._stop.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stop.__exit__(*exc)
            self._bar.close()
            self.envs.close()
            self.rundir.close()
        finally:
            torch.set_num_threads(self._caller_threads)

    @property
    def done(self) -> bool:
        """The budget is spent, or the target return was reached."""
        return self.env_steps >= self.cfg.total_steps or self.reached is not None

    def env_seed(self) -> int:
        """Seed for resetting the environments at the current update."""
        return derived_seed(self.cfg.seed, 1, self.update)

    def scheduled_lr(self) -> float:
        """The learning rate of the coming update, written into the optimizer: lr * (1 - env_steps/total)."""
        lr = self.cfg.lr
        if self.cfg.anneal_lr:
            lr *= max(1.0 - self.env_steps / self.cfg.total_steps, 0.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def optimize(self, loss: Tensor) -> Tensor | None:
        """One optimizer step on ``loss`` with gradient clipping; returns the gradient norm.

        A non-finite loss or gradient skips the step (returns None); ``max_nonfinite`` skips in a row abort
        the run with a NonFiniteError.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            return self._skip("loss")
        loss.backward()
        max_norm = self.cfg.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        if not bool(torch.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip("gradient")
        self.optimizer.step()
        self._nonfinite_streak = 0
        return grad_norm.detach()

    def _skip(self, what: str) -> None:
        self._skipped += 1
        self._nonfinite_streak += 1
        if self._nonfinite_streak >= self.cfg.max_nonfinite:
            raise NonFiniteError(
                f"{self._nonfinite_streak} consecutive optimizer steps had a non-finite {what} (update "
                f"{self.update + 1}); the newest checkpoint in {self.rundir.checkpoints} is from before it")
        return None

    def end_update(self, batch: Batch, metrics: dict[str, Any], algo_state: dict[str, Any] | None = None) -> None:
        """Count the update, log its metrics (plus episode statistics, lr, speed), evaluate and checkpoint
        when due; on SIGTERM/Ctrl-C, checkpoint and raise TrainingInterrupted."""
        now = time.perf_counter()
        self.update += 1
        self.env_steps += batch.env_steps
        self.algo_state = dict(algo_state or {})
        row: dict[str, Any] = {
            "env_steps": self.env_steps,
            "episodes": len(batch.episode_returns),
            "episode_return": float(batch.episode_returns.mean()) if len(batch.episode_returns) else None,
            "episode_length": float(batch.episode_lengths.mean()) if len(batch.episode_lengths) else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            **metrics,
            "nonfinite_skipped": self._skipped,
            "sps": batch.env_steps / max(now - self._update_start, 1e-9),
        }
        self._skipped = 0
        if self.cfg.eval_every and self.update % self.cfg.eval_every == 0:
            returns = self.evaluate()
            row["eval_return_mean"], row["eval_return_std"] = float(returns.mean()), float(returns.std())
            if self.cfg.stop_at_return is not None and self.reached is None \
                    and returns.mean() >= self.cfg.stop_at_return:
                self.reached = {"update": self.update, "env_steps": self.env_steps,
                                "wall_seconds": self.wall_seconds(), "train_seconds": self.train_seconds()}
        row["wall_seconds"] = self.wall_seconds()
        row["eval_seconds"] = self._eval_seconds
        self.rundir.log(self.update, row)
        self._bar.update(batch.env_steps)
        if row["episode_return"] is not None:
            self._bar.set_postfix(ret=f"{row['episode_return']:.1f}", sps=f"{row['sps']:.0f}", refresh=False)
        if self._stop.requested is not None:
            path = self.save()
            name = self._stop.requested
            raise TrainingInterrupted(f"stopped by {name} after update {self.update} ({self.env_steps} env "
                                      f"steps); checkpoint written to {path}; continue with: gradascent resume "
                                      f"{self.rundir.path}",
                                      signal.Signals[name].value)
        if self.update % self.cfg.save_every == 0:
            self.save()
        self._update_start = time.perf_counter()

    def evaluate(self) -> np.ndarray:
        """Deterministic returns of ``eval_episodes`` episodes with the current weights (cached per update)."""
        if self._last_eval is None or self._last_eval[0] != self.update:
            t0 = time.perf_counter()
            self.policy.eval()
            returns = run_episodes(self.policy, self.collector.obs_norm, self.cfg.env, self.cfg.eval_episodes,
                                   self.eval_seed)
            self.policy.train()
            self._eval_seconds += time.perf_counter() - t0
            self._last_eval = (self.update, returns)
        return self._last_eval[1]

    def wall_seconds(self) -> float:
        return time.perf_counter() - self._start

    def train_seconds(self) -> float:
        """Wall time minus the time spent in evaluations."""
        return self.wall_seconds() - self._eval_seconds

    def finish(self) -> dict[str, Any]:
        """Final checkpoint, the saved policy, a final evaluation and summary.json; returns the summary. A
        finished run resumed as it was returns its summary.json untouched."""
        if self._finished_summary is not None:
            return self._finished_summary
        if self._saved_at != self.update:
            self.save()
        save_policy(self.rundir.path, self.policy, self.collector.obs_norm, self.cfg.env,
                    extra={"algo": self.algo, "config": to_dict(self.cfg), "eval_seed": self.eval_seed})
        returns = self.evaluate()
        summary = {
            "algo": self.algo,
            "env": self.cfg.env,
            "seed": self.cfg.seed,
            "eval_return_mean": float(returns.mean()),
            "eval_return_std": float(returns.std()),
            "eval_episodes": len(returns),
            "env_steps": self.env_steps,
            "updates": self.update,
            "wall_seconds": self.wall_seconds(),
            "train_seconds": self.train_seconds(),
            "reached": self.reached,
        }
        self.rundir.write_summary(summary)
        return summary

