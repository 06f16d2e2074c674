"""Rollout collection over a vector environment into (B, T) tensors, B = copies, T = steps.

Episode boundaries (docs/equations.md, eq. 1'): ``terminated[b, t]`` means s_{t+1} is terminal;
``truncated[b, t]`` means a time limit cut the episode after step t, and the return is bootstrapped from
V(s_{t+1}) of the final observation. In NEXT_STEP autoreset mode the final observation is the next
observation the copy returns, so ``next_values[b, t] = values[b, t+1]`` inside the rollout and V(last
observation) at t = T-1, with no special case at a truncation. The step after an episode's end is the
copy's reset (action ignored, reward 0): it gets ``mask = False`` and counts in no loss and no statistic.

Exact resume. The environments are reset with a seed only where the trainer says so (``reset``); from then
on they are deterministic functions of the actions sent. The collector logs those actions, and
``state_dict``/``load_state_dict`` rebuild the environments exactly by resetting with the same seed and
replaying the log. This works for any gymnasium environment that honours its seed, including natively
vectorised ones whose internals we cannot reach. The trainers reset at fixed update indices (every
``save_every`` updates), which bounds the log's length.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from gradascent.errors import GradascentWarning, NonFiniteError
from gradascent.rl.envs import ActionSpec, ObsNormalizer, RewardScaler
from gradascent.rl.policy import ActorCritic


@dataclass
class Batch:
    """One rollout. Tensors are (B, T) unless noted; everything is detached.

    obs: (B, T, obs_dim) normalised observations, as the policy saw them.
    actions: (B, T) long, or (B, T, act_dim) float: the unclipped sample.
    logp, values: log pi_old(a_t|s_t) and V(s_t) at collection.
    next_values: V(s_{t+1}) of the true next state (final observation at a truncation).
    rewards: rewards after scaling (RewardScaler), float32.
    terminated, truncated, mask: bool; mask is False on reset transitions (and, in ``collect_episodes``,
        after each copy's first episode).
    dist_params: (B, T, P) parameters of pi_old(.|s_t), see ActorCritic.
    episode_returns, episode_lengths: the unscaled return and length of each episode that ended on a
        counted step of this rollout.
    """

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    next_values: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    mask: Tensor
    dist_params: Tensor
    episode_returns: np.ndarray
    episode_lengths: np.ndarray

    @property
    def env_steps(self) -> int:
        """Transitions simulated, reset transitions included."""
        return int(self.rewards.numel())


class Collector:
    """Steps a vector environment with a policy; holds everything between two rollouts."""

    def __init__(self, envs: gym.vector.VectorEnv, action: ActionSpec, obs_norm: ObsNormalizer,
                 reward_scaler: RewardScaler) -> None:
        self.envs, self.action = envs, action
        self.obs_norm, self.reward_scaler = obs_norm, reward_scaler
        self.num_envs = envs.num_envs
        if action.kind == "box":
            self._low = np.asarray(action.low, np.float32)
            self._high = np.asarray(action.high, np.float32)
        self._seed: int | None = None
        self._log: list[np.ndarray] = []  # actions sent since the last reset, for replay
        self._obs: Tensor | None = None  # (B, obs_dim) normalised current observation
        self._prev_done = np.zeros(self.num_envs, bool)  # this copy's next step is its reset
        self._ep_return = np.zeros(self.num_envs, np.float64)
        self._ep_length = np.zeros(self.num_envs, np.int64)
        spec = getattr(envs, "spec", None)
        self._env_name = repr(spec.id) if spec is not None and getattr(spec, "id", None) else "the environment"

    def _check_finite(self, values: np.ndarray, what: str) -> None:
        """A NonFiniteError naming the environment and the copy, where ``values`` (observations or rewards
        it returned) hold NaN or inf: they would reach the loss and surface only as non-finite updates."""
        bad = ~np.isfinite(np.asarray(values, np.float64))
        if bad.any():
            where = np.argwhere(bad)[0]
            raise NonFiniteError(f"environment {self._env_name} returned a non-finite {what} "
                                 f"({np.asarray(values)[tuple(where)]} in copy {int(where[0])}); its observations "
                                 "and rewards must be finite")

    def reset(self, seed: int) -> None:
        """Reset every copy with ``seed`` (gymnasium's: copy i gets seed + i, or, for an environment with a
        vectorised implementation of its own such as CartPole-v1's, one generator seeded once draws all copies'
        starts) and start a new action log."""
        raw, _ = self.envs.reset(seed=seed)
        self._check_finite(raw, "observation")
        self._seed, self._log = int(seed), []
        self._prev_done[:] = False
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self.reward_scaler.reset()
        self._obs = torch.from_numpy(self.obs_norm(raw))

    def collect(self, policy: ActorCritic, num_steps: int) -> Batch:
        """``num_steps`` steps of every copy, continuing where the previous rollout stopped."""
        return self._collect(policy, num_steps, first_episode_only=False)

    def collect_episodes(self, policy: ActorCritic, max_steps: int = 100_000) -> Batch:
        """Step until every copy has ended one episode (or ``max_steps``, with a warning); the mask keeps each
        first episode.

        Meant right after ``reset``: B complete episodes, the batch of Monte-Carlo methods.
        """
        return self._collect(policy, max_steps, first_episode_only=True)

    @torch.no_grad()
    def _collect(self, policy: ActorCritic, num_steps: int, first_episode_only: bool) -> Batch:
        if self._obs is None:
            raise RuntimeError("Collector.reset(seed) must be called before collecting")
        B = self.num_envs
        obs_l, act_l, par_l, rew_l, term_l, trunc_l, mask_l = [], [], [], [], [], [], []
        ep_returns: list[float] = []
        ep_lengths: list[int] = []
        finished = np.zeros(B, bool)  # copies whose first episode has ended (first_episode_only)
        for _ in range(num_steps):
            if first_episode_only and finished.all():
                break
            obs = self._obs
            params = policy.dist_params(obs)  # the actor only; values and log-probs come batched below
            action = policy.sample(params)
            env_action = action.numpy()
            if self.action.kind == "box":
                env_action = np.clip(env_action, self._low, self._high)
            raw, reward, term, trunc, _ = self.envs.step(env_action)
            self._check_finite(reward, "reward")
            self._check_finite(raw, "observation")
            self._log.append(env_action)

            real = ~self._prev_done  # False on the reset transition
            counted = real & ~finished if first_episode_only else real
            done = term | trunc
            np.add(self._ep_return, reward, out=self._ep_return, where=real)
            self._ep_length += real
            if done.any():
                ended = counted & done
                ep_returns.extend(self._ep_return[ended].tolist())
                ep_lengths.extend(self._ep_length[ended].tolist())
                self._ep_return[done] = 0.0
                self._ep_length[done] = 0
                finished |= ended
            self._prev_done = done

            obs_l.append(obs)
            act_l.append(action)
            par_l.append(params)
            rew_l.append(self.reward_scaler(reward, done, real))
            term_l.append(term)
            trunc_l.append(trunc)
            mask_l.append(counted)
            self._obs = torch.from_numpy(self.obs_norm(raw))

        if first_episode_only and not finished.all():
            warnings.warn(f"{int((~finished).sum())} of {B} episodes were cut at {num_steps} steps without ending "
                          "(does the environment set no time limit? register it with max_episode_steps); their "
                          "steps are trained on as if the episode had ended there", GradascentWarning,
                          stacklevel=4)  # past torch.no_grad's wrapper and collect_episodes: its caller
        obs = torch.stack(obs_l, dim=1)  # (B, T, obs_dim)
        actions = torch.stack(act_l, dim=1)
        params = torch.stack(par_l, dim=1)  # (B, T, P)
        T = obs.shape[1]
        # V(s_0..s_T) in one batched call: s_T (where collection stopped) closes the last step.
        values = policy.value(torch.cat([obs, self._obs[:, None]], dim=1).reshape(B * (T + 1), -1))
        values = values.reshape(B, T + 1)
        return Batch(
            obs=obs,
            actions=actions,
            logp=policy.distribution(params).log_prob(actions),
            values=values[:, :T],
            next_values=values[:, 1:],
            rewards=torch.from_numpy(np.stack(rew_l, axis=1)),
            terminated=torch.from_numpy(np.stack(term_l, axis=1)),
            truncated=torch.from_numpy(np.stack(trunc_l, axis=1)),
            mask=torch.from_numpy(np.stack(mask_l, axis=1)),
            dist_params=params,
            episode_returns=np.asarray(ep_returns, np.float64),
            episode_lengths=np.asarray(ep_lengths, np.int64),
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything between two rollouts: the environments as (seed, actions since), normalisers, counters."""
        if self._log:
            actions = np.stack(self._log)
        else:
            shape = (0, self.num_envs) + (() if self.action.kind == "discrete" else (self.action.dim,))
            actions = np.zeros(shape, np.int64 if self.action.kind == "discrete" else np.float32)
        return {
            "seed": self._seed,
            "actions": actions,
            "obs": None if self._obs is None else self._obs.clone(),
            "prev_done": self._prev_done.copy(),
            "ep_return": self._ep_return.copy(),
            "ep_length": self._ep_length.copy(),
            "obs_norm": self.obs_norm.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the environments by reset(seed) and replay of the logged actions, then the rest."""
        self._seed, self._log = state["seed"], []
        if self._seed is not None:
            self.envs.reset(seed=self._seed)
            for a in state["actions"]:
                self.envs.step(a)
                self._log.append(a)
        self._obs = None if state["obs"] is None else state["obs"].clone()
        self._prev_done = np.asarray(state["prev_done"], bool).copy()
        self._ep_return = np.asarray(state["ep_return"], np.float64).copy()
        self._ep_length = np.asarray(state["ep_length"], np.int64).copy()
        self.obs_norm.load_state_dict(state["obs_norm"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
