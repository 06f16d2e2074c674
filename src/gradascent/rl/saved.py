"""The saved policy of a run, and deterministic evaluation.

A run directory holds ``policy.safetensors`` (the network's weights and the observation statistics) and
``policy.json`` (the environment id and what is needed to rebuild the network and the normaliser). No
pickle: loading a policy runs no code from the file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gradascent.errors import CheckpointError, ConfigError, GradascentWarning
from gradascent.rl.envs import ActionSpec, ObsNormalizer, make_vec_env, spaces_of
from gradascent.rl.policy import ActorCritic
from gradascent.run.files import save_tensors

WEIGHTS, META = "policy.safetensors", "policy.json"


def save_policy(directory: str | Path, policy: ActorCritic, obs_norm: ObsNormalizer, env_id: str,
                extra: dict[str, Any] | None = None) -> Path:
    """Write policy.safetensors and policy.json under ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"policy.{k}": v.detach().contiguous().clone() for k, v in policy.state_dict().items()}
    tensors["obs_norm.mean"] = torch.from_numpy(obs_norm.rms.mean.copy())
    tensors["obs_norm.var"] = torch.from_numpy(obs_norm.rms.var.copy())
    save_tensors(tensors, directory / WEIGHTS)
    norm = {k: v for k, v in obs_norm.state_dict().items() if k not in ("mean", "var")}
    meta = {"env": env_id, "network": policy.spec(), "obs_norm": norm, **(extra or {})}
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return directory


def load_policy(path: str | Path) -> tuple[ActorCritic, ObsNormalizer, dict[str, Any]]:
    """(policy, frozen observation normaliser, metadata) from a run directory or its policy files."""
    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    if not (directory / WEIGHTS).exists() or not (directory / META).exists():
        raise CheckpointError(f"{path} holds no saved policy: expected {WEIGHTS} and {META} (a finished run)")
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / WEIGHTS))
        policy = ActorCritic.from_spec(meta["network"])
        weights = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
        _check_shapes(policy, weights, directory)
        policy.load_state_dict(weights)
        obs_norm = ObsNormalizer(policy.obs_dim, enabled=False)
        obs_norm.load_state_dict({**meta["obs_norm"], "mean": tensors["obs_norm.mean"].numpy(),
                                  "var": tensors["obs_norm.var"].numpy()})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"saved policy in {directory} is corrupt: {type(exc).__name__}: {exc}") from None
    policy.eval()
    return policy, obs_norm, meta


def _check_shapes(policy: ActorCritic, weights: dict[str, torch.Tensor], directory: Path) -> None:
    """A one-line CheckpointError naming the first tensor in which the weights file and the network that
    policy.json describes disagree (load_state_dict would print every one of them, over many lines)."""
    want = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
            in_file = "missing" if name not in have else f"of shape {have[name]}"
            in_net = "has none" if name not in want else f"needs {want[name]}"
            raise CheckpointError(f"saved policy in {directory} is corrupt: {WEIGHTS} and the network of {META} "
                                  f"disagree: tensor {name} is {in_file} in the file, and the network {in_net}")


def _describe(obs_dim: int, action: ActionSpec) -> str:
    what = f"{action.dim} discrete actions" if action.kind == "discrete" else f"{action.dim}-dim Box actions"
    return f"{obs_dim}-dim observations and {what}"


def check_env_fits(policy: ActorCritic, envs: gym.vector.VectorEnv, env_id: str) -> None:
    """A ConfigError unless ``env_id``'s spaces are the ones the policy's network was built for."""
    obs_dim, action = spaces_of(envs, env_id, "the policy")
    if (obs_dim, action.kind, action.dim) != (policy.obs_dim, policy.action.kind, policy.action.dim):
        raise ConfigError(f"the policy was built for {_describe(policy.obs_dim, policy.action)}, but {env_id} has "
                          f"{_describe(obs_dim, action)}")
    mine = (tuple(policy.action.low), tuple(policy.action.high))
    if action.kind == "box" and (action.low, action.high) != mine:
        # the policy clips its actions to the bounds it was trained with; other bounds would be ignored
        raise ConfigError(f"the policy was built for Box actions in [{_bounds(mine[0])}, {_bounds(mine[1])}], but "
                          f"{env_id}'s Box is [{_bounds(action.low)}, {_bounds(action.high)}]")


