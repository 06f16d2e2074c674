"""Vector environments and running normalisation for classic control.

``make_vec_env`` asks gymnasium for ``num_envs`` copies of an environment, using the environment's own
vectorised implementation when it registers one (CartPole-v1 has a numpy one that steps every copy in one
call) and a ``SyncVectorEnv`` otherwise. Either way the autoreset mode is gymnasium's default NEXT_STEP: the
step that ends an episode returns the final observation, and the following ``step`` call resets that copy,
ignores its action and returns reward 0. The rollout masks that reset transition out (rl/rollout.py); in
exchange the final observation is the ordinary next observation, so bootstrapping at a truncation needs no
special case.

Normalisation follows SB3's ``VecNormalize``: observations are standardised with running statistics and
clipped; rewards are divided by the running standard deviation of the discounted return. The statistics
are part of the policy (saved with it) and of every checkpoint.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from gradascent.errors import ConfigError
from gradascent.rewards import import_from_cwd


def check_env_id(env_id: str) -> None:
    """A ConfigError naming ``env`` unless ``env_id`` is a registered gymnasium id.

    As in ``gymnasium.make``, ``module:EnvId`` first imports ``module``, which registers ``EnvId``: the way to
    reach an environment of one's own from the command line (and to evaluate or resume its runs)."""
    name = env_id
    if ":" in env_id:
        module, _, name = env_id.partition(":")
        try:
            import_from_cwd(module)  # the current directory first, as for reward functions
        except (ImportError, ValueError, TypeError) as exc:  # also '' or a relative name ('.x'): not importable
            raise ConfigError(f"config key 'env': {env_id!r}: module {module!r} cannot be imported ({exc})") from None
    if name in gym.registry:
        return
    hint = difflib.get_close_matches(name, list(gym.registry), n=1, cutoff=0.6)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ConfigError(f"config key 'env': {env_id!r} is not allowed; expected a registered gymnasium "
                      f"environment id such as 'CartPole-v1' or 'Pendulum-v1', or 'module:EnvId' for one that "
                      f"a module registers when imported{extra}")


def make_vec_env(env_id: str, num_envs: int, separate: bool = False) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` in NEXT_STEP autoreset mode (see the module docstring).

    ``separate``: one environment per copy (gymnasium's sync vectorisation), so that ``reset(seed=S)`` seeds
    copy i with S + i, whatever the number of copies. Without it an environment with a vectorised
    implementation of its own (CartPole-v1's) may draw all copies' starts from one generator seeded once.
    """
    check_env_id(env_id)
    try:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync" if separate else None)
    except (gym.error.Error, ImportError) as exc:  # e.g. a missing optional dependency (box2d, mujoco, jax)
        raise ConfigError(f"config key 'env': {env_id!r} cannot be created: {exc}") from None
    except Exception as exc:  # a registered environment whose own constructor fails
        raise ConfigError(f"config key 'env': {env_id!r} cannot be created: its constructor raised "
                          f"{type(exc).__name__}: {exc}") from None
    mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    if mode != gym.vector.AutoresetMode.NEXT_STEP:
        envs.close()
        raise ConfigError(f"config key 'env': {env_id!r} uses autoreset mode {mode}; expected NEXT_STEP")
    return envs


@dataclass(frozen=True)
class ActionSpec:
    """What the policy needs to know about an action space: Discrete(n) or a 1-D Box [low, high]."""

    kind: str  # "discrete" | "box"
    dim: int  # number of discrete actions, or the Box's length
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionSpec:
        return cls(d["kind"], int(d["dim"]), tuple(d["low"]), tuple(d["high"]))


def spaces_of(envs: gym.vector.VectorEnv, env_id: str, algo: str) -> tuple[int, ActionSpec]:
    """(observation size, action spec) of one copy; a ConfigError if ``algo`` cannot handle the spaces."""
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1 and obs_space.shape[0] > 0):
        raise ConfigError(f"config key 'env': {env_id!r} has observation space {obs_space}, which {algo} does "
                          f"not support; expected a non-empty 1-D Box")
    if isinstance(act_space, gym.spaces.Discrete) and act_space.start == 0:
        return obs_space.shape[0], ActionSpec("discrete", int(act_space.n))
    if (isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1 and act_space.shape[0] > 0
            and np.issubdtype(act_space.dtype, np.floating)
            and np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        low = tuple(float(x) for x in act_space.low)
        high = tuple(float(x) for x in act_space.high)
        return obs_space.shape[0], ActionSpec("box", act_space.shape[0], low, high)
    raise ConfigError(f"config key 'env': {env_id!r} has action space {act_space}, which {algo} does not "
                      f"support; expected Discrete(n) or a bounded, non-empty 1-D Box of floats")


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al.'s parallel update), in float64."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4  # as SB3: the first batch dominates without dividing by zero

    def update(self, x: np.ndarray) -> None:
        """Fold in a batch ``x`` of shape (N, *shape)."""
        batch_mean, batch_var, n = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": float(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = np.asarray(state["mean"], np.float64).copy()
        self.var = np.asarray(state["var"], np.float64).copy()
        self.count = float(state["count"])


class ObsNormalizer:
    """obs -> clip((obs - mean) / sqrt(var + eps), -clip, clip) with running statistics; identity if off."""

    def __init__(self, obs_dim: int, enabled: bool, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.enabled, self.clip, self.eps = enabled, clip, eps
        self.rms = RunningMeanStd((obs_dim,))

    def __call__(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        """Normalise a batch (N, obs_dim), folding it into the statistics first when ``update``."""
        if not self.enabled:
            return np.ascontiguousarray(obs, dtype=np.float32)
        if update:
            self.rms.update(obs)
        out = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.eps)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "clip": self.clip, "eps": self.eps, **self.rms.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.enabled, self.clip, self.eps = bool(state["enabled"]), float(state["clip"]), float(state["eps"])
        self.rms.load_state_dict(state)


class RewardScaler:
    """r -> clip(r / sqrt(Var[R] + eps), -clip, clip), R the running discounted return of each copy.

    Only the scale changes, never the sign or the optimum; the discounted return is restarted at every
    episode boundary. Identity when disabled.
    """

    def __init__(self, num_envs: int, gamma: float, enabled: bool, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.enabled, self.gamma, self.clip, self.eps = enabled, gamma, clip, eps
        self.rms = RunningMeanStd(())
        self.ret = np.zeros(num_envs, np.float64)

    def __call__(self, reward: np.ndarray, done: np.ndarray, real: np.ndarray) -> np.ndarray:
        """Scale one step's rewards (num_envs,). ``done`` ends the discounted return after this step;
        only ``real`` transitions (not autoreset steps) enter the statistics."""
        if not self.enabled:
            return reward.astype(np.float32, copy=False)
        self.ret = self.ret * self.gamma + reward
        if real.any():
            self.rms.update(self.ret[real])
        self.ret[done] = 0.0
        out = reward / np.sqrt(self.rms.var + self.eps)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def reset(self) -> None:
        self.ret[:] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"ret": self.ret.copy(), **self.rms.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ret = np.asarray(state["ret"], np.float64).copy()
        self.rms.load_state_dict(state)
