"""Shared by the RLHF tests: a tiny 'SFT' model and reward model on disk, and small configs.

The 'SFT' model is the qwen2-micro preset with its random initial weights (21,888 parameters): the trainers
only need a causal LM directory, and a from-scratch SFT stage would cost the suite seconds it does not need.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradascent.algos.ppo_rlhf import PPORLHFConfig
from gradascent.algos.reward_model import RewardModelConfig, train_reward_model
from gradascent.lm import load_model, save_model

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="session")
def sft_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "model"
    model, tok = load_model("qwen2-micro", seed=0)
    save_model(model, tok, path)
    return path


def rm_config(sft: Path, out: Path, **kw) -> RewardModelConfig:
    base = dict(model=str(sft), out=str(out), train_pairs=64, eval_pairs=32, batch_size=32, log_every=1)
    base.update(kw)
    return RewardModelConfig(**base)


@pytest.fixture(scope="session")
def rm_dir(sft_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm")
    train_reward_model(rm_config(sft_dir, out))
    return out / "model"


def ppo_config(sft: Path, rm: Path, out: Path, **kw) -> PPORLHFConfig:
    base = dict(policy=str(sft), reward_model=str(rm), out=str(out), updates=2, batch_size=8, minibatch_size=4,
                epochs=2, max_new_tokens=6, eval_prompts=4, eval_every=0, save_every=1)
    base.update(kw)
    return PPORLHFConfig(**base)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`gradascent ARGS` in a fresh process (one thread, so that runs are bitwise reproducible)."""
    env = dict(os.environ, PYTHONPATH=SRC, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "gradascent.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def cli_error(capsys, *args: str) -> str:
    """Run `gradascent ARGS` in this process and check the contract for user errors: exit status 2 and one
    line on stderr, 'gradascent: error: ...'. Returns that line."""
    from gradascent.cli import main

    capsys.readouterr()
    code = main(list(args))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("gradascent: error: "), err[-2000:]
    return lines[0]


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

