"""Inputs shared by several test modules (built with kfit; the references they are checked
against live in _reference.py)."""
from __future__ import annotations

import pytest
import torch

import kfit

#: Devices for tests that run the same solver call everywhere: "cpu", and "cuda" where a
#: GPU is present (skipped elsewhere; CI has none).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


def perturbed(K: "kfit.KMatrix", scale: float, seed: int = 0) -> "kfit.KMatrix":
    """``K`` with Gaussian noise of standard deviation ``scale`` added to every twiddle
    (permutations kept): a start near a known solution, for the second-order finish."""
    g = torch.Generator().manual_seed(seed)
    return kfit.KMatrix([
        kfit.Butterfly(f.twiddle + scale * torch.randn(f.twiddle.shape, generator=g, dtype=torch.float64))
        if isinstance(f, kfit.Butterfly) else f
        for f in K.factors
    ])
