"""Permutation, Diagonal and KMatrix: products, composition, expansion, real part, algebra,
gradients and argument errors -- against dense references built from the stored data
(``tests/_reference.py``: twiddles -> pair formula, index vectors, diagonal values)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from _reference import (
    brute_bit_reversal,
    log2,
    op_dense,
    perm_dense,
    random_twiddles,
    random_vectors,
    rel_err,
    to_numpy,
)
from kfit import Butterfly, Diagonal, KMatrix, Permutation, compose

# A failing example is reported as generated (shrinking it would re-run many examples).
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PATHS = ["reference", "fused", "numba"]
GRAD_PATHS = ["reference", "fused"]  # the numba kernel computes products without autograd


# -- builders (numpy randomness; kfit only wraps the data) -------------------------------


def rbfly(rng, n, *, cplx=False, increasing=True, batch=()):
    return Butterfly(torch.from_numpy(random_twiddles(rng, n, batch=batch, complex_=cplx)), increasing=increasing)


def rdiag(rng, n, *, cplx=False, batch=()):
    return Diagonal(torch.from_numpy(random_vectors(rng, (*batch, n), complex_=cplx) + 0.5))


def rperm(rng, n):
    return Permutation(rng.permutation(n))


def apply_rows(dense: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Rows X (..., m, n) mapped by dense (..., n, n): (A x)^T."""
    return np.einsum("...ij,...mj->...mi", dense, X)


# ======================================================================================
# 4. Permutation


@pytest.mark.parametrize("n", [2, 8, 64, 1024])
def test_permutation_apply_dense_inverse(n, rng):
    perm = rng.permutation(n)
    P = Permutation(perm)
    ref = perm_dense(perm)
    assert np.array_equal(to_numpy(P.to_dense()), ref)
    X = random_vectors(rng, (3, n), complex_=True)
    y = P(torch.from_numpy(X))
    assert np.array_equal(to_numpy(y), X[:, perm])
    assert np.array_equal(to_numpy(y), apply_rows(ref, X))
    Pi = P.inverse()
    assert np.array_equal(to_numpy(Pi.to_dense()), ref.T)
    assert np.array_equal(to_numpy(Pi(y)), X)
    assert np.array_equal(to_numpy(P.T.to_dense()), ref.T)
    assert np.array_equal(to_numpy(P.H.to_dense()), ref.T)
    assert np.array_equal(to_numpy(P.adjoint().to_dense()), ref.T)
    assert P.n_params == 0 and P.flops == 0 and P.n_indices == n
    # factors(): one sparse matrix equal to the dense permutation
    (F,) = P.factors()
    assert sp.issparse(F) and np.array_equal(F.toarray(), ref)


def test_permutation_keeps_input_dtype(rng):
    n = 16
    P = Permutation(rng.permutation(n))  # dtype float64 for to_dense
    for dt in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        x = torch.from_numpy(random_vectors(rng, (2, n), complex_=dt.is_complex)).to(dt)
        y = P(x)
        assert y.dtype == dt
        assert torch.equal(y, x[:, P.perm])
    assert P.to(torch.float32).to_dense().dtype == torch.float32


def test_to_moves_every_factor_to_the_device():
    """``.to(device)`` moves a Permutation's index vector too (it used to stay on the CPU,
    so a KMatrix of a permutation and a butterfly could not be moved to a GPU). The meta
    device stands in for a GPU: it checks placement without one."""
    P = Permutation.bit_reversal(8)
    assert P.to("meta").device.type == "meta"
    K = KMatrix([P, Butterfly.random(8), Diagonal(torch.ones(8, dtype=torch.float64))]).to("meta")
    assert K.device.type == "meta" and {f.device.type for f in K.factors} == {"meta"}


