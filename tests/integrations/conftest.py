import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models on a shared machine: a second intra-op thread buys nothing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
