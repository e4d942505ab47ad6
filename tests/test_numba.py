"""The compiled CPU kernel (path "numba"): what the shared path tests do not reach.

The products of every path are compared with the independent reference in
test_butterfly.py / test_kmatrix.py / test_known.py (path "numba" is in their PATHS). Here:
groups of vectors that do not fill the kernel's 16 lanes, sizes below its tile, the
permutation folded into the first level, non-finite values, threads, the dispatch and its
errors. References are numpy: ``_reference`` levels and dense permutation matrices.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from _reference import butterfly_apply, perm_dense, random_twiddles, random_vectors, rel_err, to_numpy
from kfit import Butterfly, KMatrix, Permutation, _numba, _products, known


def _ref(tw, increasing, X):
    """Rows X (m, n) -> (B x)^T by the independent reference."""
    return butterfly_apply(tw, increasing, X.T).T


@pytest.mark.parametrize("n", [2, 4, 8, 16, 64])
@pytest.mark.parametrize("m", [1, 15, 17, 33])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "cplx"])
@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
def test_partial_groups_and_small_sizes(n, m, cplx, increasing, rng):
    """Vector counts that leave lanes of the last group empty, sizes below the tile."""
    tw = random_twiddles(rng, n, complex_=cplx)
    X = random_vectors(rng, (m, n), complex_=cplx)
    y = Butterfly(torch.from_numpy(tw), increasing=increasing)(torch.from_numpy(X), path="numba")
    assert y.shape == (m, n)
    assert rel_err(y, _ref(tw, increasing, X)) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=["f32", "c64"])
def test_single_precision(dtype, rng):
    n, cplx = 256, dtype.is_complex
    tw = random_twiddles(rng, n, complex_=cplx, kind="orthogonal")
    X = random_vectors(rng, (40, n), complex_=cplx)
    B = Butterfly(torch.from_numpy(tw).to(dtype))
    y = B(torch.from_numpy(X).to(dtype), path="numba")
    assert y.dtype == dtype
    assert rel_err(y, _ref(tw, True, X)) <= 1e-5


def test_batched_twiddles_and_vectors(rng):
    """T members: vectors shared by all (Tx = 1), or one set per member (Tx = T)."""
    n, T, m = 32, 3, 20
    tw = random_twiddles(rng, n, batch=(T,), complex_=True)
    B = Butterfly(torch.from_numpy(tw))
    X = random_vectors(rng, (m, n), complex_=True)
    y = B(torch.from_numpy(X), path="numba")
    for t in range(T):
        assert rel_err(y[t], _ref(tw[t], True, X)) <= 1e-12
    Xs = random_vectors(rng, (T, m, n), complex_=True)
    y = B(torch.from_numpy(Xs), path="numba")
    for t in range(T):
        assert rel_err(y[t], _ref(tw[t], True, Xs[t])) <= 1e-12


@pytest.mark.parametrize("n", [2, 8, 64, 512])
def test_permutation_folded_into_first_level(n, rng):
    """B · P, B · P · B' · P' and P · B (nothing to fold) against dense numpy products."""
    B1 = Butterfly(torch.from_numpy(random_twiddles(rng, n, complex_=True)))
    B2 = Butterfly(torch.from_numpy(random_twiddles(rng, n)), increasing=False)
    p1, p2 = rng.permutation(n), rng.permutation(n)
    P1, P2 = Permutation(p1), Permutation(p2)
    X = random_vectors(rng, (19, n), complex_=True)
    D1 = butterfly_apply(B1.twiddle.numpy(), True, np.eye(n))
    D2 = butterfly_apply(B2.twiddle.numpy(), False, np.eye(n))
    cases = {
        "B P": (KMatrix([B1, P1]), D1 @ perm_dense(p1)),
        "B P B' P'": (KMatrix([B1, P1, B2, P2]), D1 @ perm_dense(p1) @ D2 @ perm_dense(p2)),
        "P B": (KMatrix([P1, B1]), perm_dense(p1) @ D1),
    }
    for name, (K, A) in cases.items():
        y = K(torch.from_numpy(X), path="numba")
        assert rel_err(y, X @ A.T) <= 1e-12, name


def test_dft_against_numpy_fft(rng):
    n = 1024
    X = random_vectors(rng, (50, n), complex_=True)
    y = known.dft(n)(torch.from_numpy(X), path="numba")
    assert rel_err(y, np.fft.fft(X, norm="ortho", axis=-1)) <= 1e-12


def test_non_finite_values_propagate_like_the_reference(rng):
    n = 16
    tw = torch.from_numpy(random_twiddles(rng, n))
    X = torch.from_numpy(random_vectors(rng, (5, n)))
    X[1, 3], X[2, 7], X[3, 0] = float("nan"), float("inf"), -float("inf")
    B = Butterfly(tw)
    got, ref = to_numpy(B(X, path="numba")), to_numpy(B(X, path="reference"))
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    assert np.array_equal(np.isposinf(got), np.isposinf(ref)) and np.array_equal(np.isneginf(got), np.isneginf(ref))
    finite = np.isfinite(ref)
    assert rel_err(got[finite], ref[finite]) <= 1e-12


def test_threads_share_an_operator(rng):
    """Products from several threads at once (the kernel takes turns) are all right."""
    n = 128
    tw = random_twiddles(rng, n, complex_=True)
    K = KMatrix([Butterfly(torch.from_numpy(tw)), Permutation(rng.permutation(n))])
    Xs = [random_vectors(rng, (64, n), complex_=True) for _ in range(6)]
    ref = [to_numpy(K(torch.from_numpy(X), path="reference")) for X in Xs]
    got = [None] * len(Xs)

    def work(i):
        for _ in range(5):
            got[i] = to_numpy(K(torch.from_numpy(Xs[i]), path="numba"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(Xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, r in zip(got, ref):
        assert rel_err(g, r) <= 1e-12


def test_twiddle_edits_are_seen(rng):
    """The kernel's planes are cached per operator and rebuilt when the twiddles change."""
    n = 32
    B = Butterfly(torch.from_numpy(random_twiddles(rng, n)))
    X = random_vectors(rng, (4, n))
    B(torch.from_numpy(X), path="numba")
    with torch.no_grad():
        B.twiddle.mul_(-2.0)
    assert rel_err(B(torch.from_numpy(X), path="numba"), _ref(B.twiddle.numpy(), True, X)) <= 1e-12


