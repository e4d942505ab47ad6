"""kfit.known: the classical fast algorithms against their scipy / numpy targets.

Targets follow scipy's conventions (DESIGN.md): ``scipy.fft.fft(I, norm="ortho")``,
``scipy.fft.dct(I, type=2, norm="ortho")``, ``scipy.linalg.hadamard(n) / sqrt(n)``,
``scipy.linalg.circulant(c)``, ``scipy.linalg.toeplitz(c, r)``, and ``P[i, perm[i]] = 1``.
Errors are relative Frobenius errors of the whole matrix for every power of two to 4096.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch

from _reference import (
    POWERS_TO_4096,
    brute_bit_reversal,
    op_dense,
    perm_dense,
    random_vectors,
    rel_err,
    to_numpy,
)
from kfit import Butterfly, Diagonal, Permutation, known

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TOL = 1e-12
PATHS = ("reference", "fused", "numba")


def kmatrix_error(K, M: np.ndarray, seed: int = 0) -> float:
    """Largest relative error of K against M: the whole matrix (K.to_dense(); for n <= 256
    also through both product paths), and products with random complex vectors on both
    paths (``Re(A)`` extends linearly to complex vectors)."""
    n = K.n
    assert M.shape == (n, n)
    errs = [rel_err(K.to_dense(), M)]
    if n <= 256:
        errs += [rel_err(K.to_dense(path=p), M) for p in PATHS]
    X = random_vectors(np.random.default_rng(seed), (3, n), complex_=True)
    ref = X.real @ M.T + 1j * (X.imag @ M.T)  # M may be real: no complex copy of M
    for p in PATHS:
        errs.append(rel_err(K(torch.from_numpy(X), path=p), ref))
    return max(errs)


def _eye(n):
    return np.eye(n)


# ======================================================================================
# Fourier, Hadamard, cosine and sine transforms


@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_dft(n):
    K = known.dft(n)
    M = scipy.fft.fft(_eye(n), norm="ortho", axis=0)
    assert kmatrix_error(K, M) <= TOL


@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_idft(n):
    K = known.idft(n)
    M = scipy.fft.ifft(_eye(n), norm="ortho", axis=0)
    assert kmatrix_error(K, M) <= TOL


@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_hadamard(n):
    K = known.hadamard(n)
    M = scipy.linalg.hadamard(n).astype(np.float64) / np.sqrt(n)
    assert kmatrix_error(K, M) <= TOL
    assert not K.is_complex and not K.output_is_complex


@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_dct2(n):
    K = known.dct2(n)
    M = scipy.fft.dct(_eye(n), type=2, norm="ortho", axis=0)
    assert kmatrix_error(K, M) <= TOL


@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_dst2(n):
    K = known.dst2(n)
    M = scipy.fft.dst(_eye(n), type=2, norm="ortho", axis=0)
    assert kmatrix_error(K, M) <= TOL


@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_circulant_real_kernel(n, rng):
    c = rng.standard_normal(n)
    K = known.circulant(c)
    assert not K.output_is_complex
    assert kmatrix_error(K, scipy.linalg.circulant(c)) <= TOL


@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_circulant_complex_kernel(n, rng):
    c = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    K = known.circulant(torch.from_numpy(c))
    assert K.output_is_complex
    assert kmatrix_error(K, scipy.linalg.circulant(c)) <= TOL


@pytest.mark.parametrize("n", POWERS_TO_4096[:-1])  # 2 .. 2048: the working size is 2n
def test_toeplitz(n, rng):
    c, r = rng.standard_normal(n), rng.standard_normal(n)  # r[0] differs from c[0]: ignored
    K = known.toeplitz(c, r)
    assert K.expansion == 2 and K.N == 2 * n and K.n == n
    assert kmatrix_error(K, scipy.linalg.toeplitz(c, r)) <= TOL


@pytest.mark.parametrize("n", [2, 4, 8, 64, 512])
def test_toeplitz_complex_and_default_row(n, rng):
    c = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    r = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    assert kmatrix_error(known.toeplitz(c, r), scipy.linalg.toeplitz(c, r)) <= TOL
    # r omitted: r = conj(c), as scipy does (a Hermitian Toeplitz matrix)
    assert kmatrix_error(known.toeplitz(c), scipy.linalg.toeplitz(c)) <= TOL
    cr = rng.standard_normal(n)
    assert kmatrix_error(known.toeplitz(cr), scipy.linalg.toeplitz(cr)) <= TOL
    # complex row, real column
    assert kmatrix_error(known.toeplitz(cr, r), scipy.linalg.toeplitz(cr, r)) <= TOL


# ======================================================================================
# permutations: exact, 0/1 twiddles, up to 65536


def _check_switch_twiddles(K):
    """Every 2x2 block is exactly the identity or the swap (so K is a permutation matrix)."""
    eye = np.eye(2)
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    bs = [f for f in K.factors if isinstance(f, Butterfly)]
    assert len(bs) == 2 and len(K.factors) == 2
    assert bs[0].increasing is True and bs[1].increasing is False  # B · B*
    for b in bs:
        tw = to_numpy(b.twiddle)
        assert np.isin(tw, (0.0, 1.0)).all(), "twiddles must be exactly 0 or 1"
        is_eye = (tw == eye).all(axis=(-1, -2))
        is_swap = (tw == swap).all(axis=(-1, -2))
        assert (is_eye | is_swap).all()


@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_permutation_dense_exact(n, rng):
    perms = [rng.permutation(n)]
    if n <= 256:
        perms += [rng.permutation(n), np.arange(n)[::-1].copy(), brute_bit_reversal(n), (np.arange(n) + 1) % n]
    for perm in perms:
        K = known.permutation(perm)
        _check_switch_twiddles(K)
        M = perm_dense(perm)
        assert kmatrix_error(K, M) == 0.0
        if n <= 256:
            assert np.array_equal(to_numpy(K.to_dense()), M)


@pytest.mark.parametrize("n", [2**k for k in range(13, 17)])  # 8192 .. 65536: no dense matrix
def test_permutation_large_exact(n, rng):
    perm = rng.permutation(n)
    K = known.permutation(perm)
    _check_switch_twiddles(K)
    X = np.concatenate([np.arange(n, dtype=np.float64)[None], random_vectors(rng, (3, n))])
    # The fused path builds dense sqrt(n) x sqrt(n) blocks (O(n^1.5) work per butterfly):
    # exercised up to 16384; the largest sizes use the level-by-level reference path (and the
    # numba kernel, which has no such cost).
    paths = ("reference", "fused", "numba") if n <= 16384 else ("reference", "numba")
    for path in paths:
        Y = to_numpy(K(torch.from_numpy(X), path=path))
        assert np.array_equal(Y[0], perm.astype(np.float64))  # arange -> perm, exactly
        assert np.array_equal(Y[1:], X[1:, perm])
    y = to_numpy(K(torch.arange(n, dtype=torch.float64), path="reference"))
    assert y.shape == (n,) and np.array_equal(y, perm.astype(np.float64))


def test_permutation_accepts_permutation_and_tensor(rng):
    n = 32
    perm = rng.permutation(n)
    M = perm_dense(perm)
    for arg in (Permutation(perm), torch.from_numpy(perm), list(perm)):
        assert np.array_equal(to_numpy(known.permutation(arg).to_dense()), M)


# ======================================================================================
# structure (the factorizations the docstrings and DESIGN.md state)


@pytest.mark.parametrize("n", [2, 16, 128])
def test_structures(n, rng):
    K = known.dft(n)
    assert isinstance(K.factors[0], Butterfly) and K.factors[0].increasing and K.factors[0].is_complex
    assert isinstance(K.factors[1], Permutation)
    assert np.array_equal(to_numpy(K.factors[1].perm), brute_bit_reversal(n))
    H = known.hadamard(n)
    assert len(H.factors) == 1 and isinstance(H.factors[0], Butterfly) and not H.factors[0].is_complex
    tw = to_numpy(H.factors[0].twiddle)
    assert np.allclose(tw, np.array([[1, 1], [1, -1]]) / np.sqrt(2), rtol=0, atol=1e-15)
    C = known.circulant(rng.standard_normal(n))
    bs = [f for f in C.factors if isinstance(f, Butterfly)]
    assert len(bs) == 2 and C.width == 1
    assert any(isinstance(f, Diagonal) for f in C.factors)
    D = known.dct2(n)
    assert D.real_output and D.n == n
    # the factors' own dense matrices multiply out to the target (independent assembly)
    assert rel_err(op_dense(D), scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)) <= TOL
    assert rel_err(op_dense(K), scipy.fft.fft(np.eye(n), norm="ortho", axis=0)) <= TOL


# ======================================================================================
# single precision


@pytest.mark.parametrize("n", [8, 256, 2048])
def test_single_precision(n, rng):
    x = random_vectors(rng, (3, n))
    x32 = torch.from_numpy(x).to(torch.float32)
    cases = [
        (known.dft(n, dtype=torch.complex64), scipy.fft.fft(x, norm="ortho", axis=-1)),
        (known.dct2(n, dtype=torch.complex64), scipy.fft.dct(x, type=2, norm="ortho", axis=-1)),
        (known.dst2(n, dtype=torch.complex64), scipy.fft.dst(x, type=2, norm="ortho", axis=-1)),
        (known.hadamard(n, dtype=torch.float32), x @ scipy.linalg.hadamard(n).T / np.sqrt(n)),
    ]
    for K, ref in cases:
        y = K(x32)
        assert y.dtype in (torch.float32, torch.complex64)
        assert rel_err(y, ref) <= 1e-5


# ======================================================================================
# 8. errors


@pytest.mark.parametrize("bad,pad", [(12, "16"), (6, "8"), (3, "4"), (1000, "1024")])
def test_non_power_of_two(bad, pad):
    for make in (known.dft, known.idft, known.hadamard, known.dct2, known.dst2):
        with pytest.raises(ValueError) as ei:
            make(bad)
        assert pad in str(ei.value) and str(bad) in str(ei.value)
    with pytest.raises(ValueError) as ei:
        known.circulant(np.ones(bad))
    assert pad in str(ei.value) and "kernel" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        known.toeplitz(np.ones(bad))
    assert pad in str(ei.value) and "c" in str(ei.value)


def test_known_argument_errors():
    with pytest.raises(ValueError) as ei:
        known.circulant(np.ones((4, 4)))
    assert "kernel" in str(ei.value) and "(4, 4)" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        known.circulant(np.array([1.0, np.nan, 0.0, 1.0]))
    assert "kernel" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        known.toeplitz(np.ones(4), np.ones(8))
    assert "c" in str(ei.value) and "r" in str(ei.value) and "4" in str(ei.value) and "8" in str(ei.value)
    with pytest.raises(ValueError, match="perm"):
        known.permutation([0, 0, 1, 2])
