"""The reward model under DistributedDataParallel (2 gloo processes) trains as one process does.

15 pairs in batches of 7 give three updates of 7, 7 and 1 pairs: split 4 + 3, 4 + 3 and 1 + none (rank 1
then runs a pair with weight 0 to join the all-reduce). The optimizer is replaced by plain SGD and the clip
is out of reach, on purpose: Adam's first steps are about lr * sign(g), which would hide a gradient of the
wrong scale (here: a rank's mean over its own pairs instead of the sum over the global count). The
learning rate is 0.1: at 0.5 the three updates amplify the float32 rounding of the differently composed
gradient sums (about 1e-6 of the largest component) to some 1e-5 in the weights.
"""

import json
import os

import pytest
import torch
import torch.distributed as dist

from gradascent.algos.reward_model import RewardModelConfig, train_reward_model
from gradascent.lm import RewardModel, load_model, save_model
from gradascent.run import distributed
from _group import run_ranks

pytestmark = pytest.mark.xdist_group("dist")


def _sgd(params, lr, **_):  # stands in for AdamW(params, lr=..., weight_decay=...)
    return torch.optim.SGD(params, lr=lr)


def _config(sft: str, out: str) -> RewardModelConfig:
    return RewardModelConfig(model=sft, out=out, train_pairs=15, eval_pairs=5, batch_size=7, lr=0.1,
                             max_grad_norm=1e9, log_every=1, save_every=2)


def _rank(rank: int, world: int, port: int, sft: str, out: str, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.optim.AdamW = _sgd  # this process only
    distributed.init("cpu")
    result[rank] = train_reward_model(_config(sft, out))
    dist.destroy_process_group()



def _weights(path) -> tuple[torch.Tensor, torch.Tensor]:
    """(backbone, head) weights of a saved reward model, flat."""
    model, _ = RewardModel.from_pretrained(path)
    return tuple(torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (model.backbone, model.head))


def test_reward_model_on_two_ranks_equals_one_rank(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    sft = str(tmp_path / "sft")
    save_model(*load_model("qwen2-micro", seed=0), sft)
    monkeypatch.setattr(torch.optim, "AdamW", _sgd)
    single = train_reward_model(_config(sft, str(tmp_path / "one")))
    result = run_ranks(_rank, sft, str(tmp_path / "two"))

    one, two = _weights(tmp_path / "one" / "model"), _weights(tmp_path / "two" / "model")
    start = torch.cat([p.detach().flatten() for p in load_model(sft)[0].parameters()])
    assert single["steps"] == result[0]["steps"] == 3
    assert (one[0] - start).abs().max() > 1e-3  # the backbone moved well beyond the tolerance
    torch.testing.assert_close(two, one, atol=1e-6, rtol=1e-5)
    # The held-out figures are gathered from both ranks: the same on each, and as in one process.
    for key in ("rm_accuracy", "rm_accuracy_initial", "eval_loss", "eval_margin"):
        assert result[0][key] == result[1][key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # written once, by rank 0
    one_rows = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for r2, r1 in zip(rows[1:], one_rows[1:]):  # per-step training stats are means over all pairs
        assert r2["rm_loss"] == pytest.approx(r1["rm_loss"], rel=1e-5)
        assert r2["accuracy"] == pytest.approx(r1["accuracy"], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