@pytest.mark.parametrize("n", [2**k for k in range(1, 13)])
def test_bit_reversal_brute_force(n):
    P = Permutation.bit_reversal(n)
    ref = brute_bit_reversal(n)
    assert np.array_equal(to_numpy(P.perm), ref)
    assert P == P.inverse()  # an involution
    x = np.arange(n, dtype=np.float64)
    assert np.array_equal(to_numpy(P(torch.from_numpy(x))), ref.astype(np.float64))


def test_permutation_composition(rng):
    n = 32
    p, q = rng.permutation(n), rng.permutation(n)
    P, Q = Permutation(p), Permutation(q)
    PQ = P @ Q
    assert isinstance(PQ, Permutation)
    assert np.array_equal(to_numpy(PQ.to_dense()), perm_dense(p) @ perm_dense(q))
    x = random_vectors(rng, (n,))
    assert np.array_equal(to_numpy(PQ(torch.from_numpy(x))), perm_dense(p) @ perm_dense(q) @ x)
    assert P @ P.inverse() == Permutation.identity(n)
    with pytest.raises(ValueError, match="16"):
        P @ Permutation(rng.permutation(16))


def test_permutation_from_dense(rng):
    n = 16
    perm = rng.permutation(n)
    D = perm_dense(perm)
    assert Permutation.from_dense(D) == Permutation(perm)
    assert Permutation.from_dense(torch.from_numpy(D)) == Permutation(perm)
    noisy = D + 1e-9 * rng.standard_normal((n, n))
    assert Permutation.from_dense(noisy, atol=1e-6) == Permutation(perm)
    with pytest.raises(ValueError, match="permutation"):
        Permutation.from_dense(noisy)  # atol=0: not exactly 0/1
    two = D.copy()
    two[0, :] = 0
    two[0, perm[1]] = 1  # two ones in a column, a row of zeros elsewhere
    with pytest.raises(ValueError, match="permutation"):
        Permutation.from_dense(two)
    with pytest.raises(ValueError) as ei:
        Permutation.from_dense(np.zeros((3, 4)))
    assert "P" in str(ei.value) and "(3, 4)" in str(ei.value)


def test_permutation_errors():
    with pytest.raises(ValueError) as ei:
        Permutation([0, 2, 2, 3])
    assert "perm" in str(ei.value) and "2" in str(ei.value) and "1" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        Permutation([0, 1, 4, 2])
    assert "perm" in str(ei.value) and "4" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        Permutation([0, -1, 1, 2])
    assert "perm" in str(ei.value) and "-1" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        Permutation([0.0, 1.0, 2.0, 3.0])
    assert "perm" in str(ei.value) and "float" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        Permutation(torch.tensor([True, False]))
    assert "perm" in str(ei.value) and "bool" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        Permutation(np.zeros((2, 2), dtype=np.int64))
    assert "perm" in str(ei.value) and "(2, 2)" in str(ei.value)
    with pytest.raises(ValueError, match="perm"):
        Permutation(np.zeros(0, dtype=np.int64))
    with pytest.raises(TypeError) as ei:
        Permutation.identity(4)(torch.arange(4))
    assert "x" in str(ei.value) and "int64" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        Permutation.bit_reversal(12)
    assert "16" in str(ei.value)


# ======================================================================================
# Diagonal


def test_diagonal(rng):
    n = 16
    for cplx in (False, True):
        v = random_vectors(rng, (n,), complex_=cplx)
        D = Diagonal(torch.from_numpy(v))
        X = random_vectors(rng, (3, n), complex_=True)
        assert rel_err(D(torch.from_numpy(X)), X * v) <= 1e-15
        assert rel_err(D.to_dense(), np.diag(v)) <= 1e-15
        assert rel_err(D.H.to_dense(), np.diag(v).conj().T) <= 1e-15
        assert rel_err(D.T.to_dense(), np.diag(v)) <= 1e-15
        assert D.n_params == n * (2 if cplx else 1)
    vb = random_vectors(rng, (2, 3, n))
    Db = Diagonal(torch.from_numpy(vb))
    assert tuple(Db.batch_shape) == (2, 3)
    X = random_vectors(rng, (4, n))
    assert rel_err(Db(torch.from_numpy(X)), vb[:, :, None, :] * X) <= 1e-15
    with pytest.raises(ValueError, match="values"):
        Diagonal(torch.zeros(0, dtype=torch.float64))
    with pytest.raises(TypeError, match="values"):
        Diagonal(torch.zeros(4, dtype=torch.int64))


