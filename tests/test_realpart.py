"""Tests for solvers.identify_real: closed-form recovery of ``M = Re(P_out · B · P_in)``.

The targets come from independent references (``scipy.fft`` for the DCT/DST, numpy's FFT
for the Hartley matrix, random complex twiddles multiplied out densely here), and every
result is checked by rebuilding its dense matrix from the returned factors in numpy
(``tests/_reference.op_dense``, level by level from the twiddles).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kfit
from kfit import Butterfly, Permutation
from solvers import RealPartConfig, fit, identify_real
from solvers._permfamily import top_level

from _reference import op_dense as dense_from_factors  # independent per-level construction
from _reference import perm_dense
from _reference import real_transform as reference
from _reference import rel_err as rel

SIZES = [4, 8, 16, 32, 64]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", ["dct2", "dst2", "dct3", "dst3", "dct4", "dst4", "hartley"])
def test_recovers_the_real_fast_transforms(name, n):
    M = reference(name, n)
    r = identify_real(M)
    assert r.status == "exact", r.message
    assert r.solver == "identify_real" and r.dtype == "float64"
    K = r.kmatrix
    assert K.real_output and K.dtype == torch.float64
    assert any(f.is_complex for f in K.factors if isinstance(f, Butterfly))
    assert sum(isinstance(f, Butterfly) for f in K.factors) == 1
    err = rel(dense_from_factors(K), M)
    assert err <= 1e-13
    assert abs(err - r.error) <= 1e-14  # the reported error is the error
    assert r.info["candidate"] and r.info["candidates_tried"] >= 1


@pytest.mark.parametrize("name", ["dct2", "dct4", "hartley"])
def test_recovers_n_256_and_the_reordering_is_a_real_permutation(name):
    n = 256
    M = reference(name, n)
    r = identify_real(torch.from_numpy(M))
    assert r.status == "exact" and rel(dense_from_factors(r.kmatrix), M) <= 1e-13
    for f in r.kmatrix.factors:
        if isinstance(f, Permutation):
            assert sorted(f.perm.tolist()) == list(range(n))
    # n log n structure: one butterfly of n/2 complex 2x2 blocks per level
    B = next(f for f in r.kmatrix.factors if isinstance(f, Butterfly))
    assert B.twiddle.shape == (8, n // 2, 2, 2)


def random_complex_butterfly(n, seed, increasing=True):
    """Gaussian complex twiddles (not unitary: the generic case)."""
    g = torch.Generator().manual_seed(seed)
    L = n.bit_length() - 1
    tw = torch.complex(torch.randn(L, n // 2, 2, 2, generator=g, dtype=torch.float64),
                       torch.randn(L, n // 2, 2, 2, generator=g, dtype=torch.float64))
    return Butterfly(tw, increasing=increasing)


def test_the_same_matrix_gives_the_same_answer_every_time():
    """Repeated calls agree (same candidate, same factors). The Hartley matrix at n = 1024
    puts ~1000 rank-deficient rows through the top-level least squares; with LAPACK's
    gelsy, whose result depended on leftover memory, about one call in four fell through
    to a later candidate."""
    M = reference("hartley", 1024)
    first = identify_real(M)
    assert first.status == "exact"
    for _ in range(6):
        r = identify_real(M)
        assert r.info["candidate"] == first.info["candidate"] == "B, P_out: identity, P_in: bitrev·id"
        assert torch.equal(r.kmatrix.factors[0].twiddle, first.kmatrix.factors[0].twiddle)


@pytest.mark.parametrize("n", [16, 32, 64])
@pytest.mark.parametrize("increasing", [True, False])
def test_recovers_the_real_part_of_random_butterflies(n, increasing):
    B = random_complex_butterfly(n, seed=n, increasing=increasing).to_dense().numpy()
    rev = Permutation.bit_reversal(n).perm.numpy()
    q = dict(top_level(n))["sep0+rev1_0"].numpy()
    P_in = q[rev]  # (P x)[i] = x[q[rev[i]]]: a top-level reordering, then the bit reversal
    M = (B @ perm_dense(P_in)).real
    r = identify_real(M)
    assert r.status == "exact", r.message
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12
    # Known permutations: the single candidate is the truth.
    r = identify_real(M, row_perm="identity", col_perm=P_in, chain="B" if increasing else "B*")
    assert r.status == "exact" and r.info["candidates_tried"] == 1
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12


@pytest.mark.parametrize("name,n", [("legendre", 32), ("randn", 64), ("circulant", 32)])
def test_matrices_without_the_structure_are_not_in_class(name, n):
    M = kfit.targets.get(name, n)
    r = identify_real(M)
    assert r.status == "not_in_class"
    assert not r.success and r.error > 1e-3
    assert "not of the form Re(P·B·P)" in r.message
    assert r.info["candidates_tried"] == 128  # every candidate, both orientations


def test_float32_input_and_noise():
    M = reference("dct2", 64)
    r = identify_real(M.astype(np.float32))
    assert r.status == "exact" and r.tol == 1e-5 and r.dtype == "float32"
    assert r.kmatrix.dtype == torch.float32
    assert next(f for f in r.kmatrix.factors if isinstance(f, Butterfly)).dtype == torch.complex64
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-5
    noisy = M + 1e-10 * np.random.default_rng(0).standard_normal(M.shape)
    r = identify_real(noisy)
    assert r.status == "approximate", r.message  # structure found, error at the noise level
    assert 1e-12 < r.error < 1e-8


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="M is complex .* use solvers.identify"):
        identify_real(np.fft.fft(np.eye(8)))
    with pytest.raises(ValueError, match=r"chain must be None, 'B' or 'B\*', got 'C'"):
        identify_real(reference("dct2", 8), chain="C")
    with pytest.raises(ValueError, match="power of two"):
        identify_real(np.eye(6))
    with pytest.raises(ValueError, match="col_perm has length 4 but the matrix is 8x8"):
        identify_real(reference("dct2", 8), col_perm=[0, 1, 2, 3])
    assert RealPartConfig().chain is None


@pytest.mark.parametrize("name", ["dct2", "dct4", "hartley"])
def test_auto_finds_the_real_transforms_in_closed_form(name):
    n = 32
    r = fit(reference(name, n))
    assert r.solver == "identify_real" and r.status == "exact"
    assert [s["step"] for s in r.info["search"]] == ["identify P·B·P", "identify Re(P·B·P)"]
    assert rel(dense_from_factors(r.kmatrix), reference(name, n)) <= 1e-13


def test_cli_identify_real(capsys):
    from kfit._cli import main

    assert main(["fit", "dst2", "-n", "64", "--solver", "identify-real"]) == 0
    out = capsys.readouterr().out
    assert "identify_real" in out and "exact" in out


@pytest.mark.parametrize("extra", [["--solver", "identify"], ["--resume", "missing.kfit"]])
def test_cli_no_closed_form_is_refused_outside_auto(capsys, extra):
    from kfit._cli import main

    assert main(["fit", "dct2", "-n", "8", "--no-closed-form", *extra]) == 2
    err = capsys.readouterr().err
    assert "--no-closed-form chooses the steps of --solver auto" in err and "Traceback" not in err


def test_bench_fit_with_and_without_the_closed_forms(capsys):
    from kfit._cli import main

    assert main(["bench", "fit", "-n", "16", "--targets", "dct2"]) == 0
    out = capsys.readouterr().out
    assert "solvers.fit (auto)" in out
    row = next(line for line in out.splitlines() if line.startswith("dct2"))
    assert " exact " in row and row.endswith("(identify_real)")
    assert main(["bench", "fit", "-n", "8", "--targets", "hadamard", "--no-closed-form", "--time-budget", "60"]) == 0
    out = capsys.readouterr().out
    assert "fits from random starts only" in out
    row = next(line for line in out.splitlines() if line.startswith("hadamard"))
    assert " converged " in row and row.endswith("(projection)")  # a real target: Re(B) fitted first
    assert main(["bench", "fit", "-n", "8", "--targets", "hadamard", "--no-closed-form", "--no-projection",
                 "--no-splitting", "--time-budget", "60"]) == 0
    out = capsys.readouterr().out
    assert "no alternating projections, no splitting" in out
    row = next(line for line in out.splitlines() if line.startswith("hadamard"))
    assert row.endswith("(gradient)")