def test_auto_dispatch():
    cpu = torch.device("cpu")
    assert _products.resolve_path("auto", 1024, cpu, rows=1) == "numba"
    assert _products.resolve_path("auto", 1024, cpu, rows=100, autograd=True) == "fused"
    assert _products.resolve_path("auto", 2 * _products.NUMBA_MAX_N, cpu, rows=100) == "fused"
    # real data in large batches below NUMBA_REAL_FROM_N: the fused pass plan (measured faster)
    many = _products.NUMBA_REAL_MIN_ROWS
    assert _products.resolve_path("auto", 1024, cpu, rows=many, complex_=False) == "fused"
    assert _products.resolve_path("auto", 1024, cpu, rows=many - 1, complex_=False) == "numba"
    assert _products.resolve_path("auto", _products.NUMBA_REAL_FROM_N, cpu, rows=many, complex_=False) == "numba"
    assert _products.resolve_path("auto", 1024, cpu, rows=many, complex_=True) == "numba"


def test_errors_name_the_path_and_the_fix(rng, monkeypatch):
    n = 16
    B = Butterfly(torch.from_numpy(random_twiddles(rng, n)).requires_grad_())
    x = torch.from_numpy(random_vectors(rng, (3, n)))
    with pytest.raises(ValueError, match=r"path='numba'.*without autograd.*path='fused'.*torch.no_grad"):
        B(x, path="numba")
    with torch.no_grad():  # the same product without autograd runs
        assert rel_err(B(x, path="numba"), _ref(B.twiddle.detach().numpy(), True, x.numpy())) <= 1e-12
    monkeypatch.setenv("KFIT_PRODUCT_PATH", "numba")
    with pytest.raises(ValueError, match=r"\$KFIT_PRODUCT_PATH='numba'"):
        B(x)
    monkeypatch.delenv("KFIT_PRODUCT_PATH")
    with pytest.raises(ValueError, match=r"path='numba' is the CPU kernel.*cuda"):
        _products.resolve_path("numba", n, torch.device("cuda"))
    # without numba: an explicit request says how to install it, "auto" falls back
    monkeypatch.setattr(_numba, "available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install numba"):
        _products.resolve_path("numba", n, torch.device("cpu"))
    assert _products.resolve_path("auto", n, torch.device("cpu"), rows=10) == "fused"


def test_import_kfit_does_not_import_numba():
    """numba (~0.5 s to import, seconds to compile) loads with the first CPU product, not
    with ``import kfit`` or ``import solvers``."""
    code = (
        "import sys, kfit, solvers\n"
        "assert 'numba' not in sys.modules, 'import kfit imported numba'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120)