# ======================================================================================
# 5. KMatrix


_MAKERS = {
    "B": lambda rng, n: rbfly(rng, n),
    "B*": lambda rng, n: rbfly(rng, n, increasing=False),
    "Bc": lambda rng, n: rbfly(rng, n, cplx=True),
    "Bc*": lambda rng, n: rbfly(rng, n, cplx=True, increasing=False),
    "P": lambda rng, n: rperm(rng, n),
    "D": lambda rng, n: rdiag(rng, n),
    "Dc": lambda rng, n: rdiag(rng, n, cplx=True),
    "K": lambda rng, n: KMatrix([rbfly(rng, n), rperm(rng, n), rbfly(rng, n, increasing=False)]),
    "Kc_re": lambda rng, n: KMatrix(
        [rdiag(rng, n, cplx=True), rbfly(rng, n, cplx=True), rperm(rng, n)], real_output=True
    ),
    "K_e2": lambda rng, n: KMatrix([rbfly(rng, 2 * n), rbfly(rng, 2 * n, cplx=True, increasing=False)], expansion=2),
}


def make_op(name, rng, n):
    """One of a variety of size-n operators (real and complex, every kind)."""
    return _MAKERS[name](rng, n)


POOL = ["B", "B*", "Bc", "Bc*", "P", "D", "Dc", "K", "Kc_re", "K_e2"]


@pytest.mark.parametrize("left", POOL)
@pytest.mark.parametrize("right", POOL)
def test_compose_with_matmul(left, right, rng):
    n = 8
    A, B = make_op(left, rng, n), make_op(right, rng, n)
    C = A @ B
    ref = op_dense(A) @ op_dense(B)
    assert C.n == n
    assert rel_err(C.to_dense(), ref) <= 1e-12
    X = random_vectors(rng, (3, n), complex_=True)
    for path in PATHS:
        assert rel_err(C(torch.from_numpy(X), path=path), apply_rows(ref, X)) <= 1e-12
    assert rel_err(compose(A, B).to_dense(), ref) <= 1e-12


def test_compose_real_output_left_with_complex_right(rng):
    """Re(A) @ B must be Re(A) B, not Re(A B), when B is complex (kfit.known.dct2 @ complex B)."""
    import kfit

    n = 8
    A = kfit.known.dct2(n)  # Re(D · B · P): a real matrix
    Bc = rbfly(rng, n, cplx=True)
    ref = op_dense(A) @ op_dense(Bc)  # real DCT times a complex butterfly: complex
    assert np.abs(ref.imag).max() > 1e-3
    C = A @ Bc
    assert rel_err(C.to_dense(), ref) <= 1e-12


