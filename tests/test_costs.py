"""Cost accounting: n_params and flops of every type, counted independently from the
scipy.sparse factors, and the closed-form counts and baselines of DESIGN.md.

Counting rule (``tests/_reference.py``): a sparse factor with ``nnz`` stored entries and
``r`` rows costs ``nnz`` multiplies and ``nnz - r`` adds; a multiply is 1 (real*real),
2 (real*complex) or 6 (complex*complex), an add 1 (real) or 2 (complex). Whether the
vector is complex is propagated through the chain, starting from the matrix's own domain
(real for a real matrix -- including ``real_output`` K-matrices -- complex otherwise).
Permutations move data (0 FLOPs, 0 parameters); ``Re(A) x`` is real iff ``x`` is.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from _reference import count_costs, log2, op_dense, random_twiddles, random_vectors, sparse_matvec_cost
from kfit import Butterfly, Diagonal, KMatrix, Permutation, costs, known

KINDS = (Butterfly, Permutation, Diagonal, KMatrix)


def own_domain_is_complex(op) -> bool:
    """Whether the dense matrix (independent reference) is complex."""
    return bool(np.iscomplexobj(op_dense(op)))


def reference_costs(op):
    flops, params, _ = count_costs(op, own_domain_is_complex(op), kinds=KINDS)
    return flops, params


def _bfly(seed, n, cplx=False, increasing=True):
    rng = np.random.default_rng(seed)
    return Butterfly(torch.from_numpy(random_twiddles(rng, n, complex_=cplx)), increasing=increasing)


def _diag(seed, n, cplx=False):
    rng = np.random.default_rng(seed)
    return Diagonal(torch.from_numpy(random_vectors(rng, (n,), complex_=cplx) + 3.0))


def _perm(seed, n):
    return Permutation(np.random.default_rng(seed).permutation(n))


def _vec(seed, n, cplx=False):
    return random_vectors(np.random.default_rng(seed), (n,), complex_=cplx)


OPS = {
    # butterflies
    "B_real_inc_2": lambda: _bfly(0, 2),
    "B_real_inc_64": lambda: _bfly(1, 64),
    "B_real_dec_64": lambda: _bfly(2, 64, increasing=False),
    "B_cplx_inc_32": lambda: _bfly(3, 32, cplx=True),
    "B_cplx_dec_128": lambda: _bfly(4, 128, cplx=True, increasing=False),
    # permutations and diagonals
    "P_32": lambda: _perm(5, 32),
    "D_real_16": lambda: _diag(6, 16),
    "D_cplx_16": lambda: _diag(7, 16, cplx=True),
    # K-matrices
    "K_random_w1": lambda: KMatrix.random(16, width=1, seed=0),
    "K_random_w2_e2": lambda: KMatrix.random(8, width=2, expansion=2, seed=1),
    "K_random_cplx_w3": lambda: KMatrix.random(8, width=3, dtype=torch.complex128, seed=2),
    "K_real_B_cplx_D": lambda: KMatrix([_bfly(8, 16), _diag(9, 16, cplx=True), _perm(10, 16)]),
    "K_real_output": lambda: KMatrix(
        [_diag(11, 32, cplx=True), _bfly(12, 32, cplx=True), _perm(13, 32), _bfly(14, 32, increasing=False)],
        real_output=True,
    ),
    "K_nested_real": lambda: KMatrix(
        [_bfly(15, 16), KMatrix([_bfly(16, 16, cplx=True), _diag(17, 16, cplx=True)], real_output=True), _perm(18, 16)]
    ),
    "K_nested_expansion": lambda: KMatrix(
        [_bfly(19, 8, cplx=True), KMatrix([_bfly(20, 16), _bfly(21, 16, cplx=True, increasing=False)], expansion=2)]
    ),
    # the classical algorithms
    "dft_64": lambda: known.dft(64),
    "idft_16": lambda: known.idft(16),
    "hadamard_128": lambda: known.hadamard(128),
    "dct2_64": lambda: known.dct2(64),
    "dst2_32": lambda: known.dst2(32),
    "circulant_real_32": lambda: known.circulant(_vec(22, 32)),
    "circulant_cplx_32": lambda: known.circulant(_vec(23, 32, cplx=True)),
    "toeplitz_real_16": lambda: known.toeplitz(_vec(24, 16), _vec(25, 16)),
    "toeplitz_cplx_16": lambda: known.toeplitz(_vec(26, 16, cplx=True), _vec(27, 16, cplx=True)),
    "permutation_64": lambda: known.permutation(np.random.default_rng(28).permutation(64)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_costs_counted_from_sparse_factors(name):
    op = OPS[name]()
    flops, params = reference_costs(op)
    assert op.n_params == params
    assert op.flops == flops


def test_sparse_counting_rule_itself():
    """The reference rule on hand-made matrices (so the helper cannot be vacuous)."""
    A = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 0.0], [4.0, 5.0, 6.0]]))  # nnz 6, 3 rows
    assert sparse_matvec_cost(A, False) == (6 + 3, False)
    assert sparse_matvec_cost(A, True) == (6 * 2 + 3 * 2, True)
    Ac = sp.csr_matrix(A.toarray() * (1 + 1j))
    assert sparse_matvec_cost(Ac, False) == (6 * 2 + 3 * 2, True)
    assert sparse_matvec_cost(Ac, True) == (6 * 6 + 3 * 2, True)


# ======================================================================================
# closed forms (DESIGN.md)


@pytest.mark.parametrize("n", [2**k for k in range(1, 13)])
def test_closed_form_counts(n):
    L = log2(n)
    for inc in (True, False):
        B = Butterfly.identity(n, increasing=inc)
        assert B.n_params == 2 * n * L
        assert B.flops == 3 * n * L  # 4 multiplies + 2 adds per 2x2 block
        Bc = Butterfly.identity(n, dtype=torch.complex128, increasing=inc)
        assert Bc.n_params == 4 * n * L
        assert Bc.flops == 14 * n * L  # 4 complex mul (6) + 2 complex add (2) per block
    F = known.dft(n)
    assert F.flops == 14 * n * L
    assert F.n_params == 4 * n * L
    assert costs.fft_flops(n) == pytest.approx(5 * n * L, rel=0, abs=1e-9)
    assert F.flops / costs.fft_flops(n) == pytest.approx(2.8, rel=1e-12)
    H = known.hadamard(n)
    assert H.flops == 3 * n * L and H.n_params == 2 * n * L
    P = known.permutation(np.random.default_rng(n).permutation(n))
    assert P.n_params == 2 * 2 * n * L and P.flops == 2 * 3 * n * L
    assert Permutation.bit_reversal(n).flops == 0 and Permutation.bit_reversal(n).n_params == 0


@pytest.mark.parametrize("n,width,expansion", [(8, 1, 1), (16, 2, 1), (8, 1, 2), (4, 3, 4)])
def test_kmatrix_random_counts(n, width, expansion):
    N = n * expansion
    K = KMatrix.random(n, width=width, expansion=expansion, seed=0)
    assert K.n_params == 4 * width * expansion * n * log2(N)
    assert K.flops == 2 * width * 3 * N * log2(N)
    Kc = KMatrix.random(n, width=width, expansion=expansion, dtype=torch.complex128, seed=0)
    assert Kc.n_params == 2 * 4 * width * expansion * n * log2(N)
    assert Kc.flops == 2 * width * 14 * N * log2(N)


def test_real_output_counts_start_from_real_vectors():
    n = 64
    L = log2(n)
    # dct2 = Re(D · B · P): a real vector through P (free); the complex B's first level sees
    # a real vector (real*complex), its other L-1 levels a complex one (complex*complex);
    # then the complex phases D on a complex vector.
    K = known.dct2(n)
    blocks = n // 2
    expected = blocks * (4 * 2 + 2 * 2) + (L - 1) * blocks * (4 * 6 + 2 * 2) + n * 6
    assert reference_costs(K)[0] == expected
    assert K.flops == expected
    assert K.n_params == 4 * n * L + 2 * n
    # a complex butterfly alone on a real vector, inside a real_output chain
    Bc = _bfly(40, n, cplx=True)
    R = KMatrix([Bc], real_output=True)
    expected = blocks * (4 * 2 + 2 * 2) + (L - 1) * blocks * (4 * 6 + 2 * 2)
    assert reference_costs(R)[0] == expected
    assert R.flops == expected


# ======================================================================================
# flops through nested chains: the vector's type must be propagated correctly


def test_nested_real_output_block_on_complex_vector():
    """Re(A) applied to a complex vector gives a complex vector, so a complex factor after it
    works complex*complex. Outer chain: Bc · Re(Br) (Bc complex, Br real)."""
    n = 16
    L = log2(n)
    Bc, Br = _bfly(30, n, cplx=True), _bfly(31, n)
    inner = KMatrix([Br], real_output=True)
    K = KMatrix([Bc, inner])
    assert own_domain_is_complex(K)
    blocks = (n // 2) * L
    # Br on a complex vector: 4 real*complex mul (2) + 2 complex adds (2) per block;
    # Bc on a complex vector: 4 complex mul (6) + 2 complex adds (2) per block.
    expected = blocks * (4 * 2 + 2 * 2) + blocks * (4 * 6 + 2 * 2)
    assert reference_costs(K)[0] == expected
    assert K.flops == expected


def test_diagonal_factors_keep_zero_entries():
    """A stored zero on a diagonal is still a stored parameter (and a multiply in the
    product): factors() must keep one stored entry per row, like Butterfly.factors()
    keeps two, so costs counted from the factors match n_params / flops."""
    v = torch.tensor([0.0, 1.5, -2.0, 3.0], dtype=torch.float64)
    D = Diagonal(v)
    (F,) = D.factors()
    assert np.array_equal(F.toarray(), np.diag(v.numpy()))
    assert F.nnz == 4
    assert reference_costs(D) == (D.flops, D.n_params) == (4, 4)


# ======================================================================================
# baselines and summary


@pytest.mark.parametrize("n", [2, 16, 256, 4096])
def test_dense_baselines(n):
    assert costs.dense_params(n) == n * n
    assert costs.dense_params(n, complex=True) == 2 * n * n
    assert costs.dense_flops(n) == 2 * n * n
    assert costs.dense_flops(n, complex=True) == 8 * n * n
    # counted: n^2 multiplies and n(n-1) adds, "rounded up" to 2n^2 (8n^2 complex)
    if n <= 256:
        rng = np.random.default_rng(n)
        M = sp.csr_matrix(rng.standard_normal((n, n)) + 0.0)
        counted, _ = sparse_matvec_cost(M, False)
        assert counted == 2 * n * n - n
        Mc = sp.csr_matrix(M.toarray() * (1 + 1j))
        counted_c, _ = sparse_matvec_cost(Mc, True)
        assert counted_c == 8 * n * n - 2 * n


@pytest.mark.parametrize("n", [8, 64, 1024])
def test_summary(n):
    L = log2(n)
    F = known.dft(n)
    s = costs.summary(F)
    assert s["n"] == n and s["complex"] is True
    assert s["n_params"] == 4 * n * L and s["flops"] == 14 * n * L
    assert s["dense_params"] == 2 * n * n and s["dense_flops"] == 8 * n * n
    assert s["fft_flops"] == pytest.approx(5 * n * L)
    assert s["params_ratio_vs_dense"] == pytest.approx(4 * n * L / (2 * n * n))
    assert s["flops_ratio_vs_dense"] == pytest.approx(14 * n * L / (8 * n * n))
    assert s["flops_ratio_vs_fft"] == pytest.approx(2.8)
    H = costs.summary(known.hadamard(n))
    assert H["complex"] is False and H["dense_flops"] == 2 * n * n and H["dense_params"] == n * n
    assert H["flops"] == 3 * n * L and H["flops_ratio_vs_fft"] == pytest.approx(0.6)
    C = costs.summary(known.dct2(n))
    assert C["complex"] is False and C["dense_flops"] == 2 * n * n
    text = costs.format_summary(F)
    assert f"{4 * n * L:,}" in text and f"{14 * n * L:,}" in text and f"{8 * n * n:,}" in text
    assert f"{5 * n * L:,.0f}" in text and "2.80" in text
