"""FSDP2 (``fsdp: true``) on 2 gloo processes: the same updates as one process, checkpoints in the one-process
layout.

``distributed.wrap(lm, fsdp=True)`` shards every parameter over the ranks; FSDP2's reduce-scatter averages
the ranks' gradients as DDP's all-reduce does, so the loss divisors of the DDP trainers must serve unchanged.
The equivalence tests reuse the batches and the fixed rollout of the DDP tests (test_sft_ddp.py,
test_grpo_equivalence.py, whose docstrings say why they differ between the halves) and, like them, plain SGD
without clipping: Adam's first step, about lr * sign(g), would hide a gradient of the wrong scale. The
gradient norm before clipping is compared as well, and one more SFT step with clipping on checks that the
clip scales by the norm over all shards, not by this rank's.
"""

import json

import pytest
import torch
import torch.distributed as dist
from test_grpo_equivalence import CONFIGS, _rollout
from test_sft_ddp import TRAIN, _batches

from gradascent.algos.grpo import GRPOConfig, grpo_update, load_reference, train_grpo
from gradascent.algos.sft import SFTConfig, encode_examples, eval_loss, sft_step, train_sft
from gradascent.lm import SequenceLogprobs, load_model, save_model
from gradascent.lm.grouped import GroupedLogprobs
from gradascent.run import distributed
from gradascent.run.checkpoint import load_checkpoint
from gradascent.run.guard import NonFiniteGuard
from gradascent.tasks import Task, load_task
from _group import join, run_ranks

pytestmark = pytest.mark.xdist_group("dist")

CLIP = 0.05  # below every gradient norm of the batches (about 2 to 3), so the clip acts




def _flat(model: torch.nn.Module, lm: torch.nn.Module) -> torch.Tensor:
    """All weights, whole (gathered from the shards under FSDP2), in parameter order."""
    with distributed.full_weights(lm):
        return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _sft(fsdp: bool) -> tuple[list[torch.Tensor], list[float]]:
    """Weights after each sft_step over _batches(), then after one clipped step; and the gradient norms."""
    model, _ = load_model("qwen2-micro", seed=0)
    lm = distributed.wrap(SequenceLogprobs(model), fsdp=fsdp)
    assert distributed.is_sharded(model) == (fsdp and distributed.info().enabled)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    guard = NonFiniteGuard(1)
    weights, norms = [_flat(model, lm)], []
    batches = _batches()
    for batch, clip in [(b, 0.0) for b in batches] + [(batches[0], CLIP)]:
        _, grad_norm = sft_step(lm, opt, guard, batch, max_grad_norm=clip, device=torch.device("cpu"))
        assert grad_norm is not None
        weights.append(_flat(model, lm))
        norms.append(float(grad_norm))
    return weights, norms


def _rank_sft(rank: int, world: int, port: int, result: dict) -> None:
    join(rank, world, port)
    result[rank] = _sft(fsdp=True)
    dist.destroy_process_group()


def test_sft_steps_sharded_on_two_ranks_equal_one_rank():
    torch.set_num_threads(1)
    single, single_norms = _sft(fsdp=False)
    result = run_ranks(_rank_sft)
    assert single_norms[-1] > 10 * CLIP  # the last step is clipped
    for r in (0, 1):
        weights, norms = result[r]
        assert norms == pytest.approx(single_norms, rel=1e-5)
        for k in range(1, len(single)):
            assert (single[k] - single[k - 1]).abs().max() > 1e-3  # a real update, large against the tolerance
            torch.testing.assert_close(weights[k], single[k], atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"rank {r}, after step {k}: {m}")


def _grpo(cfg: GRPOConfig, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights before and after one grpo_update on this rank's part of the fixed rollout (sharded on 2 ranks)."""
    model, _ = load_model("qwen2-micro", seed=0)
    ref = load_reference(cfg, model) if cfg.beta > 0 else None  # a whole copy, as train_grpo makes it
    policy = distributed.wrap(GroupedLogprobs(model), fsdp=True)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0)
    before = _flat(model, policy)
    grpo_update(_rollout(rank, world), cfg, policy, opt, sched, NonFiniteGuard(1), ref_model=ref,
                generator=torch.Generator().manual_seed(0), norm_len=4)
    return before, _flat(model, policy)


def _rank_grpo(rank: int, world: int, port: int, result: dict) -> None:
    join(rank, world, port)
    result[rank] = {name: _grpo(cfg, rank, world)[1] for name, cfg in CONFIGS.items()}
    dist.destroy_process_group()


