"""Test configuration shared by every test file.

* ``TRITON_INTERPRET=1`` must be set before anything imports triton, so that Triton kernels (when installed) run
  on the CPU through the interpreter; set here, at import time of the first conftest.
* No network at test time: ``VAEBOOK_OFFLINE=1`` disables dataset downloads.
* One intra-op thread: the tests' tensors are small and the CI machine has two cores shared by two workers.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VAEBOOK_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def mnist_available() -> bool:
    from vaebook import data

    try:
        data.load_mnist("test")
        return True
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def mnist_test():
    if not mnist_available():
        pytest.skip("MNIST files not found: set VAEBOOK_DATA (CI sets it to ../shared/data)")
    from vaebook.data import load_mnist

    return load_mnist("test", binarize="static")
