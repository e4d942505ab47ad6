"""Spectral identification (solvers.spectral) and its place in the automatic search.

Targets are built independently with numpy/scipy (scipy.linalg.circulant / toeplitz /
hadamard, dense numpy inverses); results are checked by rebuilding the dense matrix from
the returned factors' own data (tests/_reference.op_dense)."""
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

import kfit
import solvers
from _reference import butterfly_dense, op_dense, perm_dense, random_twiddles, rel_err


@pytest.mark.parametrize("n", [2, 4, 16, 64, 256])
def test_real_circulant(n):
    rng = np.random.default_rng(n)
    M = scipy.linalg.circulant(rng.standard_normal(n))
    r = solvers.spectral(M)
    assert r.status == "exact", r.message
    assert r.solver == "spectral" and r.error <= 1e-12
    assert rel_err(op_dense(r.kmatrix), M) <= 1e-12
    K = r.kmatrix
    assert len(K.butterflies) == 2
    # complex eigenvectors (n = 2 is symmetric: real ones), so the real part is taken
    cplx = K.butterflies[0].is_complex
    assert K.real_output == cplx and (cplx or n == 2)
    assert K.butterflies[0].increasing != K.butterflies[1].increasing  # B · B*
    x = rng.standard_normal((3, n))
    assert rel_err(K(torch.from_numpy(x)), x @ M.T) <= 1e-12


@pytest.mark.parametrize("n", [8, 128])
def test_complex_circulant(n):
    rng = np.random.default_rng(1)
    M = scipy.linalg.circulant(rng.standard_normal(n) + 1j * rng.standard_normal(n))
    r = solvers.spectral(M)
    assert r.status == "exact", r.message
    assert not r.kmatrix.real_output
    assert rel_err(op_dense(r.kmatrix), M) <= 1e-12


@pytest.mark.parametrize("n", [8, 64])
def test_dyadic_convolution_is_hermitian_path(n):
    # M[i, j] = h[i xor j] is diagonalised by the Hadamard matrix: symmetric, real
    # eigenvectors, so the factorization needs no complex numbers.
    rng = np.random.default_rng(2)
    h = rng.standard_normal(n)
    i = np.arange(n)
    M = h[i[:, None] ^ i[None, :]]
    H = scipy.linalg.hadamard(n) / np.sqrt(n)
    assert np.allclose(H @ M @ H, np.diag(np.diag(H @ M @ H)))  # the premise, checked
    r = solvers.spectral(M)
    assert r.status == "exact", r.message
    assert r.info["hermitian"] and not r.kmatrix.butterflies[0].is_complex
    assert rel_err(op_dense(r.kmatrix), M) <= 1e-12


@pytest.mark.parametrize("n", [16, 64])
def test_any_butterfly_basis_with_permutations(n):
    # M = V diag(lam) V^{-1}, V = P1 · B · P2 with a random (unitary) butterfly and random
    # permutations; the inverse by numpy.
    rng = np.random.default_rng(n)
    B = butterfly_dense(random_twiddles(rng, n, complex_=True, kind="orthogonal"), True)
    V = perm_dense(rng.permutation(n)) @ B @ perm_dense(rng.permutation(n))
    lam = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    M = V @ np.diag(lam) @ np.linalg.inv(V)
    r = solvers.spectral(M)
    assert r.status == "exact", r.message
    assert rel_err(op_dense(r.kmatrix), M) <= 1e-12
    assert r.info["offdiag"] <= 1e-12


def test_repeated_eigenvalues_are_not_in_class():
    # The unitary DFT has eigenvalues in {1, -1, i, -i}: eigenvectors are not unique.
    n = 16
    F = np.fft.fft(np.eye(n)) / np.sqrt(n)
    r = solvers.spectral(F)
    assert r.status == "not_in_class" and r.kmatrix is None
    assert "eigenvalues repeat" in r.message and r.info["min_eigenvalue_gap"] < 1e-8
    # a symmetric circulant: lambda_k = lambda_{n-k}
    c = np.random.default_rng(0).standard_normal(n)
    c[1:] = (c[1:] + c[1:][::-1]) / 2
    assert solvers.spectral(scipy.linalg.circulant(c)).status == "not_in_class"


def test_unstructured_eigenvectors_are_not_in_class():
    M = np.random.default_rng(3).standard_normal((32, 32))
    r = solvers.spectral(M)
    assert r.status == "not_in_class" and r.kmatrix is None
    assert "eigenvectors are not of the form" in r.message
    assert not r.success


def test_float32_input_uses_single_tolerance():
    M = scipy.linalg.circulant(np.random.default_rng(4).standard_normal(32)).astype(np.float32)
    r = solvers.spectral(M)
    assert r.status == "exact" and r.tol == 1e-5 and r.dtype == "float32"
    assert r.kmatrix.butterflies[0].dtype == torch.complex64 and r.kmatrix.real_output
    assert rel_err(op_dense(r.kmatrix), M.astype(np.float64)) <= 1e-5


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="M"):
        solvers.spectral(np.ones((4, 8)))
    with pytest.raises(ValueError, match="power of two"):
        solvers.spectral(np.eye(6))


@pytest.mark.parametrize("n", [32, 128])
def test_fit_identifies_toeplitz_through_its_circulant_lift(n):
    rng = np.random.default_rng(n)
    c, r0 = rng.standard_normal(n), rng.standard_normal(n)
    r0[0] = c[0]
    M = scipy.linalg.toeplitz(c, r0)
    r = solvers.fit(M, time_budget=60)
    assert r.status == "exact" and r.solver == "spectral", r.message
    assert r.kmatrix.expansion == 2
    assert rel_err(op_dense(r.kmatrix), M) <= 1e-12
    steps = [s["step"] for s in r.info["search"]]
    assert steps[-1] == "Toeplitz -> circulant 2n, spectral"


def test_fit_identifies_circulant_spectrally():
    M = kfit.targets.get("circulant", 64, seed=3)
    r = solvers.fit(M, time_budget=60)
    assert r.solver == "spectral" and r.status == "exact", r.message
    ref = scipy.linalg.circulant(np.random.default_rng(3).standard_normal(64))
    assert rel_err(op_dense(r.kmatrix), ref) <= 1e-12


def test_cli_spectral_solver():
    out = subprocess.run(
        [sys.executable, "-m", "kfit._cli", "fit", "circulant", "-n", "32", "--seed", "1", "--solver", "spectral", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    import json

    res = json.loads(out)
    assert res["solver"] == "spectral" and res["status"] == "exact" and res["error"] <= 1e-12
