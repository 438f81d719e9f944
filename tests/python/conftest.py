"""Fixtures shared by the Python tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module's tests: on the two shared cores, torch's thread pool only
    adds contention for these small tensors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
