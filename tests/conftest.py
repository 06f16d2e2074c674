"""One intra-op thread for the whole suite: its micro models and tiny MLPs gain nothing from more, and on a
shared machine oversubscribed threads slow them several-fold. (Tests that start processes set their own.)"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