def test_nested_kmatrix(rng):
    n = 16
    inner_e = KMatrix([rbfly(rng, 2 * n, cplx=True), rperm(rng, 2 * n), rbfly(rng, 2 * n, increasing=False)], expansion=2)
    inner_re = KMatrix([rbfly(rng, n, cplx=True), rdiag(rng, n, cplx=True)], real_output=True)
    outer = KMatrix([rbfly(rng, n), inner_e, rdiag(rng, n), inner_re, rperm(rng, n)])
    parts = [op_dense(f) for f in outer.factors]
    # independent assembly of the same matrix
    Ae = op_dense(inner_e.factors[0]) @ op_dense(inner_e.factors[1]) @ op_dense(inner_e.factors[2])
    Ar = (op_dense(inner_re.factors[0]) @ op_dense(inner_re.factors[1])).real
    assert rel_err(parts[1], Ae[:n, :n]) <= 1e-15 and rel_err(parts[3], Ar) <= 1e-15
    ref = parts[0] @ Ae[:n, :n] @ parts[2] @ Ar @ parts[4]
    assert rel_err(outer.to_dense(), ref) <= 1e-12
    X = random_vectors(rng, (2, n), complex_=True)
    for path in PATHS:
        assert rel_err(outer(torch.from_numpy(X), path=path), apply_rows(ref, X)) <= 1e-12
    assert rel_err(outer.H.to_dense(), ref.conj().T) <= 1e-12
    assert rel_err(outer.T.to_dense(), ref.T) <= 1e-12
    # nesting a plain KMatrix is the same as flattening it
    plain = KMatrix([rbfly(rng, n), rperm(rng, n)])
    nested = KMatrix([plain, rdiag(rng, n)])
    flat = KMatrix(nested.flat_factors())
    assert len(flat.factors) == 3
    assert rel_err(flat.to_dense(), op_dense(nested)) <= 1e-12
    assert rel_err(nested.to_dense(), op_dense(plain) @ op_dense(nested.factors[1])) <= 1e-12


def _chains(rng, n):
    inner = KMatrix([rbfly(rng, n, cplx=True), rperm(rng, n)], real_output=True)
    return [
        KMatrix([rbfly(rng, n), rperm(rng, n)]),  # a butterfly writes the result
        KMatrix([rperm(rng, n), rbfly(rng, n, cplx=True), rdiag(rng, n)]),  # a permutation does
        KMatrix([rdiag(rng, n), inner, rbfly(rng, n, increasing=False)]),  # nested, real part inside
        KMatrix([rbfly(rng, 2 * n), rdiag(rng, 2 * n), rbfly(rng, 2 * n, increasing=False)], expansion=2),
        inner,
    ]


def test_results_are_never_the_reused_intermediate_buffers(rng):
    """A chain's intermediates live in buffers reused from call to call; what a product
    returns never does, so a later product cannot change an earlier result."""
    n = 64
    for K in _chains(rng, n):
        A = op_dense(K)
        for path in PATHS:
            X1, X2 = random_vectors(rng, (2, 16, n))
            y1 = K(torch.from_numpy(X1), path=path)
            kept = y1.clone()
            y2 = K(torch.from_numpy(X2), path=path)
            assert torch.equal(y1, kept), (K.structure(), path)
            assert rel_err(y1, apply_rows(A, X1)) <= 1e-12 and rel_err(y2, apply_rows(A, X2)) <= 1e-12


def test_threads_sharing_a_kmatrix_get_their_own_buffers(rng):
    import threading

    n = 256
    K = _chains(rng, n)[2]
    A = op_dense(K)
    X = random_vectors(rng, (4, 64, n))
    errors = [[] for _ in X]

    def work(i):
        for _ in range(15):
            errors[i].append(rel_err(K(torch.from_numpy(X[i]), path="fused"), apply_rows(A, X[i])))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(X))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(e) == 15 and max(e) <= 1e-12 for e in errors), [max(e) for e in errors]


def test_two_forwards_then_one_backward(rng):
    """With a parameter that requires grad, nothing autograd saved is a reused buffer."""
    n = 32
    B, P = rbfly(rng, n), rperm(rng, n)
    d = torch.from_numpy(random_vectors(rng, (n,)) + 0.5).requires_grad_()
    K = KMatrix([B, Diagonal(d), P])
    X1, X2 = random_vectors(rng, (2, 8, n))
    for path in GRAD_PATHS:
        d.grad = None
        (K(torch.from_numpy(X1), path=path).sum() + K(torch.from_numpy(X2), path=path).sum()).backward()
        # sum(B diag(d) P x) over rows: gradient (B^T 1) * (P x), summed over the rows
        PX = (np.concatenate([X1, X2]) @ op_dense(P).T)
        expect = (op_dense(B).T @ np.ones(n)) * PX.sum(0)
        assert rel_err(d.grad, expect) <= 1e-12



