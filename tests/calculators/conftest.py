import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny (a few thousand parameters, tens of edges): a second intra-op thread
    # buys nothing, and on a loaded 2-core machine thread contention made each call many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
