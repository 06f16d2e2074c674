"""Tiny deterministic environments registered for the tests (ids under the GradascentTest namespace)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class ConstantEnv(gym.Env):
    """Observation [1.0], reward ``reward`` every step; terminates after ``terminate_after`` steps if set."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, terminate_after: int | None = None, reward: float = 1.0, action_space=None) -> None:
        self.terminate_after, self.reward, self.t = terminate_after, reward, 0
        self.action_space = action_space if action_space is not None else gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.ones(1, np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate_after is not None and self.t >= self.terminate_after
        return np.ones(1, np.float32), self.reward, terminated, False, {}


class ActionRewardEnv(ConstantEnv):
    """ConstantEnv whose reward is the action taken (0 or 1), so that advantages differ between samples."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float(action), terminated, truncated, info


def register() -> None:
    if "GradascentTest/Trunc-v0" in gym.registry:
        return
    # Episodes cut by a time limit after 3 steps (never terminal).
    gym.register("GradascentTest/Trunc-v0", entry_point=ConstantEnv, max_episode_steps=3)
    # Episodes that terminate after 3 steps (the time limit is far away).
    gym.register("GradascentTest/Term-v0", entry_point=ConstantEnv, max_episode_steps=100,
                 kwargs={"terminate_after": 3})
    # Rewards that are NaN: refused by the collector, naming the environment.
    gym.register("GradascentTest/NaN-v0", entry_point=ConstantEnv, max_episode_steps=10,
                 kwargs={"reward": float("nan")})
    # Finite rewards whose float32 sums overflow: every loss is non-finite.
    gym.register("GradascentTest/Huge-v0", entry_point=ConstantEnv, max_episode_steps=10,
                 kwargs={"reward": 3e38})
    # An action space no classic trainer supports.
    gym.register("GradascentTest/MultiBinary-v0", entry_point=ConstantEnv, max_episode_steps=10,
                 kwargs={"action_space": gym.spaces.MultiBinary(3)})
    # Integer Box actions: a Gaussian policy's samples are not members of the space.
    gym.register("GradascentTest/IntBox-v0", entry_point=ConstantEnv, max_episode_steps=10,
                 kwargs={"action_space": gym.spaces.Box(0, 5, (2,), np.int64)})
    # An empty Box of actions.
    gym.register("GradascentTest/EmptyBox-v0", entry_point=ConstantEnv, max_episode_steps=10,
                 kwargs={"action_space": gym.spaces.Box(-1.0, 1.0, (0,), np.float32)})
    # One-step episodes rewarding action 1: in NEXT_STEP autoreset every other transition is a reset step.
    gym.register("GradascentTest/ActionReward-v0", entry_point=ActionRewardEnv, max_episode_steps=100,
                 kwargs={"terminate_after": 1})
    # Episodes that never end (no time limit, never terminal).
    gym.register("GradascentTest/Endless-v0", entry_point=ConstantEnv)
    # A registered environment whose constructor fails (a required argument the registration lacks).
    gym.register("GradascentTest/Broken-v0", entry_point=ConstantEnv, kwargs={"no_such_argument": 1})