def test_two_forwards_then_one_backward_through_b_p(rng):
    """B · P with twiddles that require grad: the butterfly applies P itself (the fold of
    the numba kernel); autograd saves P x, which must not be a reused buffer."""
    n = 32
    tw = torch.from_numpy(random_twiddles(rng, n)).requires_grad_()
    p = rng.permutation(n)
    K = KMatrix([Butterfly(tw), Permutation(p)])
    X1, X2 = random_vectors(rng, (2, 8, n))
    G1, G2 = random_vectors(rng, (2, 8, n))
    # the reference: the same loss with P x formed in numpy, the butterfly alone
    B = Butterfly(tw)
    ((B(torch.from_numpy(X1[:, p])) * torch.from_numpy(G1)).sum()
     + (B(torch.from_numpy(X2[:, p])) * torch.from_numpy(G2)).sum()).backward()
    expect, tw.grad = tw.grad.clone(), None
    for path in GRAD_PATHS:
        tw.grad = None
        y1 = K(torch.from_numpy(X1), path=path)
        y2 = K(torch.from_numpy(X2), path=path)
        ((y1 * torch.from_numpy(G1)).sum() + (y2 * torch.from_numpy(G2)).sum()).backward()
        assert rel_err(tw.grad, expect) <= 1e-12, path

@pytest.mark.parametrize("expansion", [2, 4])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_expansion_corner(expansion, cplx, rng):
    n = 16
    N = expansion * n
    fs = [rbfly(rng, N, cplx=cplx), rperm(rng, N), rbfly(rng, N, increasing=False), rdiag(rng, N)]
    K = KMatrix(fs, expansion=expansion)
    assert K.n == n and K.N == N and K.shape == (n, n)
    full = np.eye(N)
    for f in fs:
        full = full @ op_dense(f)
    ref = full[:n, :n]
    assert rel_err(K.to_dense(), ref) <= 1e-12
    X = random_vectors(rng, (3, n), complex_=cplx)
    for path in PATHS:
        y = K(torch.from_numpy(X), path=path)
        assert y.shape == (3, n)
        assert rel_err(y, apply_rows(ref, X)) <= 1e-12
    assert rel_err(K.H.to_dense(), ref.conj().T) <= 1e-12
    assert rel_err(K.T.to_dense(), ref.T) <= 1e-12


def test_real_output(rng):
    n = 32
    fs = [rdiag(rng, n, cplx=True), rbfly(rng, n, cplx=True), rperm(rng, n), rbfly(rng, n, cplx=True, increasing=False)]
    K = KMatrix(fs, real_output=True)
    A = np.eye(n)
    for f in fs:
        A = A @ op_dense(f)
    ref = A.real
    assert np.abs(A.imag).max() > 1e-3  # the real part is not trivial
    D = K.to_dense()
    assert D.dtype == torch.float64 and not K.output_is_complex
    assert rel_err(D, ref) <= 1e-12
    for path in PATHS:
        xr = random_vectors(rng, (3, n))
        y = K(torch.from_numpy(xr), path=path)
        assert y.dtype == torch.float64
        assert rel_err(y, apply_rows(ref, xr)) <= 1e-12
        xc = random_vectors(rng, (3, n), complex_=True)
        y = K(torch.from_numpy(xc), path=path)  # linear extension: Re(A) x for complex x
        assert y.dtype == torch.complex128
        assert rel_err(y, apply_rows(ref, xc)) <= 1e-12
    assert rel_err(K.H.to_dense(), ref.T) <= 1e-12
    assert rel_err(K.T.to_dense(), ref.T) <= 1e-12
    assert rel_err(K.H.H.to_dense(), ref) <= 1e-12
    # expansion and real part together
    Ke = KMatrix([rbfly(rng, 2 * n, cplx=True), rdiag(rng, 2 * n, cplx=True)], expansion=2, real_output=True)
    refe = (op_dense(Ke.factors[0]) @ op_dense(Ke.factors[1]))[:n, :n].real
    assert rel_err(Ke.to_dense(), refe) <= 1e-12
    assert rel_err(Ke.H.to_dense(), refe.T) <= 1e-12


