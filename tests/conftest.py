"""Fixtures shared by the test modules."""

import pytest
import torch

from hf_kd import load_image_data


@pytest.fixture(scope="module")
def data():
    """Tiny split of the offline digits data (real images, no download)."""
    return load_image_data("digits", max_train_samples=64, max_eval_samples=32)


@pytest.fixture(scope="module")
def one_thread():
    """2 shared cores: one intra-op thread is several times faster than two oversubscribed ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

