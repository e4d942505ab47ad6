"""Tests for solvers.fit_projection: ``M = Re(P_out · B · P_in)`` fitted from random starts
by relaxed alternating projections.

Targets come from scipy.fft / numpy's FFT (``_reference.real_transform``); every result is
checked by rebuilding its dense matrix from the returned factors in numpy
(``_reference.op_dense``, level by level), and the projection against numpy's SVD.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kfit
from solvers import ProjectionConfig, fit, fit_projection
from solvers.projection import project_butterfly

from _reference import butterfly_dense, random_twiddles
from _reference import op_dense as dense_from_factors
from _reference import real_transform
from _reference import rel_err as rel


def test_projection_keeps_a_butterfly():
    rng = np.random.default_rng(0)
    for n in (2, 4, 16, 64):
        B = butterfly_dense(random_twiddles(rng, n, complex_=True), increasing=True)
        P = project_butterfly(torch.from_numpy(B)[None])[0]
        assert rel(P, B) <= 1e-13, n


def test_projection_is_the_rank_one_truncation_of_each_block_at_n4():
    # n = 4: the top level's 2x2 sub-blocks (rows k, k+2; columns 0:2 or 2:4) are replaced by
    # their best rank-one approximations, and the 2x2 children are butterflies already.
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 4)) + 1j * rng.standard_normal((4, 4))
    ref = np.empty_like(X)
    for k in range(2):
        for h in range(2):
            blk = X[[k, k + 2]][:, 2 * h:2 * h + 2]
            U, s, Vh = np.linalg.svd(blk)
            ref[np.ix_([k, k + 2], [2 * h, 2 * h + 1])] = s[0] * np.outer(U[:, 0], Vh[0])
    assert rel(project_butterfly(torch.from_numpy(X)[None])[0], ref) <= 1e-13


def test_projection_of_any_matrix_is_a_butterfly_and_batches():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(3, 32, 32, dtype=torch.complex128, generator=g)
    P = project_butterfly(X)
    assert torch.allclose(project_butterfly(P), P, atol=1e-12)  # a fixed point: in the set
    for s in range(3):
        assert torch.allclose(project_butterfly(X[s:s + 1])[0], P[s], atol=1e-13)
    # identify confirms it with no residual at any level
    from solvers import identify

    r = identify(P[0], row_perm="identity", col_perm="identity")
    assert r.status == "exact"


@pytest.mark.parametrize("n", [8, 16, 32])
@pytest.mark.parametrize("name", ["dct2", "dst2", "dct3", "dct4", "dst4", "hartley"])
def test_fits_the_real_transforms_from_random_starts(name, n):
    M = real_transform(name, n)
    r = fit_projection(M, time_budget=120)
    assert r.status == "converged", r.message
    assert r.solver == "projection" and r.kmatrix.real_output
    assert r.error <= 1e-12
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12
    assert r.info["candidates"] == 128 and r.trace[0][3] == "screen"


def test_the_screen_cuts_the_far_candidates_at_once():
    # Halving alone would go 64, 32, 16, ...; once the right candidates pull ahead (after
    # ~10 iterations) the 10x rule drops the rest in one cut.
    r = fit_projection(real_transform("dct2", 64))
    cuts = r.info["candidates_after_each_cut"]
    assert cuts[0] == 64 and cuts[-1] == 1 and cuts == sorted(cuts, reverse=True)
    assert any(c < (p + 1) // 2 for p, c in zip(cuts, cuts[1:])), cuts
    assert len(cuts) < 7  # fewer cuts than halving's 7 (128 -> 1)


def test_raar_alone_reaches_machine_precision():
    # No second-order finish: the projections themselves converge (DCT-II, n = 16).
    M = real_transform("dct2", 16)
    r = fit_projection(M, finish="none", time_budget=120)
    assert r.status == "converged", r.message
    assert r.info["finish"] is None
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12
    errs = [e for _, _, e, _ in r.trace]
    assert errs == sorted(errs, reverse=True)  # the best error never increases
    assert errs[0] > 1e-2  # it did start far away


def _structure_of(r) -> dict:
    """The permutations and stride order of a fit, as fit_projection's settings."""
    K = r.kmatrix
    return dict(
        row_perm=K.factors[0].perm if isinstance(K.factors[0], kfit.Permutation) else "identity",
        col_perm=K.factors[-1].perm if isinstance(K.factors[-1], kfit.Permutation) else "identity",
        chain="B" if K.butterflies[0].increasing else "B*",
    )