def test_real_matrix_with_nested_real_part(rng):
    """B · Re(A) · P with B real is a real matrix even though A computes in complex: every
    to_dense path returns the same real matrix and output_is_complex says so."""
    n = 16
    inner = KMatrix([rbfly(rng, n, cplx=True), rdiag(rng, n, cplx=True)], real_output=True)
    K = KMatrix([rbfly(rng, n), inner, rperm(rng, n)])
    ref = op_dense(K)
    assert not np.iscomplexobj(ref)
    dense = {p: K.to_dense(path=p) for p in (None, *PATHS)}
    for p, D in dense.items():
        assert rel_err(D, ref) <= 1e-12
    assert {p: D.dtype for p, D in dense.items()} == {p: torch.float64 for p in dense}
    assert K.output_is_complex is False
    xr = random_vectors(rng, (3, n))
    for path in PATHS:
        y = K(torch.from_numpy(xr), path=path)
        assert y.dtype == torch.float64
        assert rel_err(y, apply_rows(ref, xr)) <= 1e-12
        xc = random_vectors(rng, (3, n), complex_=True)
        assert rel_err(K(torch.from_numpy(xc), path=path), apply_rows(ref, xc)) <= 1e-12


@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("n,width,expansion", [(8, 1, 1), (16, 2, 1), (8, 1, 2), (16, 3, 2), (4, 2, 4), (64, 1, 1)])
def test_kmatrix_random(n, width, expansion, cplx):
    dtype = torch.complex128 if cplx else torch.float64
    K = KMatrix.random(n, width=width, expansion=expansion, dtype=dtype, seed=3)
    N = n * expansion
    bs = [f for f in K.factors if isinstance(f, Butterfly)]
    assert len(bs) == 2 * width == len(K.factors)
    assert [b.increasing for b in bs] == [True, False] * width
    assert all(b.n == N and b.dtype == dtype for b in bs)
    assert K.n == n and K.expansion == expansion and K.width == width
    expected = 4 * width * expansion * n * log2(expansion * n) * (2 if cplx else 1)
    assert K.n_params == expected
    ref = op_dense(K)
    assert ref.shape == (n, n)
    assert rel_err(K.to_dense(), ref) <= 1e-12
    if expansion == 1:  # a product of orthogonal/unitary butterflies
        assert np.abs(ref.conj().T @ ref - np.eye(n)).max() <= 1e-12
    # same seed, same matrix; different seed, different matrix
    assert torch.equal(KMatrix.random(n, width=width, expansion=expansion, dtype=dtype, seed=3).to_dense(), K.to_dense())
    assert not torch.equal(KMatrix.random(n, width=width, expansion=expansion, dtype=dtype, seed=4).to_dense(), K.to_dense())


