"""SFT under DistributedDataParallel (2 gloo processes).

The update must not depend on the number of processes: the same global batch trained by one process, or by
two holding half the rows each, gives the same weights. The optimizer here is plain SGD, on purpose: Adam's
first step is lr * g / (|g| + eps), about lr * sign(g), which would hide a gradient of the wrong scale and
turn rounding noise in near-zero components into differences of 2 lr. Gradient clipping is off for the same
reason. The rows of each half hold different numbers of completion tokens, so dividing each rank's sum by
its own count instead of the global one gives another gradient; one batch of a single row leaves rank 1
without rows of its own (it runs row 0 with weight 0 to join the all-reduce).
"""

import json

import pytest
import torch
import torch.distributed as dist

from gradascent.algos.sft import SFTConfig, collate, encode_examples, eval_loss, pack, sft_step, train_sft
from gradascent.lm import SequenceLogprobs, char_tokenizer, load_model
from gradascent.run.guard import NonFiniteGuard
from gradascent.tasks import load_task
from _group import join, run_ranks

pytestmark = pytest.mark.xdist_group("dist")

ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in
        [(1, 2), (40, 59), (7, 8), (123, 456), (9, 9), (30, 4), (5, 95), (61, 7)]]
LR = 0.5




def _batches() -> list:
    """Global batches: 8 rows (4 per rank, 24 and 30 completion tokens), 3 rows (2 and 1), 8 examples packed
    into rows of 24 tokens with restarting positions, and 1 row (rank 1 has none)."""
    tok = char_tokenizer()
    ex = encode_examples(tok, ROWS, max_length=32)
    pad = tok.pad_token_id
    return [(*collate(ex, pad), None), (*collate(ex[:3], pad), None), pack(ex, 24, pad), (*collate(ex[3:4], pad), None)]


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _train(ddp: bool) -> list[torch.Tensor]:
    """The weights after each sft_step over _batches(), in this process (one of the ranks when ``ddp``)."""
    model, _ = load_model("qwen2-micro", seed=0)
    lm = SequenceLogprobs(model)
    if ddp:
        lm = torch.nn.parallel.DistributedDataParallel(lm)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    guard = NonFiniteGuard(1)
    out = [_flat(model)]
    for batch in _batches():
        _, grad_norm = sft_step(lm, opt, guard, batch, max_grad_norm=0.0, device=torch.device("cpu"))
        assert grad_norm is not None
        out.append(_flat(model))
    return out


def _rank_steps(rank: int, world: int, port: int, result: dict) -> None:
    join(rank, world, port)
    result[rank] = _train(ddp=True)
    dist.destroy_process_group()


def test_sft_step_on_two_ranks_equals_one_rank():
    torch.set_num_threads(1)
    single = _train(ddp=False)
    result = run_ranks(_rank_steps)
    two = [result[0], result[1]]
    for r in (0, 1):
        for k in range(1, len(single)):
            # The update is large against the tolerance: the comparison has something to compare.
            assert (single[k] - single[k - 1]).abs().max() > 1e-3
            torch.testing.assert_close(two[r][k], single[k], atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"rank {r}, after batch {k}: {m}")


TRAIN = dict(model="qwen2-micro", task="arithmetic", n_train=64, n_eval=7, batch_size=8, lr=3e-3, warmup_steps=0,
             lr_schedule="constant", log_every=1, eval_every=0, eval_generate=5, save_every=2, progress=False)


def _rank_train(rank: int, world: int, port: int, out: str, result: dict) -> None:
    join(rank, world, port)
    result[rank] = train_sft(SFTConfig(**TRAIN, steps=3, out=out))
    dist.destroy_process_group()


def test_sft_trainer_on_two_ranks_writes_once_and_resumes_on_one(tmp_path):
    out = str(tmp_path / "run")
    result = run_ranks(_rank_train, out)
    s0, s1 = result[0], result[1]
    # The evaluation is sharded (7 eval rows: 4 and 3; 5 prompts completed: 3 and 2) and reduced: both ranks
    # report the same figures, and the loss equals the one process's loss over all 7 rows.
    assert {k: v for k, v in s0.items() if k.startswith("eval/")} == {k: v for k, v in s1.items() if k.startswith("eval/")}
    model, tok = load_model(tmp_path / "run" / "model")
    task = load_task("arithmetic", n_train=64, n_eval=7, seed=0)
    one_process = eval_loss(model, encode_examples(tok, task.eval, 128), 8, tok.pad_token_id, torch.device("cpu"))
    assert s0["eval/loss"] == pytest.approx(one_process, rel=1e-5)

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # written once, by rank 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]

    # The checkpoint holds nothing that belongs to one rank: one process continues the two processes' run.
    summary = train_sft(SFTConfig(**TRAIN, steps=4, out=out, resume=True))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["steps"] == 4
    assert rows[3]["tokens"] > rows[2]["tokens"] == s0["tokens"]
