"""The process-group helpers that need no process group: sharding rows, and each process's device."""

import torch

from gradascent.run import distributed


def test_each_process_computes_on_its_own_gpu(monkeypatch):
    # torchrun's LOCAL_RANK picks the GPU of a plain 'cuda' (every trainer, PPO's models included); a device
    # with an index, or another kind, is taken as given. No GPU is needed to name one.
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.process_device("cuda") == torch.device("cuda:3")
    assert distributed.process_device("cuda:1") == torch.device("cuda:1")
    assert distributed.process_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.process_device("cuda") == torch.device("cuda:0")


def test_local_rows_give_every_row_once_and_an_empty_rank_a_weightless_row():
    # 5 rows over 2 ranks: 0..2 and 3..4; 1 row over 2 ranks: rank 1 runs row 0 with weight 0.
    assert distributed.local_rows(5, 0, 2) == (slice(0, 3), 1.0)
    assert distributed.local_rows(5, 1, 2) == (slice(3, 5), 1.0)
    assert distributed.local_rows(1, 1, 2) == (slice(0, 1), 0.0)