def test_kmatrix_batched(rng):
    n, batch, m = 16, (2, 3), 4
    K = KMatrix(
        [rbfly(rng, n, cplx=True, batch=batch), rperm(rng, n), rdiag(rng, n, batch=batch),
         rbfly(rng, n, increasing=False)]  # shared (unbatched) factors broadcast
    )
    assert tuple(K.batch_shape) == batch and K.shape == (*batch, n, n)
    dense = op_dense(K)
    assert dense.shape == (*batch, n, n)
    assert rel_err(K.to_dense(), dense) <= 1e-12
    for path in PATHS:
        X = random_vectors(rng, (m, n), complex_=True)
        y = K(torch.from_numpy(X), path=path)
        assert y.shape == (*batch, m, n)
        assert rel_err(y, np.einsum("...ij,mj->...mi", dense, X)) <= 1e-12
        Xb = random_vectors(rng, (*batch, m, n))
        y = K(torch.from_numpy(Xb), path=path)
        assert rel_err(y, apply_rows(dense, Xb)) <= 1e-12
    Kr = KMatrix([rbfly(rng, 8, batch=(3,)), rperm(rng, 8), rbfly(rng, 8, increasing=False, batch=(3,))])
    dr = op_dense(Kr)
    assert dr.shape == (3, 8, 8)
    for i in range(3):
        assert rel_err(Kr[i].to_dense(), dr[i]) <= 1e-12
    with pytest.raises(IndexError):
        Kr[0][0]
    Kq = KMatrix.random(8, width=2, batch=(2, 3), seed=0)
    dq = op_dense(Kq)
    assert rel_err(Kq[1, 2].to_dense(), dq[1, 2]) <= 1e-12
    assert rel_err(Kq[1].to_dense(), dq[1]) <= 1e-12


def test_kmatrix_getitem_with_batched_diagonal(rng):
    """Indexing a batched K-matrix must also index its batched Diagonal factors
    (multi-start fitting with learned diagonals)."""
    n, batch = 8, (2, 3)
    K = KMatrix([rbfly(rng, n, cplx=True, batch=batch), rdiag(rng, n, batch=batch), rperm(rng, n)])
    dense = op_dense(K)
    k12 = K[1, 2]
    assert tuple(k12.batch_shape) == ()
    assert rel_err(k12.to_dense(), dense[1, 2]) <= 1e-12
    assert rel_err(K[0].to_dense(), dense[0]) <= 1e-12


def test_kmatrix_structure_and_wrap(rng):
    n = 8
    B, P, Dc = rbfly(rng, n), rperm(rng, n), rdiag(rng, n, cplx=True)
    assert KMatrix([B, P]).structure() == "B · P"
    assert KMatrix([Dc, B.T, P], real_output=True).structure() == "Re(Dℂ · B* · P)"
    assert KMatrix.wrap(B).factors == [B]
    K = KMatrix([B])
    assert KMatrix.wrap(K) is K
    with pytest.raises(TypeError, match="ndarray"):
        KMatrix.wrap(np.eye(n))


# ======================================================================================
# 2. gradients through K-matrix chains