def test_grpo_update_sharded_on_two_ranks_equals_one_rank():
    torch.set_num_threads(1)
    single = {name: _grpo(cfg, 0, 1) for name, cfg in CONFIGS.items()}
    result = run_ranks(_rank_grpo)
    for name, (before, after) in single.items():
        assert (after - before).abs().max() > 1e-3, name
        for r in (0, 1):
            torch.testing.assert_close(result[r][name], after, atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{name}, rank {r}: {m}")


def _rank_train(rank: int, world: int, port: int, out: str, result: dict) -> None:
    join(rank, world, port)
    result[rank] = train_sft(SFTConfig(**TRAIN, steps=3, out=out, fsdp=True))
    dist.destroy_process_group()


def _saved_keys(model_dir) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_sharded_sft_run_writes_whole_tensors_and_resumes_on_one_process(tmp_path):
    out = tmp_path / "run"
    result = run_ranks(_rank_train, str(out))
    assert result[0]["eval/loss"] == result[1]["eval/loss"]

    # The final model is a plain model directory, the one the ranks evaluated, with the tensors a one-process
    # save writes (the tied LM head not written twice).
    model, tok = load_model(out / "model")
    save_model(*load_model("qwen2-micro", seed=0), tmp_path / "plain")
    assert _saved_keys(out / "model") == _saved_keys(tmp_path / "plain")
    task = load_task("arithmetic", n_train=64, n_eval=7, seed=0)
    one_process = eval_loss(model, encode_examples(tok, task.eval, 128), 8, tok.pad_token_id, torch.device("cpu"))
    assert result[0]["eval/loss"] == pytest.approx(one_process, rel=1e-5)

    # The checkpoint holds whole tensors in the layout of a one-process run: weights by name, AdamW moments
    # by parameter position, each of its parameter's full shape.
    step, state = load_checkpoint(out / "checkpoints" / "step_00000003")
    fresh, _ = load_model("qwen2-micro", seed=0)
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    params = list(fresh.parameters())
    assert state["optim"]["param_groups"][0]["params"] == list(range(len(params)))
    assert [state["optim"]["state"][i]["exp_avg"].shape for i in range(len(params))] == [p.shape for p in params]
    torch.testing.assert_close(state["model"]["model.norm.weight"], model.model.norm.weight, rtol=0, atol=0)

    # One process without FSDP continues the run.
    summary = train_sft(SFTConfig(**TRAIN, steps=4, out=str(out), resume=True))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["steps"] == 4


def digit_fraction(prompts, completions, **_):
    return [sum(c.isdigit() for c in s) / len(s) if s else 0.0 for s in completions]


TASK = Task("digits", "completion", [{"prompt": p} for p in ("ab", "cd", "ef", "gh", "ij", "kl")],
            [{"prompt": p} for p in ("xy", "zw", "uv")], (digit_fraction,), (1.0,), max_new_tokens=4)
GRPO = dict(prompts_per_step=4, group_size=4, lr=1e-2, save_every=2, eval_every=2, loss_agg="token_mean",
            beta=0.04)


def _rank_grpo_run(rank: int, world: int, port: int, out: str, result: dict) -> None:
    join(rank, world, port)
    model, tok = load_model("qwen2-micro", seed=0)
    train_grpo(GRPOConfig(steps=2, fsdp=True, **GRPO), out, model=model, tokenizer=tok, task=TASK, progress=False)
    result[rank] = torch.cat([p.detach().flatten() for p in load_model(out + "/model")[0].parameters()]) \
        if rank == 0 else None
    dist.destroy_process_group()


def test_sharded_grpo_run_samples_evaluates_and_resumes_on_one_process(tmp_path):
    out = tmp_path / "run"
    trained = run_ranks(_rank_grpo_run, str(out))[0]
    initial = torch.cat([p.detach().flatten() for p in load_model("qwen2-micro", seed=0)[0].parameters()])
    assert (trained - initial).abs().max() > 1e-4  # the saved model is the trained one
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "eval/digit_fraction" in rows[1]
    step, state = load_checkpoint(out / "checkpoints" / "step_00000002")
    saved = load_model(out / "model")[0].state_dict()
    assert state["model"].keys() == saved.keys()
    for k, v in saved.items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0, msg=k)

    model, tok = load_model("qwen2-micro", seed=0)
    summary = train_grpo(GRPOConfig(steps=3, **GRPO), out, model=model, tokenizer=tok, task=TASK, progress=False,
                         resume=True)
    assert summary["steps"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
