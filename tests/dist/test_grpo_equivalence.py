"""One GRPO update on 2 gloo processes equals the same update in one process.

Sampling is random, so both settings train on one FIXED rollout (the same completions and rewards): one
process holds all 4 prompts x G = 4 completions, each of two ranks holds 2 prompts and their 8 completions,
and ``grpo_update`` runs on that. The two halves hold different numbers of completion tokens (18 and 21) and
of counted sequences, so a divisor taken per rank instead of over all ranks gives another update.

The optimizer is plain SGD and gradients are not clipped, on purpose: Adam's first step is about
lr * sign(g), which would hide a gradient of the wrong scale and turn rounding noise in near-zero
components into differences of 2 lr.
"""

import os

import pytest
import torch
import torch.distributed as dist

from gradascent.algos.grpo import GRPOConfig, Rollout, grpo_update, load_reference
from gradascent.lm import char_tokenizer, encode_prompts, load_model
from gradascent.lm.grouped import GroupedLogprobs
from gradascent.run import distributed
from gradascent.run.guard import NonFiniteGuard
from _group import run_ranks

pytestmark = pytest.mark.xdist_group("dist")

G, LR = 4, 0.5
PROMPTS = ["12+3=", "7+8=", "40+2=", "5+55="]
# (text, wrote EOS): the completions of prompt p are rows 4p..4p+3; those without EOS were cut at the budget.
COMPLETIONS = [("15", True), ("1", True), ("150", False), ("16", True),
               ("15", True), ("5", True), ("1", False), ("", True),
               ("42", True), ("4", True), ("402", False), ("2", True),
               ("60", True), ("6", True), ("600", False), ("61", True)]
REWARDS = [1.0, 0.0, 0.0, 0.5,
           1.0, 1.0, 1.0, 1.0,  # no spread: filter_zero_std leaves this group out
           1.0, 0.0, 0.25, 0.0,
           0.0, 0.0, 0.0, 1.0]
CONFIGS = {
    "token_mean": GRPOConfig(group_size=G, prompts_per_step=4, loss_agg="token_mean", max_grad_norm=None, lr=LR),
    # Two passes (the second off-policy, with pi_old), two accumulation passes per update, the KL to a
    # reference, a baseline over the whole batch and the zero-spread group filtered out.
    "seq_mean_token_mean": GRPOConfig(group_size=G, prompts_per_step=4, loss_agg="seq_mean_token_mean",
                                      max_grad_norm=None, lr=LR, beta=0.04, num_iterations=2, micro_batch_prompts=1,
                                      advantage="batch_mean", filter_zero_std=True),
    "seq_mean_token_sum_norm": GRPOConfig(group_size=G, prompts_per_step=4, loss_agg="seq_mean_token_sum_norm",
                                          max_grad_norm=None, lr=LR, advantage="rloo", mask_truncated=True,
                                          ent_coef=0.01),
}


def _rollout(rank: int, world: int) -> Rollout:
    """The fixed rollout, or this rank's half of it (same padded widths in both settings)."""
    tok = char_tokenizer()
    prompt_ids, prompt_mask = encode_prompts(tok, PROMPTS)  # (4, Lp), left-padded
    ids = [tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
           for text, eos in COMPLETIONS]
    T = max(len(x) for x in ids)
    completion_ids = torch.full((len(ids), T), tok.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros(len(ids), T, dtype=torch.bool)
    for i, x in enumerate(ids):
        completion_ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        completion_mask[i, :len(x)] = True
    full = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                   torch.tensor([eos for _, eos in COMPLETIONS]), torch.tensor(REWARDS))
    P = len(PROMPTS) // world
    p, r = slice(rank * P, (rank + 1) * P), slice(rank * P * G, (rank + 1) * P * G)
    return Rollout(full.prompt_ids[p], full.prompt_mask[p], full.completion_ids[r], full.completion_mask[r],
                   full.finished[r], full.rewards[r])


def _update(cfg: GRPOConfig, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights before and after one grpo_update on this rank's part of the fixed rollout."""
    model, _ = load_model("qwen2-micro", seed=0)
    ref = load_reference(cfg, model) if cfg.beta > 0 else None
    policy = GroupedLogprobs(model)
    if world > 1:
        policy = torch.nn.parallel.DistributedDataParallel(policy)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    grpo_update(_rollout(rank, world), cfg, policy, opt, sched, NonFiniteGuard(1), ref_model=ref,
                generator=torch.Generator().manual_seed(0), norm_len=4)
    return before, torch.cat([p.detach().flatten() for p in model.parameters()])


def _rank(rank: int, world: int, port: int, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init("cpu")
    result[rank] = {name: _update(cfg, rank, world)[1] for name, cfg in CONFIGS.items()}
    dist.destroy_process_group()


def test_fixed_rollout_counts_differ_between_the_halves():
    halves = [_rollout(r, 2) for r in (0, 1)]
    assert [int(h.completion_mask.sum()) for h in halves] == [18, 21]


def test_grpo_update_on_two_ranks_equals_one_rank():
    torch.set_num_threads(1)
    single = {name: _update(cfg, 0, 1) for name, cfg in CONFIGS.items()}
    result = run_ranks(_rank)
    for name, (before, after) in single.items():
        assert (after - before).abs().max() > 1e-3, name  # a real update, large against the tolerance
        for r in (0, 1):
            torch.testing.assert_close(result[r][name], after, atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{name}, rank {r}: {m}")