@pytest.mark.parametrize("path", GRAD_PATHS)
@pytest.mark.parametrize("n", [2, 4, 8])
def test_gradcheck_kmatrix_chain_real_output(n, path, rng):
    tw1 = torch.from_numpy(random_twiddles(rng, n, complex_=True)).requires_grad_()
    tw2 = torch.from_numpy(random_twiddles(rng, n, complex_=True)).requires_grad_()
    d = torch.from_numpy(random_vectors(rng, (n,), complex_=True)).requires_grad_()
    perm = rng.permutation(n)
    xr = torch.from_numpy(random_vectors(rng, (2, n))).requires_grad_()
    xc = torch.from_numpy(random_vectors(rng, (2, n), complex_=True)).requires_grad_()

    def f(tw1, d, tw2, x):
        K = KMatrix(
            [Diagonal(d), Butterfly(tw1), Permutation(perm), Butterfly(tw2, increasing=False)], real_output=True
        )
        return K(x, path=path)

    fast = n >= 8  # fast mode: the Jacobian checked along random directions
    assert torch.autograd.gradcheck(f, (tw1, d, tw2, xr), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)
    assert torch.autograd.gradcheck(f, (tw1, d, tw2, xc), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("path", GRAD_PATHS)
def test_gradcheck_kmatrix_expansion(path, rng):
    n = 4
    tw1 = torch.from_numpy(random_twiddles(rng, 2 * n, complex_=True)).requires_grad_()
    tw2 = torch.from_numpy(random_twiddles(rng, 2 * n)).requires_grad_()
    d = torch.from_numpy(random_vectors(rng, (2 * n,))).requires_grad_()
    x = torch.from_numpy(random_vectors(rng, (3, n), complex_=True)).requires_grad_()

    def f(tw1, d, tw2, x):
        K = KMatrix([Butterfly(tw1), Diagonal(d), Butterfly(tw2, increasing=False)], expansion=2)
        return K(x, path=path)

    assert torch.autograd.gradcheck(f, (tw1, d, tw2, x), eps=1e-6, atol=1e-7, rtol=1e-5)


# ======================================================================================
# 8. KMatrix argument errors


def test_kmatrix_errors(rng):
    with pytest.raises(ValueError) as ei:
        KMatrix([rbfly(rng, 8), rbfly(rng, 16)])
    assert "factors" in str(ei.value) and "8" in str(ei.value) and "16" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        KMatrix([rbfly(rng, 8), rbfly(rng, 8).to(torch.float32)])
    msg = str(ei.value)
    assert "factors" in msg and "float32" in msg and "float64" in msg
    with pytest.raises(TypeError) as ei:
        KMatrix([rbfly(rng, 8, cplx=True).to(torch.complex64), rdiag(rng, 8)])
    assert "factors" in str(ei.value) and "complex64" in str(ei.value) and "float64" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        KMatrix([rbfly(rng, 8, batch=(2,)), rbfly(rng, 8, batch=(3,))])
    msg = str(ei.value)
    assert "factors" in msg and "(2,)" in msg and "(3,)" in msg
    with pytest.raises(ValueError, match="factors"):
        KMatrix([])
    with pytest.raises(TypeError) as ei:
        KMatrix([rbfly(rng, 8), np.eye(8)])
    assert "factors[1]" in str(ei.value) and "ndarray" in str(ei.value)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="expansion"):
            KMatrix([rbfly(rng, 8)], expansion=bad)
    with pytest.raises(ValueError) as ei:
        KMatrix([rbfly(rng, 8)], expansion=3)
    assert "expansion" in str(ei.value) and "8" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        KMatrix.random(6, expansion=2)
    assert "16" in str(ei.value) and "12" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        KMatrix.random(12)
    assert "16" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        rbfly(rng, 8) @ rbfly(rng, 16)
    assert "8" in str(ei.value) and "16" in str(ei.value)
    K = KMatrix.random(8, width=1)
    with pytest.raises(TypeError) as ei:
        K(torch.zeros(8, dtype=torch.float32))
    assert "x" in str(ei.value) and "float32" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        K(torch.zeros(2, 16, dtype=torch.float64))
    assert "x" in str(ei.value) and "(2, 16)" in str(ei.value)
    Kb = KMatrix.random(8, batch=(3,))
    with pytest.raises(ValueError) as ei:
        Kb(torch.zeros(4, 2, 8, dtype=torch.float64))
    assert "x" in str(ei.value) and "(4, 2, 8)" in str(ei.value)


# ======================================================================================
# 9. property test: composition is the dense product


@settings(max_examples=25, deadline=None, derandomize=True, database=None, phases=NO_SHRINK)
@given(
    m=st.integers(1, 8),
    names=st.lists(st.sampled_from(POOL), min_size=2, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_compose_is_dense_product(m, names, seed):
    n = 2**m
    rng = np.random.default_rng(seed)
    ops = [make_op(k, rng, n) for k in names]
    C = ops[0]
    for op in ops[1:]:
        C = C @ op
    ref = op_dense(ops[0])
    for op in ops[1:]:
        ref = ref @ op_dense(op)
    assert rel_err(C.to_dense(), ref) <= 1e-12
    # and through kfit's own to_dense of the parts
    ref2 = ops[0].to_dense().numpy()
    for op in ops[1:]:
        ref2 = ref2 @ op.to_dense().numpy()
    assert rel_err(C.to_dense(), ref2) <= 1e-12
