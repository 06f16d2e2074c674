"""GRPO under DistributedDataParallel (2 gloo processes): ranks sample different completions of their own
prompts, yet after every update they hold the same weights, and rank 0 alone writes the run directory."""

import json
import os

import pytest
import torch
import torch.distributed as dist
from _group import run_ranks

pytestmark = pytest.mark.xdist_group("dist")



def digit_fraction(prompts, completions, **_):
    return [sum(c.isdigit() for c in s) / len(s) if s else 0.0 for s in completions]


def _rank(rank: int, world: int, port: int, out: str, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from gradascent.algos.grpo import GRPOConfig, train_grpo
    from gradascent.lm import load_model
    from gradascent.tasks import Task

    rows = [{"prompt": p} for p in ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op")]
    task = Task("digits", "completion", rows, [], (digit_fraction,), (1.0,), max_new_tokens=4)
    model, tok = load_model("qwen2-micro", seed=0)
    cfg = GRPOConfig(steps=3, prompts_per_step=4, group_size=4, lr=1e-2, save_every=2, loss_agg="token_mean")
    train_grpo(cfg, out, model=model, tokenizer=tok, task=task, progress=False)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    parts = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(parts, flat)
    result[rank] = {"same_weights": all(torch.equal(parts[0], p) for p in parts),
                    "moved": not torch.equal(flat, torch.cat([p.detach().flatten() for p in
                                                              load_model("qwen2-micro", seed=0)[0].parameters()]))}
    dist.destroy_process_group()


def test_ddp_ranks_stay_in_step_and_rank0_writes(tmp_path):
    out = str(tmp_path / "run")
    result = run_ranks(_rank, out)
    assert result[0] == result[1] == {"same_weights": True, "moved": True}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one row per step, written once (rank 0)
    assert rows[-1]["samples"] == 3 * 4 * 4
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]


def test_a_two_process_checkpoint_resumes_on_one_process(tmp_path, capfd):
    from gradascent.algos.grpo import GRPOConfig, train_grpo
    from gradascent.lm import load_model
    from gradascent.tasks import Task

    out = str(tmp_path / "run")
    run_ranks(_rank, out)
    rows = [{"prompt": p} for p in ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op")]
    task = Task("digits", "completion", rows, [], (digit_fraction,), (1.0,), max_new_tokens=4)
    model, tok = load_model("qwen2-micro", seed=0)
    cfg = GRPOConfig(steps=5, prompts_per_step=4, group_size=4, lr=1e-2, save_every=2, loss_agg="token_mean")
    summary = train_grpo(cfg, out, model=model, tokenizer=tok, task=task, progress=False, resume=True)
    assert summary["steps"] == 5
    assert "checkpoint of 2 processes on 1" in capfd.readouterr().err
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2, 3, 4, 5]
    assert metrics[-1]["samples"] == 5 * 4 * 4  # the global sample count carries over
    from gradascent.run.checkpoint import load_checkpoint

    step, state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000005")
    assert step == 5 and state["world_size"] == 1


def _rank_minibatches(rank: int, world: int, port: int, out: str, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from gradascent.algos.grpo import GRPOConfig, train_grpo
    from gradascent.errors import ConfigError

    try:  # 4 prompts a step: 2 per process, which 4 minibatches of whole groups cannot split
        train_grpo(GRPOConfig(steps=1, prompts_per_step=4, group_size=2, num_minibatches=4), out, progress=False)
    except ConfigError as e:
        result[rank] = str(e)
    dist.destroy_process_group()


def test_minibatches_must_divide_each_process_share_of_prompts(tmp_path):
    out = str(tmp_path / "run")
    result = run_ranks(_rank_minibatches, out)
    assert result[0] == result[1]
    assert "each of 2 processes holds 2 prompts a step, which num_minibatches=4 does not divide" in result[0]
    assert "a multiple of 8" in result[0]
    assert not (tmp_path / "run").exists()


def _recording_rank(rank: int, world: int, port: int, out: str, result: dict) -> None:
    """As _rank, with a reward that records what it returns on this rank, and the tokens each update trains on."""
    from _group import join

    join(rank, world, port)
    from gradascent.algos import grpo
    from gradascent.algos.grpo import GRPOConfig, train_grpo
    from gradascent.lm import load_model
    from gradascent.tasks import Task

    seen, tokens = [], []

    def recorded(prompts, completions, **kw):
        scores = digit_fraction(prompts, completions, **kw)
        seen.append(scores)
        return scores

    update = grpo.grpo_update

    def counting_update(rollout, *args, **kwargs):
        stats = update(rollout, *args, **kwargs)
        tokens.append(stats["tokens_in_loss"])
        return stats

    grpo.grpo_update = counting_update
    rows = [{"prompt": p} for p in ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op")]
    task = Task("digits", "completion", rows, [], (recorded,), (1.0,), max_new_tokens=4)
    model, tok = load_model("qwen2-micro", seed=0)
    cfg = GRPOConfig(steps=2, prompts_per_step=4, group_size=4, lr=1e-2, save_every=0, loss_agg="token_mean")
    train_grpo(cfg, out, model=model, tokenizer=tok, task=task, progress=False)
    result[rank] = {"rewards": seen, "tokens": tokens}
    dist.destroy_process_group()


def test_logged_reward_spread_and_token_count_are_the_whole_steps(tmp_path):
    # The metrics of a step describe all of its completions, not a mean of the ranks' halves: reward_std is
    # the std of every reward of the step, tokens_in_loss the sum of both ranks' loss tokens.
    out = str(tmp_path / "run")
    result = run_ranks(_recording_rank, out)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for step, row in enumerate(rows):
        both = torch.tensor(result[0]["rewards"][step] + result[1]["rewards"][step], dtype=torch.float32)
        assert len(both) == 16
        assert row["reward_std"] == pytest.approx(float(both.std()), rel=1e-6)
        assert row["reward"] == pytest.approx(float(both.mean()), rel=1e-6)
        assert row["tokens_in_loss"] == result[0]["tokens"][step] + result[1]["tokens"][step]
