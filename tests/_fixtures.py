"""Inputs shared by several test modules (built with kfit; the references they are checked
against live in _reference.py)."""
from __future__ import annotations

import torch

import kfit


def perturbed(K: "kfit.KMatrix", scale: float, seed: int = 0) -> "kfit.KMatrix":
    """``K`` with Gaussian noise of standard deviation ``scale`` added to every twiddle
    (permutations kept): a start near a known solution, for the second-order finish."""
    g = torch.Generator().manual_seed(seed)
    return kfit.KMatrix([
        kfit.Butterfly(f.twiddle + scale * torch.randn(f.twiddle.shape, generator=g, dtype=torch.float64))
        if isinstance(f, kfit.Butterfly) else f
        for f in K.factors
    ])
