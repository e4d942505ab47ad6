"""Shared pytest configuration for the kfit tests.

The independent references (dense butterflies from the pair formula, bit reversal, cost
counting from sparse factors, relative errors) live in ``tests/_reference.py``; this file
makes that module and the ``kfit`` package importable and provides a few fixtures.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

_TESTS = Path(__file__).resolve().parent
_ROOT = _TESTS.parent
for _p in (str(_ROOT), str(_TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A numpy generator seeded from the test's node id (reproducible, distinct per test)."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's products on one intra-op thread.

    The products here are many small batched matmuls; on a shared 2-core machine the
    OpenMP threads of torch (and of numpy's BLAS) contend and the same test can take
    10x longer. One thread keeps the suite fast and its run time predictable. The previous
    setting is restored afterwards (other modules are not affected).
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
