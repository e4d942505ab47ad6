"""Tests for solvers.fit_splitting: ``M = B · B*`` fitted level by level from random starts.

Targets come from scipy.linalg (circulant, toeplitz, hadamard) or from numpy products of
random butterflies (``_reference.butterfly_dense``); every result is checked by rebuilding
its dense matrix from the returned factors in numpy (``_reference.op_dense``, level by
level), never by the library's own product.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import kfit
from solvers import SplittingConfig, fit, fit_splitting, spectral
from solvers.splitting import _diag_lstsq

from _reference import butterfly_dense, random_twiddles
from _reference import op_dense as dense_from_factors
from _reference import rel_err as rel


def symmetric_kernel(rng, n):
    c = rng.standard_normal(n)
    c[1:] = (c[1:] + c[1:][::-1]) / 2  # c_k = c_{n-k}: a symmetric circulant, eigenvalues in pairs
    return c


def check(r, ref, tol=1e-12):
    assert r.status == "converged", r.message
    assert r.solver == "splitting"
    got = dense_from_factors(r.kmatrix)
    assert rel(got, ref) <= tol
    assert abs(rel(got, ref) - r.error) <= 1e-13  # the reported error is the real one
    return got


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_random_circulants(n):
    rng = np.random.default_rng(n)
    C = scipy.linalg.circulant(rng.standard_normal(n))
    r = fit_splitting(C)
    check(r, C)
    K = r.kmatrix
    assert [type(f).__name__ for f in K.factors] == ["Butterfly", "Butterfly"]
    assert K.factors[0].increasing and not K.factors[1].increasing
    assert K.real_output and K.factors[0].twiddle.is_complex()  # real target: complex twiddles, real part


@pytest.mark.parametrize("n", [8, 32])
def test_complex_and_symmetric_circulants(n):
    rng = np.random.default_rng(10 + n)
    Cc = scipy.linalg.circulant(rng.standard_normal(n) + 1j * rng.standard_normal(n))
    r = fit_splitting(Cc)
    check(r, Cc)
    assert not r.kmatrix.real_output
    Cs = scipy.linalg.circulant(symmetric_kernel(rng, n))
    # spectral identification cannot (repeated eigenvalues); splitting can
    assert spectral(Cs).status == "not_in_class"
    check(fit_splitting(Cs), Cs)


@pytest.mark.parametrize("n", [8, 16, 32])
def test_products_of_two_random_butterflies_and_dyadic_convolutions(n):
    rng = np.random.default_rng(20 + n)
    B = butterfly_dense(random_twiddles(rng, n, complex_=True), increasing=True)
    Bs = butterfly_dense(random_twiddles(rng, n, complex_=True), increasing=False)
    check(fit_splitting(B @ Bs), B @ Bs)
    H = scipy.linalg.hadamard(n) / np.sqrt(n)
    D = H @ np.diag(rng.standard_normal(n)) @ H
    check(fit_splitting(D), D)


def test_a_generic_4x4_matrix_is_split_exactly():
    # 4x4: the closed-form split (a quadratic); every generic complex 4x4 matrix is B · B*
    rng = np.random.default_rng(3)
    for _ in range(20):
        X = rng.standard_normal((4, 4)) + 1j * rng.standard_normal((4, 4))
        r = fit_splitting(X)
        check(r, X, tol=1e-13)
        assert r.info["sweeps"] == 0


def test_the_alternation_alone_and_with_newton_both_converge():
    rng = np.random.default_rng(4)
    C = scipy.linalg.circulant(symmetric_kernel(rng, 32))
    alone = fit_splitting(C, newton_steps=0, finish="none")
    check(alone, C)
    default = fit_splitting(C, finish="none")
    check(default, C)
    assert default.info["sweeps"] < alone.info["sweeps"]  # Newton takes over from 1e-2


def test_diag_lstsq_matches_numpy_lstsq():
    # min ||R + diag(a) P + Q diag(b)||_F written out as an explicit h^2 x 2h system
    rng = np.random.default_rng(5)
    h = 5
    P, Q, R = (rng.standard_normal((h, h)) + 1j * rng.standard_normal((h, h)) for _ in range(3))
    A = np.zeros((h * h, 2 * h), complex)
    for i in range(h):
        for j in range(h):
            A[i * h + j, i] = P[i, j]
            A[i * h + j, h + j] = Q[i, j]
    ref = np.linalg.lstsq(A, -R.ravel(), rcond=None)[0]
    a, b = _diag_lstsq(*(torch.from_numpy(x)[None] for x in (P, Q, R)))
    got = np.concatenate([a[0].numpy(), b[0].numpy()])
    # the gauge (a, b) -> (a + t, b - t) is not a null direction here; compare residuals and solutions
    assert np.linalg.norm(A @ got + R.ravel()) <= np.linalg.norm(A @ ref + R.ravel()) * (1 + 1e-10)
    assert np.allclose(got, ref, atol=1e-10)


def test_toeplitz_through_fit_without_closed_forms():
    for n in (8, 16, 32):
        rng = np.random.default_rng(30 + n)
        T = scipy.linalg.toeplitz(rng.standard_normal(n), rng.standard_normal(n))
        r = fit(T, closed_form=False, time_budget=60)
        assert r.status == "converged" and r.solver == "splitting", r.message
        assert r.kmatrix.expansion == 2
        assert rel(dense_from_factors(r.kmatrix), T) <= 1e-12
        assert r.info["search"][-1]["step"] == "Toeplitz -> circulant 2n, B · B* by splitting"


def test_registry_convolutions_through_fit_without_closed_forms():
    for name in ("circulant", "toeplitz"):
        M = kfit.targets.get(name, 32, seed=2)
        r = fit(M, closed_form=False, time_budget=60)
        assert r.status == "converged" and r.solver == "splitting", r.message
        assert rel(dense_from_factors(r.kmatrix), M.numpy()) <= 1e-12


def test_fit_uses_splitting_for_a_symmetric_circulant_with_closed_forms():
    rng = np.random.default_rng(6)
    C = scipy.linalg.circulant(symmetric_kernel(rng, 64))
    r = fit(C, time_budget=60)
    assert r.status == "converged" and r.solver == "splitting", r.message
    assert "spectral P·B·B*·Pᵀ" in [s["step"] for s in r.info["search"]]
    assert rel(dense_from_factors(r.kmatrix), C) <= 1e-12


def test_fit_splits_a_product_of_butterflies_that_is_not_toeplitz():
    rng = np.random.default_rng(7)
    n = 16
    M = butterfly_dense(random_twiddles(rng, n, complex_=True), True) @ butterfly_dense(
        random_twiddles(rng, n, complex_=True), False)
    r = fit(M, closed_form=False, time_budget=60)
    assert r.status == "converged" and r.solver == "splitting", r.message
    assert r.info["search"][-1]["step"] == "B · B* by recursive splitting"
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12


@pytest.mark.parametrize("name", ["randn", "dct2"])
def test_a_matrix_outside_the_class_is_reported_not_raised(name):
    M = kfit.targets.get(name, 32)
    r = fit_splitting(M)
    assert r.status == "stalled" and r.error > 0.1, r.message
    assert r.kmatrix is not None
    assert abs(rel(dense_from_factors(r.kmatrix), M.numpy()) - r.error) <= 1e-12  # its error is real
    assert r.info["levels"][0]["residual"] > 1e-2
    assert all(level["sweeps"] <= 1 for level in r.info["levels"][1:])  # the rest only completed


def test_a_degenerate_split_is_reported_not_raised():
    # The DFT's top level splits exactly, but a 4x4 block below has a double root: the two
    # solutions coincide and the completion's least squares is singular. Before the
    # adjugate inverses this raised from torch.linalg.inv.
    M = kfit.targets.get("dft", 8)
    r = fit_splitting(M)
    assert r.status == "stalled" and r.error > 1e-2, r.message
    assert r.info["levels"][0]["residual"] <= 1e-12 and r.info["levels"][1]["residual"] > 1e-2


def test_seed_reproducibility_and_float32():
    rng = np.random.default_rng(8)
    C = scipy.linalg.circulant(rng.standard_normal(16))
    a, b = fit_splitting(C, seed=3), fit_splitting(C, seed=3)
    for fa, fb in zip(a.kmatrix.factors, b.kmatrix.factors):
        assert torch.equal(fa.twiddle, fb.twiddle)
    r = fit_splitting(C.astype(np.float32))
    assert r.dtype == "float32" and r.tol == 1e-5 and r.status == "converged"
    assert r.kmatrix.factors[0].twiddle.dtype == torch.complex64
    assert rel(dense_from_factors(r.kmatrix), C) <= 1e-6


def test_budget_status():
    C = scipy.linalg.circulant(np.random.default_rng(9).standard_normal(64))
    r = fit_splitting(C, time_budget=0.0, finish="none")
    assert r.status in ("budget", "converged")  # one sweep per level always runs
    assert r.kmatrix is not None and np.isfinite(r.error)
    assert abs(rel(dense_from_factors(r.kmatrix), C) - r.error) <= 1e-12


def test_bad_input_and_settings():
    with pytest.raises(ValueError, match="square"):
        fit_splitting(np.ones((4, 8)))
    with pytest.raises(ValueError, match="power of two"):
        fit_splitting(np.ones((6, 6)))
    with pytest.raises(ValueError, match="NaN|finite"):
        fit_splitting(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="power of two >= 2, got 1"):
        fit_splitting(np.ones((1, 1)))
    with pytest.raises(ValueError, match="starts must be an integer >= 1, got 0"):
        fit_splitting(np.eye(4), starts=0)
    with pytest.raises(ValueError, match="newton_steps must be an integer >= 0"):
        fit_splitting(np.eye(4), newton_steps=-1)
    with pytest.raises(ValueError, match="finish must be 'lm' or 'none'"):
        fit_splitting(np.eye(4), config=SplittingConfig(finish="bfgs"))


def test_cli(capsys):
    from kfit._cli import main

    assert main(["fit", "circulant", "-n", "16", "--solver", "splitting"]) == 0
    out = capsys.readouterr().out
    assert "splitting" in out and "converged" in out
    assert main(["fit", "toeplitz", "-n", "16", "--no-closed-form", "--json"]) == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert d["solver"] == "splitting" and d["status"] == "converged" and d["error"] <= 1e-12
    assert main(["fit", "circulant", "-n", "8", "--solver", "identify", "--no-splitting"]) == 2
    err = capsys.readouterr().err
    assert "--no-splitting chooses the steps of --solver auto" in err and "Traceback" not in err
