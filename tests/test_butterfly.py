"""Butterfly products (reference and fused paths), gradients, algebra and input errors.

Every product is checked against an independent reference built in ``tests/_reference.py``
from the pair formula of ``kfit/_products.py`` (dense numpy levels for n <= 256, sparse
scipy levels applied to the vectors for larger n), never against kfit's own ``to_dense``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from _reference import (
    POWERS_TO_4096,
    batched_butterfly_dense,
    butterfly_apply,
    butterfly_dense,
    level_dense,
    log2,
    random_twiddles,
    random_vectors,
    ref_strides,
    rel_err,
    to_numpy,
)
from kfit import Butterfly

# A failing example is reported as generated (shrinking it would re-run many examples).
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PATHS = ["reference", "fused", "numba"]
GRAD_PATHS = ["reference", "fused"]  # the numba kernel computes products without autograd
DENSE_MAX = 256  # above this the reference applies sparse levels to the vectors


def _ref_rows(tw: np.ndarray, increasing: bool, X: np.ndarray) -> np.ndarray:
    """Rows ``X`` (m, n) mapped to ``(A x)^T`` for each row, by the independent reference."""
    n = X.shape[-1]
    if n <= DENSE_MAX:
        return X @ butterfly_dense(tw, increasing).T
    return butterfly_apply(tw, increasing, X.T).T


def _twiddles(rng, n, cplx, batch=()):
    # Generic Gaussian blocks where the depth is small; well-conditioned (orthogonal /
    # unitary, rotations and reflections mixed) blocks for deep butterflies.
    return random_twiddles(rng, n, batch=batch, complex_=cplx, kind="normal" if n <= 64 else "orthogonal")


# ======================================================================================
# 1. products against the independent reference, every power of two 2 .. 4096


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_product_matches_reference(n, cplx, increasing, path, rng):
    tw = _twiddles(rng, n, cplx)
    B = Butterfly(torch.from_numpy(tw), increasing=increasing)
    X = random_vectors(rng, (4, n), complex_=cplx)
    y = B(torch.from_numpy(X), path=path)
    assert y.shape == (4, n)
    assert y.dtype == (torch.complex128 if cplx else torch.float64)
    assert rel_err(y, _ref_rows(tw, increasing, X)) <= 1e-12
    # single vector (n,) gives (n,)
    y1 = B(torch.from_numpy(X[1]), path=path)
    assert y1.shape == (n,)
    assert rel_err(y1, _ref_rows(tw, increasing, X[1:2])[0]) <= 1e-12


@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_fused_under_autograd_matches_reference(n, cplx, increasing, rng):
    """With autograd recording, the fused path runs its two-matmul plan (without, the pass
    plan that test_product_matches_reference checks): the same values at every size, and
    input gradients ``G A`` for a real butterfly ``A``."""
    tw = _twiddles(rng, n, cplx)
    B = Butterfly(torch.from_numpy(tw).requires_grad_(), increasing=increasing)
    X = random_vectors(rng, (3, n), complex_=cplx)
    x = torch.from_numpy(X).requires_grad_()
    y = B(x, path="fused")
    assert y.requires_grad
    assert rel_err(y.detach(), _ref_rows(tw, increasing, X)) <= 1e-12
    if not cplx and n <= DENSE_MAX:
        G = random_vectors(rng, (3, n))
        (y * torch.from_numpy(G)).sum().backward()
        assert rel_err(x.grad, G @ butterfly_dense(tw, increasing)) <= 1e-12


def test_scratch_buffers_are_kept_only_below_the_size_limit(rng, monkeypatch):
    from kfit import _products

    n = 64
    tw = _twiddles(rng, n, False)
    X = random_vectors(rng, (16, n))
    held = lambda B: [b for ws in B.__dict__.get("_workspaces", {}).values() for _, b in ws.values()]
    B = Butterfly(torch.from_numpy(tw))
    assert rel_err(B(torch.from_numpy(X), path="fused"), _ref_rows(tw, True, X)) <= 1e-12
    assert len(held(B)) == 2 and all(b.numel() == X.size for b in held(B))
    monkeypatch.setattr(_products, "WORKSPACE_MAX_BYTES", X.nbytes - 1)
    B = Butterfly(torch.from_numpy(tw))
    assert rel_err(B(torch.from_numpy(X), path="fused"), _ref_rows(tw, True, X)) <= 1e-12
    assert held(B) == []


def test_fused_plan_follows_autograd(rng, monkeypatch):
    """The two fused plans are picked by whether autograd records, and nothing else."""
    from kfit import _products

    calls = []
    for name in ("apply_fused_blocks", "apply_pass_plan"):
        real = getattr(_products, name)
        monkeypatch.setattr(_products, name, lambda *a, _f=real, _n=name, **k: calls.append(_n) or _f(*a, **k))
    n = 64
    tw = torch.from_numpy(_twiddles(rng, n, False))
    x = torch.from_numpy(random_vectors(rng, (8, n)))
    Butterfly(tw)(x, path="fused")
    Butterfly(tw)(x.clone().requires_grad_(), path="fused")
    Butterfly(tw.clone().requires_grad_())(x, path="fused")
    with torch.no_grad():
        Butterfly(tw.clone().requires_grad_())(x.clone().requires_grad_(), path="fused")
    assert calls == ["apply_pass_plan", "apply_fused_blocks", "apply_fused_blocks", "apply_pass_plan"]


@pytest.mark.parametrize("path", [None, *PATHS], ids=["default", *PATHS])
@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("n", [2, 4, 16, 64, 256, 1024])
def test_to_dense_matches_reference(n, increasing, path, rng):
    for cplx in (False, True):
        tw = _twiddles(rng, n, cplx)
        B = Butterfly(torch.from_numpy(tw), increasing=increasing)
        D = B.to_dense(path=path)
        assert D.shape == (n, n) and D.dtype == B.dtype
        ref = butterfly_dense(tw, increasing) if n <= DENSE_MAX else butterfly_apply(tw, increasing, np.eye(n))
        assert rel_err(D, ref) <= 1e-12


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [2, 8, 32, 1024])
def test_dtype_promotion_real_and_complex(n, path, rng):
    """A real butterfly on complex x and a complex butterfly on real x promote to complex."""
    for increasing in (True, False):
        tw_r = _twiddles(rng, n, False)
        tw_c = _twiddles(rng, n, True)
        xr = random_vectors(rng, (3, n))
        xc = random_vectors(rng, (3, n), complex_=True)
        y = Butterfly(torch.from_numpy(tw_r), increasing=increasing)(torch.from_numpy(xc), path=path)
        assert y.dtype == torch.complex128
        assert rel_err(y, _ref_rows(tw_r, increasing, xc)) <= 1e-12
        y = Butterfly(torch.from_numpy(tw_c), increasing=increasing)(torch.from_numpy(xr), path=path)
        assert y.dtype == torch.complex128
        assert rel_err(y, _ref_rows(tw_c, increasing, xr)) <= 1e-12


@pytest.mark.parametrize("n", [16, 128])
def test_unbatched_accepts_any_leading_shape(n, rng):
    tw = _twiddles(rng, n, True)
    B = Butterfly(torch.from_numpy(tw), increasing=False)
    X = random_vectors(rng, (2, 3, 5, n), complex_=True)
    for path in PATHS:
        y = B(torch.from_numpy(X), path=path)
        assert y.shape == (2, 3, 5, n)
        ref = _ref_rows(tw, False, X.reshape(-1, n)).reshape(2, 3, 5, n)
        assert rel_err(y, ref) <= 1e-12


def test_auto_path_and_environment_variable(rng, monkeypatch):
    n = 64
    tw = _twiddles(rng, n, False)
    B = Butterfly(torch.from_numpy(tw))
    X = random_vectors(rng, (3, n))
    ref = _ref_rows(tw, True, X)
    assert rel_err(B(torch.from_numpy(X)), ref) <= 1e-12
    assert rel_err(B(torch.from_numpy(X), path="auto"), ref) <= 1e-12
    for p in PATHS:
        monkeypatch.setenv("KFIT_PRODUCT_PATH", p)
        assert rel_err(B(torch.from_numpy(X)), ref) <= 1e-12
    monkeypatch.setenv("KFIT_PRODUCT_PATH", "bogus")
    with pytest.raises(ValueError) as ei:
        B(torch.from_numpy(X))
    assert "KFIT_PRODUCT_PATH" in str(ei.value) and "bogus" in str(ei.value)


# -- batched butterflies ------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("batch", [(3,), (2, 3)], ids=["b3", "b2x3"])
@pytest.mark.parametrize("n", [2, 16, 128])
def test_batched_shared_and_per_member_x(n, batch, cplx, path, rng):
    m = 4
    for increasing in (True, False):
        tw = _twiddles(rng, n, cplx, batch=batch)
        B = Butterfly(torch.from_numpy(tw), increasing=increasing)
        assert tuple(B.batch_shape) == batch and B.shape == (*batch, n, n)
        dense = batched_butterfly_dense(tw, increasing)  # (*batch, n, n)

        # (n,) shared by every member -> (*batch, n)
        x = random_vectors(rng, (n,), complex_=cplx)
        y = B(torch.from_numpy(x), path=path)
        assert y.shape == (*batch, n)
        assert rel_err(y, np.einsum("...ij,j->...i", dense, x)) <= 1e-12

        # (m, n) shared -> (*batch, m, n)
        X = random_vectors(rng, (m, n), complex_=cplx)
        y = B(torch.from_numpy(X), path=path)
        assert y.shape == (*batch, m, n)
        assert rel_err(y, np.einsum("...ij,mj->...mi", dense, X)) <= 1e-12

        # (*batch, m, n): one set per member
        Xb = random_vectors(rng, (*batch, m, n), complex_=cplx)
        y = B(torch.from_numpy(Xb), path=path)
        assert y.shape == (*batch, m, n)
        assert rel_err(y, np.einsum("...ij,...mj->...mi", dense, Xb)) <= 1e-12

        # per-member results through indexing agree with the batched product
        for idx in np.ndindex(*batch):
            yi = B[idx](torch.from_numpy(Xb[idx]), path=path)
            assert rel_err(yi, y[idx]) <= 1e-12

        # leading dimensions of size 1 broadcast
        Xs = random_vectors(rng, (*([1] * len(batch)), m, n), complex_=cplx)
        y = B(torch.from_numpy(Xs), path=path)
        assert y.shape == (*batch, m, n)
        assert rel_err(y, np.einsum("...ij,...mj->...mi", dense, Xs)) <= 1e-12
        if len(batch) == 2:
            Xp = random_vectors(rng, (1, batch[1], m, n), complex_=cplx)
            y = B(torch.from_numpy(Xp), path=path)
            assert y.shape == (*batch, m, n)
            assert rel_err(y, np.einsum("...ij,...mj->...mi", dense, Xp)) <= 1e-12


@pytest.mark.parametrize("path", [None, *PATHS], ids=["default", *PATHS])
@pytest.mark.parametrize("batch", [(3,), (2, 3)], ids=["b3", "b2x3"])
def test_batched_to_dense(batch, path, rng):
    n = 32
    tw = _twiddles(rng, n, True, batch=batch)
    for increasing in (True, False):
        B = Butterfly(torch.from_numpy(tw), increasing=increasing)
        D = B.to_dense(path=path)
        assert D.shape == (*batch, n, n)
        assert rel_err(D, batched_butterfly_dense(tw, increasing)) <= 1e-12


# -- float32 / complex64 ------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cplx", [False, True], ids=["float32", "complex64"])
@pytest.mark.parametrize("n", POWERS_TO_4096)
def test_single_precision_agrees(n, cplx, path, rng):
    for increasing in (True, False):
        tw = random_twiddles(rng, n, complex_=cplx, kind="orthogonal")
        tw32 = tw.astype(np.complex64 if cplx else np.float32)
        X = random_vectors(rng, (3, n), complex_=cplx).astype(tw32.dtype)
        B = Butterfly(torch.from_numpy(tw32), increasing=increasing)
        y = B(torch.from_numpy(X), path=path)
        assert y.dtype == (torch.complex64 if cplx else torch.float32)
        ref = _ref_rows(tw32.astype(np.complex128), increasing, X.astype(np.complex128))
        assert rel_err(y, ref) <= 1e-5


# ======================================================================================
# 2. gradients


@pytest.mark.parametrize("path", GRAD_PATHS)
@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_gradcheck_twiddles_and_input(n, dtype, increasing, path, rng):
    cplx = dtype.is_complex
    tw = torch.from_numpy(random_twiddles(rng, n, complex_=cplx)).requires_grad_()
    x = torch.from_numpy(random_vectors(rng, (2, n), complex_=cplx)).requires_grad_()

    def f(tw, x):
        return Butterfly(tw, increasing=increasing)(x, path=path)

    # n >= 8: fast mode (the Jacobian checked along random directions) keeps it quick
    assert torch.autograd.gradcheck(f, (tw, x), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=n >= 8)


@pytest.mark.parametrize("path", GRAD_PATHS)
def test_gradcheck_batched_and_mixed_dtypes(path, rng):
    n = 8
    tw = torch.from_numpy(random_twiddles(rng, n, batch=(2,))).requires_grad_()
    xc = torch.from_numpy(random_vectors(rng, (2, 3, n), complex_=True)).requires_grad_()

    def f(tw, x):  # a real batched butterfly on complex per-member vectors
        return Butterfly(tw, increasing=False)(x, path=path)

    assert torch.autograd.gradcheck(f, (tw, xc), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_matches_analytic(rng):
    """d/dx <g, B x> = B^T g, compared with the independent dense B."""
    n = 32
    tw = random_twiddles(rng, n)
    g = random_vectors(rng, (n,))
    A = butterfly_dense(tw, True)
    for path in GRAD_PATHS:
        x = torch.from_numpy(random_vectors(rng, (n,))).requires_grad_()
        (Butterfly(torch.from_numpy(tw))(x, path=path) @ torch.from_numpy(g)).backward()
        assert rel_err(x.grad, A.T @ g) <= 1e-12


# ======================================================================================
# 3. algebra


@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("n", [2, 4, 16, 128])
def test_transpose_and_adjoint(n, cplx, increasing, rng):
    tw = random_twiddles(rng, n, complex_=cplx)
    A = butterfly_dense(tw, increasing)
    B = Butterfly(torch.from_numpy(tw), increasing=increasing)
    BT, BH = B.transpose(), B.adjoint()
    assert BT.increasing is (not increasing) and BH.increasing is (not increasing)
    # the reference is built from the new twiddles and the new stride order
    assert rel_err(butterfly_dense(to_numpy(BT.twiddle), BT.increasing), A.T) <= 1e-12
    assert rel_err(butterfly_dense(to_numpy(BH.twiddle), BH.increasing), A.conj().T) <= 1e-12
    assert rel_err(B.T.to_dense(), A.T) <= 1e-12
    assert rel_err(B.H.to_dense(), A.conj().T) <= 1e-12
    X = random_vectors(rng, (3, n), complex_=True)
    for path in PATHS:
        assert rel_err(BH(torch.from_numpy(X), path=path), X @ A.conj()) <= 1e-12
        assert rel_err(BT(torch.from_numpy(X), path=path), X @ A) <= 1e-12
    # adjoint twice is the original
    assert rel_err(B.H.H.to_dense(), A) <= 1e-12
    assert B.H.H.increasing is increasing


@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("n", [2, 8, 64])
def test_inverse(n, cplx, increasing, rng):
    tw = random_twiddles(rng, n, complex_=cplx)
    A = butterfly_dense(tw, increasing)
    Binv = Butterfly(torch.from_numpy(tw), increasing=increasing).inverse()
    assert Binv.increasing is (not increasing)
    # against numpy's dense inverse, from the twiddles of the new butterfly
    ref = np.linalg.inv(A)
    assert rel_err(butterfly_dense(to_numpy(Binv.twiddle), Binv.increasing), ref) <= 1e-10
    assert rel_err(Binv.to_dense() @ torch.from_numpy(A), np.eye(n)) <= 1e-10


def test_inverse_batched_and_singular(rng):
    tw = random_twiddles(rng, 16, batch=(3,), complex_=True)
    B = Butterfly(torch.from_numpy(tw))
    ref = np.linalg.inv(batched_butterfly_dense(tw, True))
    assert rel_err(B.inverse().to_dense(), ref) <= 1e-10
    tw1 = tw[1].copy()
    tw1[2, 5] = [[1.0, 2.0], [2.0, 4.0]]  # a rank-one block: level 2, pair 5
    with pytest.raises(ValueError, match=r"singular.*level 2 \(stride 4\), pair 5"):
        Butterfly(torch.from_numpy(tw1)).inverse()


def test_transpose_batched(rng):
    n, batch = 16, (2, 3)
    tw = random_twiddles(rng, n, batch=batch, complex_=True)
    B = Butterfly(torch.from_numpy(tw))
    dense = batched_butterfly_dense(tw, True)
    assert rel_err(B.H.to_dense(), np.conj(np.swapaxes(dense, -1, -2))) <= 1e-12
    assert rel_err(B.T.to_dense(), np.swapaxes(dense, -1, -2)) <= 1e-12


@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("n", [2, 4, 16, 128])
def test_factors_and_level_dense(n, cplx, increasing, rng):
    import scipy.sparse as sp

    tw = random_twiddles(rng, n, complex_=cplx)
    B = Butterfly(torch.from_numpy(tw), increasing=increasing)
    L = log2(n)
    strides = ref_strides(n, increasing)
    assert B.strides == strides and B.log_n == L
    fs = B.factors()
    assert len(fs) == L
    prod = np.eye(n)
    for k, F in enumerate(fs):
        assert sp.issparse(F)
        assert F.shape == (n, n)
        assert np.all(np.diff(sp.csr_matrix(F).indptr) == 2), "each row must store exactly 2 entries"
        assert np.iscomplexobj(F.data) == cplx
        # listed in matrix-product order: fs[0] is the last level (applied last)
        level = L - 1 - k
        assert np.array_equal(F.toarray(), level_dense(tw[level], strides[level]))
        prod = prod @ F.toarray()
    assert rel_err(prod, butterfly_dense(tw, increasing)) <= 1e-12
    for level in range(L):
        D = B.level_dense(level)
        assert D.shape == (n, n)
        assert np.array_equal(to_numpy(D), level_dense(tw[level], strides[level]))


def test_factors_keep_explicit_zero_twiddles():
    """Zero twiddles stay stored (the sparse factor reflects the parameters, 2 per row)."""
    n = 8
    tw = torch.zeros(3, 4, 2, 2, dtype=torch.float64)
    tw[..., 0, 0] = 1.0
    tw[..., 1, 1] = 2.0
    for F in Butterfly(tw).factors():
        assert F.nnz == 2 * n


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_identity(dtype, increasing, rng):
    for n in (2, 64):
        for batch in ((), (2, 3)):
            B = Butterfly.identity(n, batch=batch, dtype=dtype, increasing=increasing)
            assert B.dtype == dtype and tuple(B.batch_shape) == batch and B.n == n
            assert B.twiddle.shape == (*batch, log2(n), n // 2, 2, 2)
            dense = batched_butterfly_dense(to_numpy(B.twiddle).astype(np.complex128), increasing)
            assert np.array_equal(dense, np.broadcast_to(np.eye(n), (*batch, n, n)))
            x = torch.from_numpy(random_vectors(rng, (3, n), complex_=dtype.is_complex)).to(dtype)
            for path in PATHS:
                y = B(x, path=path)
                assert y.shape == (*batch, 3, n)
                assert torch.equal(y, x.expand(*batch, 3, n))


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_random_orthogonal_is_orthogonal(dtype, increasing):
    for n in (2, 16, 256):
        B = Butterfly.random(n, dtype=dtype, increasing=increasing, seed=n)
        assert B.dtype == dtype and B.increasing is increasing
        A = butterfly_dense(B.twiddle, increasing)
        err = np.linalg.norm(A.conj().T @ A - np.eye(n)) / np.sqrt(n)
        assert err <= 1e-12
        assert np.linalg.norm(A @ A.conj().T - np.eye(n)) / np.sqrt(n) <= 1e-12
        if dtype.is_complex:
            assert np.abs(A.imag).max() > 1e-3, "a random unitary butterfly should not be real"
    Bb = Butterfly.random(8, batch=(2, 3), dtype=dtype, seed=1)
    dense = batched_butterfly_dense(Bb.twiddle, True)
    gram = np.conj(np.swapaxes(dense, -1, -2)) @ dense
    assert np.abs(gram - np.eye(8)).max() <= 1e-12


def test_random_seeds_and_normal_init():
    a = Butterfly.random(32, seed=5)
    b = Butterfly.random(32, seed=5)
    c = Butterfly.random(32, seed=6)
    assert torch.equal(a.twiddle, b.twiddle)
    assert not torch.equal(a.twiddle, c.twiddle)
    g = Butterfly.random(1024, init="normal", dtype=torch.complex128, batch=(4,), seed=0)
    assert g.twiddle.shape == (4, 10, 512, 2, 2) and g.dtype == torch.complex128
    # i.i.d. entries with E|t|^2 = 1/2: a generous check of the documented scale
    assert abs(float((g.twiddle.abs() ** 2).mean()) - 0.5) < 0.02
    r = Butterfly.random(1024, init="normal", seed=0)
    assert abs(float((r.twiddle**2).mean()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="init"):
        Butterfly.random(8, init="bogus")


def test_getitem_on_batches(rng):
    n, batch = 8, (2, 3)
    tw = random_twiddles(rng, n, batch=batch)
    B = Butterfly(torch.from_numpy(tw), increasing=False)
    dense = batched_butterfly_dense(tw, False)
    b1 = B[1]
    assert tuple(b1.batch_shape) == (3,) and b1.increasing is False
    assert rel_err(b1.to_dense(), dense[1]) <= 1e-12
    b12 = B[1, 2]
    assert tuple(b12.batch_shape) == ()
    assert rel_err(b12.to_dense(), dense[1, 2]) <= 1e-12
    bc = B[:, 1]
    assert tuple(bc.batch_shape) == (2,)
    assert rel_err(bc.to_dense(), dense[:, 1]) <= 1e-12
    bs = B[0:1]
    assert tuple(bs.batch_shape) == (1, 3)
    with pytest.raises(IndexError):
        B[1, 2][0]  # unbatched: nothing to index
    with pytest.raises(IndexError):
        B[1, 2, 0]  # would index into the levels
    with pytest.raises(ValueError, match="batch shape"):
        B.factors()
    with pytest.raises(ValueError, match="batch shape"):
        B.level_dense(0)


def test_products_follow_in_place_twiddle_updates(rng):
    """Twiddles are used as given (not copied): after the tensor is changed in place --
    by an in-place op, by indexing under no_grad, or through ``.data`` as older
    optimisation code does -- every path must use the new values."""
    n = 64
    tw = torch.from_numpy(random_twiddles(rng, n, kind="orthogonal"))
    B = Butterfly(tw, increasing=False)
    X = random_vectors(rng, (3, n))
    xt = torch.from_numpy(X)

    def check(label):
        ref = _ref_rows(to_numpy(tw).copy(), False, X)
        for path in PATHS:
            assert rel_err(B(xt, path=path), ref) <= 1e-12, f"{label}: path={path} uses stale twiddles"

    check("initial")
    with torch.no_grad():
        tw.mul_(-1.5)
    check("after tw.mul_")
    with torch.no_grad():
        tw[0, 0] = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    check("after tw[0, 0] = ...")
    tw.data.copy_(torch.from_numpy(random_twiddles(rng, n, kind="orthogonal")))
    check("after tw.data.copy_")
    tw.data.mul_(0.5)
    check("after tw.data.mul_")


def test_to_and_detach(rng):
    n = 16
    tw = random_twiddles(rng, n, complex_=True)
    B = Butterfly(torch.from_numpy(tw).requires_grad_(), increasing=False)
    D = B.detach()
    assert not D.twiddle.requires_grad and D.increasing is False
    B32 = B.detach().to(torch.complex64)
    assert B32.dtype == torch.complex64 and B32.increasing is False
    x = torch.from_numpy(random_vectors(rng, (2, n), complex_=True)).to(torch.complex64)
    assert rel_err(B32(x), to_numpy(x).astype(np.complex128) @ butterfly_dense(tw, False).T) <= 1e-5


# ======================================================================================
# 8. bad input


@pytest.mark.parametrize("bad,pad", [(12, "16"), (3, "4"), (100, "128"), (1000, "1024"), (6, "8")])
def test_non_power_of_two_names_the_padding(bad, pad):
    for make in (lambda: Butterfly.identity(bad), lambda: Butterfly.random(bad)):
        with pytest.raises(ValueError) as ei:
            make()
        msg = str(ei.value)
        assert pad in msg and str(bad) in msg


def test_non_power_of_two_twiddle_shape():
    tw = torch.zeros(3, 6, 2, 2, dtype=torch.float64)  # n = 12
    with pytest.raises(ValueError) as ei:
        Butterfly(tw)
    assert "16" in str(ei.value) and "12" in str(ei.value)


@pytest.mark.parametrize("n", [0, 1])
def test_too_small_n(n):
    with pytest.raises(ValueError, match=str(n)):
        Butterfly.identity(n)


def test_wrong_twiddle_shapes_and_types():
    with pytest.raises(ValueError) as ei:
        Butterfly(torch.zeros(3, 4, 2, 3, dtype=torch.float64))
    assert "twiddle" in str(ei.value) and "(3, 4, 2, 3)" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        Butterfly(torch.zeros(4, 4, 2, 2, dtype=torch.float64))  # n = 8 needs 3 levels
    assert "twiddle" in str(ei.value) and "(4, 4, 2, 2)" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        Butterfly(torch.zeros(4, 2, 2, dtype=torch.float64))
    assert "twiddle" in str(ei.value) and "(4, 2, 2)" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        Butterfly(torch.zeros(3, 4, 2, 2, dtype=torch.int64))
    assert "twiddle" in str(ei.value) and "int64" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        Butterfly(np.zeros((3, 4, 2, 2)))
    assert "twiddle" in str(ei.value) and "ndarray" in str(ei.value)


def test_wrong_x_shapes_and_dtypes():
    n = 8
    B = Butterfly.identity(n)
    with pytest.raises(ValueError) as ei:
        B(torch.zeros(n + 1, dtype=torch.float64))
    assert "x" in str(ei.value) and "(9,)" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        B(torch.zeros(3, 4, dtype=torch.float64))
    assert "x" in str(ei.value) and "(3, 4)" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        B(torch.tensor(1.0, dtype=torch.float64))
    assert "x" in str(ei.value) and "()" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        B(torch.zeros(n, dtype=torch.float32))
    assert "x" in str(ei.value) and "float32" in str(ei.value) and "float64" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        B(torch.zeros(n, dtype=torch.complex64))
    assert "x" in str(ei.value) and "complex64" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        Butterfly.identity(n, dtype=torch.float32)(torch.zeros(n, dtype=torch.float64))
    assert "x" in str(ei.value) and "float64" in str(ei.value) and "float32" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        B(torch.zeros(n, dtype=torch.int64))
    assert "x" in str(ei.value) and "int64" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        B([0.0] * n)
    assert "x" in str(ei.value) and "list" in str(ei.value)


def test_wrong_x_batch_shape():
    n = 8
    B = Butterfly.identity(n, batch=(2, 3))
    for shape in [(4, 5, n), (3, 2, 5, n), (2, 2, 5, n), (1, 2, 3, 5, n)]:
        with pytest.raises(ValueError) as ei:
            B(torch.zeros(shape, dtype=torch.float64))
        assert "x" in str(ei.value) and str(shape) in str(ei.value)


def test_bad_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    B = Butterfly.identity(8)
    with pytest.raises(ValueError) as ei:
        B(torch.zeros(8, dtype=torch.float64), path="bogus")
    assert "path" in str(ei.value) and "bogus" in str(ei.value)
    # The Triton kernel runs on CUDA tensors (or on the CPU under TRITON_INTERPRET=1).
    with pytest.raises(ValueError, match="triton"):
        B(torch.zeros(8, dtype=torch.float64), path="triton")


# ======================================================================================
# 9. property tests


@settings(max_examples=25, deadline=None, derandomize=True, database=None, phases=NO_SHRINK)
@given(
    m=st.integers(1, 8),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64, torch.complex128]),
    increasing=st.booleans(),
    batch=st.sampled_from([(), (2,), (2, 1)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_fused_equals_reference(m, dtype, increasing, batch, seed):
    n = 2**m
    cplx = dtype.is_complex
    tol = 1e-12 if dtype in (torch.float64, torch.complex128) else 1e-5
    rng = np.random.default_rng(seed)
    tw = random_twiddles(rng, n, batch=batch, complex_=cplx)
    B = Butterfly(torch.from_numpy(tw).to(dtype), increasing=increasing)
    X = random_vectors(rng, (*batch, 3, n), complex_=cplx)
    xt = torch.from_numpy(X).to(dtype)
    yf = B(xt, path="fused")
    yr = B(xt, path="reference")
    assert yf.dtype == yr.dtype == dtype
    assert rel_err(yf, yr) <= tol
    # independent reference from the (possibly rounded) twiddles and vectors, in float64
    tw_used = to_numpy(B.twiddle).astype(np.complex128)
    ref = np.einsum("...ij,...mj->...mi", batched_butterfly_dense(tw_used, increasing), to_numpy(xt).astype(np.complex128))
    assert rel_err(yr, ref) <= tol


@settings(max_examples=25, deadline=None, derandomize=True, database=None, phases=NO_SHRINK)
@given(m=st.integers(1, 8), cplx=st.booleans(), increasing=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_property_adjoint_twice_is_identity(m, cplx, increasing, seed):
    n = 2**m
    rng = np.random.default_rng(seed)
    tw = random_twiddles(rng, n, complex_=cplx)
    B = Butterfly(torch.from_numpy(tw), increasing=increasing)
    BHH = B.adjoint().adjoint()
    assert BHH.increasing is increasing
    assert torch.equal(BHH.twiddle, B.twiddle)
    BTT = B.transpose().transpose()
    assert torch.equal(BTT.twiddle, B.twiddle) and BTT.increasing is increasing
    X = random_vectors(rng, (2, n), complex_=True)
    assert rel_err(BHH(torch.from_numpy(X)), X @ butterfly_dense(tw, increasing).T) <= 1e-12


def test_bench_product_cpu_table_runs():
    """``kfit bench product`` on the CPU: every column timed, ratios printed (the numbers
    themselves are the benchmark's business, not the tests')."""
    from kfit import _bench
    from kfit._cli import main

    lines = []
    rows = _bench.bench_product(ns=(16,), batch=4, min_run_time=1e-3, out=lines.append)
    assert [r["kind"] for r in rows] == ["real butterfly f32", "complex DFT c64"]
    assert all(r[k] > 0 for r in rows for k in ("reference", "fused", "numba", "dense"))
    assert np.isnan(rows[0]["fft"]) and rows[1]["fft"] > 0
    assert all(r["fast"] == "numba" for r in rows)  # path="auto" on the CPU without autograd, 4 vectors
    assert "best of 3 rounds" in lines[1] and lines[2].split()[-3:] == ["dense/auto", "fft/auto", "auto"]
    assert all(line.split()[-1] == "numba" for line in lines[3:])
    assert main(["bench", "product", "-n", "8", "--batch", "2", "--min-time", "0.001"]) == 0
