"""Classic control: gymnasium vector environments, MLP actor-critics, rollouts, saved policies."""

from gradascent.rl.envs import ActionSpec, ObsNormalizer, RewardScaler, RunningMeanStd, make_vec_env
from gradascent.rl.policy import ActorCritic
from gradascent.rl.rollout import Batch, Collector
from gradascent.rl.saved import evaluate, load_policy, run_episodes, save_policy

__all__ = [
    "ActionSpec",
    "ActorCritic",
    "Batch",
    "Collector",
    "ObsNormalizer",
    "RewardScaler",
    "RunningMeanStd",
    "evaluate",
    "load_policy",
    "make_vec_env",
    "run_episodes",
    "save_policy",
]