def test_plain_alternating_projections_stagnate_where_raar_does_not():
    # beta -> 0 is (nearly) plain alternating projections: the reason for RAAR (module doc).
    M = real_transform("dct2", 64)
    kw = dict(_structure_of(fit_projection(M)), finish="none", max_iters=300)
    slow = fit_projection(M, beta=0.05, **kw)
    fast = fit_projection(M, beta=0.95, **kw)
    assert slow.error > 1e-3 and fast.error < 1e-6, (slow.error, fast.error)


def test_same_seed_same_result_and_seeds_differ():
    M = real_transform("dct2", 16)
    a, b = fit_projection(M, seed=3), fit_projection(M, seed=3)
    c = fit_projection(M, seed=4, finish="none", max_iters=20)
    assert torch.equal(a.kmatrix.butterflies[0].twiddle, b.kmatrix.butterflies[0].twiddle)
    assert [t[2] for t in a.trace] == [t[2] for t in b.trace]
    assert [t[2] for t in c.trace][:20] != [t[2] for t in a.trace][:20]


def test_given_permutations_are_the_only_candidate():
    M = real_transform("dct4", 32)
    r = fit_projection(M, **_structure_of(fit_projection(M)), seed=5)
    assert r.info["candidates"] == 1 and r.status == "converged"
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12


def test_candidates_screened_in_groups_when_memory_is_short():
    M = real_transform("dst2", 16)
    r = fit_projection(M, max_group_bytes=16 * 16 * 16 * 8)  # 8 candidates per group: 16 groups
    assert r.status == "converged", r.message
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12


def test_float32_input():
    M = real_transform("dct2", 16).astype(np.float32)
    r = fit_projection(M)
    assert r.status == "converged" and r.tol == 1e-5 and r.dtype == "float32"
    assert r.kmatrix.butterflies[0].twiddle.dtype == torch.complex64
    assert rel(dense_from_factors(r.kmatrix), M.astype(np.float64)) <= 1e-5


def test_a_matrix_without_the_structure_is_reported_not_raised():
    g = np.random.default_rng(7)
    M = g.standard_normal((16, 16))
    r = fit_projection(M, time_budget=20, patience=50)
    assert r.status in ("stalled", "budget")
    assert r.error > 0.1 and r.kmatrix is not None
    assert abs(rel(dense_from_factors(r.kmatrix), M) - r.error) <= 1e-9  # the error it states is the error


def test_budget_status_when_iterations_run_out():
    r = fit_projection(real_transform("dct2", 32), max_iters=15, finish="none")
    assert r.status == "budget" and r.info["iterations"] == 15
    assert "budget spent" in r.message


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=0.0), "beta must be in"),
    (dict(beta=1.5), "beta must be in"),
    (dict(starts=0), "starts must be a positive integer"),
    (dict(chain="BB"), "chain must be None"),
    (dict(finish="lbfgs"), "finish must be 'lm' or 'none'"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_projection(np.eye(8), **kwargs)


def test_bad_input():
    with pytest.raises(ValueError, match="M is complex"):
        fit_projection(np.eye(8, dtype=complex))
    with pytest.raises(ValueError, match="power of two"):
        fit_projection(np.eye(12))
    with pytest.raises(ValueError, match="square"):
        fit_projection(np.ones((8, 4)))
    assert ProjectionConfig().beta == 0.95


def test_auto_without_closed_forms_answers_with_projections():
    M = real_transform("dct2", 32)
    r = fit(M, closed_form=False, time_budget=240)
    assert r.solver == "projection" and r.status == "converged"
    assert [s["step"] for s in r.info["search"]] == ["Re(P·B·P) by alternating projections"]
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12


def test_cli_projection_solver_and_flags(capsys):
    from kfit._cli import main

    assert main(["fit", "dst2", "-n", "16", "--solver", "projection"]) == 0
    out = capsys.readouterr().out
    assert "projection" in out and "converged" in out
    assert main(["fit", "dct2", "-n", "8", "--solver", "identify", "--no-projection"]) == 2
    err = capsys.readouterr().err
    assert "--no-projection chooses the steps of --solver auto" in err and "Traceback" not in err
