"""PPO-RLHF under DistributedDataParallel (2 gloo processes): batch_size and minibatch_size are global, so an
update takes as many optimizer steps on 2 processes as on 1 (epochs * batch_size / minibatch_size)."""

import os

import pytest
import torch
import torch.distributed as dist

from _group import join, run_ranks
from gradascent.algos.ppo_rlhf import PPORLHFConfig, train_ppo_rlhf
from gradascent.lm import RewardModel, load_model, save_model

pytestmark = pytest.mark.xdist_group("dist")


def _config(sft: str, rm: str, out: str) -> PPORLHFConfig:
    # 8 completions an update in minibatches of 4, 2 epochs: 4 optimizer steps an update, 8 in all
    return PPORLHFConfig(policy=sft, reward_model=rm, out=out, updates=2, batch_size=8, minibatch_size=4, epochs=2,
                         max_new_tokens=4, eval_prompts=4, eval_every=0, save_every=0)


def _count_steps() -> list[int]:
    """Count the calls of AdamW.step in this process."""
    calls = [0]
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    return calls


def _rank(rank: int, world: int, port: int, sft: str, rm: str, out: str, result: dict) -> None:
    join(rank, world, port)
    calls = _count_steps()
    train_ppo_rlhf(_config(sft, rm, out))
    result[rank] = calls[0]
    dist.destroy_process_group()


def test_an_update_takes_the_same_optimizer_steps_on_two_ranks(tmp_path):
    torch.set_num_threads(1)
    sft, rm = str(tmp_path / "sft"), str(tmp_path / "rm")
    model, tok = load_model("qwen2-micro", seed=0)
    save_model(model, tok, sft)
    RewardModel(load_model(sft)[0]).save_pretrained(rm, tok)
    original = torch.optim.AdamW.step
    try:
        calls = _count_steps()
        train_ppo_rlhf(_config(sft, rm, str(tmp_path / "one")))
        single = calls[0]
    finally:
        torch.optim.AdamW.step = original
    assert single == 8  # 2 updates x 2 epochs x 8 / 4 minibatches (one AdamW over the policy and the critic)
    result = run_ranks(_rank, sft, rm, str(tmp_path / "two"))
    assert result == {0: single, 1: single}
    assert os.path.isdir(tmp_path / "two" / "policy")