def _bounds(values: tuple[float, ...]) -> str:
    return f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"


EVAL_BATCH = 64  # copies of the environment alive at once: memory grows with them, not with ``episodes``


@torch.no_grad()
def run_episodes(policy: ActorCritic, obs_norm: ObsNormalizer, env_id: str, episodes: int, seed: int,
                 deterministic: bool = True, max_steps: int = 100_000) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes, one per copy of the environment, played in parallel
    ``EVAL_BATCH`` copies at a time.

    Deterministic: the policy's mode (argmax or Gaussian mean, clipped to the bounds). The normaliser's
    statistics are used, never updated. Copy i is its own environment, reset with seed + i, so that episode i
    is the same whatever ``episodes`` is. An episode still running after ``max_steps`` steps is cut there,
    with a warning.
    """
    returns, cut = np.zeros(episodes, np.float64), 0
    for start in range(0, episodes, EVAL_BATCH):
        n = min(EVAL_BATCH, episodes - start)
        returns[start:start + n], unfinished = _play(policy, obs_norm, env_id, n, seed + start, deterministic,
                                                     max_steps)
        cut += unfinished
    if cut:
        warnings.warn(f"{cut} of {episodes} evaluation episodes were cut at {max_steps} steps without ending (does "
                      "the environment set no time limit?); their returns are partial", GradascentWarning,
                      stacklevel=3)  # 3: past torch.no_grad's wrapper
    return returns


def _play(policy: ActorCritic, obs_norm: ObsNormalizer, env_id: str, n: int, seed: int, deterministic: bool,
          max_steps: int) -> tuple[np.ndarray, int]:
    """Returns of n copies reset with seed, seed + 1, ...; and how many were cut at max_steps."""
    envs = make_vec_env(env_id, n, separate=True)
    try:
        check_env_fits(policy, envs, env_id)
        raw, _ = envs.reset(seed=seed)
        returns = np.zeros(n, np.float64)
        finished = np.zeros(n, bool)
        for _ in range(max_steps):
            params = policy.dist_params(torch.from_numpy(obs_norm(raw, update=False)))
            action = policy.mode(params) if deterministic else policy.distribution(params).sample()
            env_action = action.numpy()
            if policy.action.kind == "box":
                env_action = np.clip(env_action, policy.action.low, policy.action.high).astype(np.float32)
            raw, reward, term, trunc, _ = envs.step(env_action)
            returns[~finished] += reward[~finished]
            finished |= term | trunc
            if finished.all():
                break
    finally:
        envs.close()
    return returns, int((~finished).sum())


def evaluate(path: str | Path, episodes: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Deterministic evaluation of a saved policy: {eval_return_mean, eval_return_std, episodes, seed, returns}.

    ``episodes`` and ``seed`` default to those of the run's own evaluations (``eval_episodes`` and the
    ``eval_seed`` of policy.json), so that a finished run's final figure is reproduced; 10 and 0 for a
    policy.json that names neither."""
    _check_episodes_and_seed(episodes, seed)  # the caller's, before anything is read
    policy, obs_norm, meta = load_policy(path)
    if episodes is None:
        episodes = meta.get("config", {}).get("eval_episodes", 10)
    if seed is None:
        seed = meta.get("eval_seed", 0)
    try:
        _check_episodes_and_seed(episodes, seed)
    except ConfigError as exc:
        raise CheckpointError(f"saved policy in {Path(path)} is corrupt: {META}: {exc}") from None
    try:
        returns = run_episodes(policy, obs_norm, meta["env"], episodes, seed)
    except ConfigError as exc:  # the environment named in policy.json: say where it was named
        raise ConfigError(f"saved policy in {Path(path)} ({META}: env {meta['env']!r}): {exc}") from None
    return {"eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()),
            "episodes": episodes, "seed": seed, "returns": returns.tolist()}


def _check_episodes_and_seed(episodes: Any, seed: Any) -> None:
    if episodes is not None and (isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1):
        raise ConfigError(f"episodes: {episodes!r} is not allowed; expected an integer >= 1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise ConfigError(f"seed: {seed!r} is not allowed; expected an integer in [0, 2**32) (gymnasium's seeds)")
