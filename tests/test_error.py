"""kfit._error.relative_error: the DESIGN.md error convention, against numpy."""
import numpy as np
import pytest
import torch

from kfit import Butterfly, KMatrix, Permutation
from kfit._error import relative_error
from kfit._validate import check_finite


def _np_rel(K, M):
    K, M = np.asarray(K), np.asarray(M)
    return np.linalg.norm(K - M) / np.linalg.norm(M)


@pytest.mark.parametrize("n", [2, 8, 64, 512])
@pytest.mark.parametrize("form", ["PBP", "BP", "PB", "PBBP", "B"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_relative_error_matches_numpy(n, form, dtype):
    """Including the chunked path for permutations at the ends (the n x n permuted copy is
    never formed there) -- against numpy on the dense matrix built from the factors."""
    g = torch.Generator().manual_seed(n)
    B = Butterfly.random(n, dtype=dtype, generator=g)
    B2 = Butterfly.random(n, dtype=dtype, generator=g, increasing=False)
    Po, Pi = Permutation.random(n, generator=g), Permutation.random(n, generator=g)
    factors = {"PBP": [Po, B, Pi], "BP": [B, Pi], "PB": [Po, B], "PBBP": [Po, B, B2, Pi], "B": [B]}[form]
    K = KMatrix(factors)
    # dense reference from numpy: permutation matrices P[i, perm[i]] = 1 and the butterfly's dense
    mats = []
    for f in factors:
        if isinstance(f, Permutation):
            P = np.zeros((n, n))
            P[np.arange(n), f.perm.numpy()] = 1
            mats.append(P)
        else:
            mats.append(f.to_dense().numpy())
    Kd = np.linalg.multi_dot(mats) if len(mats) > 1 else mats[0]
    M = torch.randn(n, n, dtype=dtype, generator=g)
    assert relative_error(K, M).value == pytest.approx(_np_rel(Kd, M.numpy()), rel=1e-12)
    assert relative_error(K, torch.as_tensor(Kd)).value < 1e-14
    assert relative_error(K, M).method == "dense float64"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_catches_every_kind(bad):
    for dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        t = torch.ones(7, 5, dtype=dtype)
        t[3, 2] = bad if not dtype.is_complex else complex(0.0, bad)
        with pytest.raises(ValueError, match=r"M contains 1 non-finite"):
            check_finite(t, "M")
    check_finite(torch.full((3,), 1e308, dtype=torch.float64), "M")  # large but finite
    check_finite(torch.empty(0), "M")
