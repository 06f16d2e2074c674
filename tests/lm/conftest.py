"""One intra-op thread for the language-model tests: their micro models gain nothing from more, and on a
shared machine oversubscribed threads slow them several-fold."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
