"""Bad arguments to the trainers' Python functions: a ConfigError naming what was expected, not an
AttributeError or TypeError from deep inside (each was one before)."""

import pytest

from gradascent.algos import a2c, ppo, reinforce
from gradascent.algos.grpo import GRPOConfig, train_grpo
from gradascent.algos.ppo_rlhf import PPORLHFConfig, train_ppo_rlhf
from gradascent.algos.reward_model import train_reward_model
from gradascent.algos.rlhf import run_rlhf
from gradascent.algos.sft import SFTConfig, train_sft
from gradascent.errors import ConfigError, GradascentError


@pytest.mark.parametrize("call, says", [
    (lambda: train_grpo(SFTConfig(model="qwen2-micro"), "runs/x"),
     "train_grpo takes a config of class GRPOConfig, got SFTConfig"),
    (lambda: train_grpo({"model": "qwen2-micro"}, "runs/x"),
     "train_grpo takes a config of class GRPOConfig, got dict; build one with GRPOConfig(**d)"),
    (lambda: train_sft(GRPOConfig()), "train_sft takes a config of class SFTConfig, got GRPOConfig"),
    (lambda: train_reward_model(SFTConfig()),
     "train_reward_model takes a config of class RewardModelConfig, got SFTConfig"),
    (lambda: train_ppo_rlhf(SFTConfig()), "train_ppo_rlhf takes a config of class PPORLHFConfig, got SFTConfig"),
    (lambda: run_rlhf(PPORLHFConfig()), "run_rlhf takes a config of class RLHFConfig, got PPORLHFConfig"),
    (lambda: a2c.train(ppo.PPOConfig()), "a2c.train takes a config of class A2CConfig, got PPOConfig"),
    (lambda: ppo.train(a2c.A2CConfig()), "ppo.train takes a config of class PPOConfig, got A2CConfig"),
    (lambda: reinforce.train(ppo.PPOConfig()),
     "reinforce.train takes a config of class ReinforceConfig, got PPOConfig"),
], ids=["grpo-sft", "grpo-dict", "sft", "rm", "ppo-rlhf", "rlhf", "a2c", "ppo", "reinforce"])
def test_a_config_of_another_trainer_is_named(tmp_path, monkeypatch, call, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        call()
    assert str(exc.value) == says
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_out_that_is_not_a_path_is_named(tmp_path):
    with pytest.raises(GradascentError, match=r"the run directory \(out\) must be a path such as runs/NAME, got "
                                              r"NoneType"):
        train_grpo(GRPOConfig(model="qwen2-micro"), None)
