"""Independent references for the kfit tests (numpy / scipy only; never kfit's own dense paths).

The butterfly convention is the one stated in the module doc of ``kfit/_products.py``:
level ``l`` has stride ``s = 2**l`` (increasing) or ``s = n / 2**(l+1)`` (decreasing); its pair
``p`` couples ``i = (p // s) * 2s + p % s`` and ``i + s`` and the 2x2 block ``t = tw[l, p]`` maps
``(x[i], x[i+s]) -> (t00 x[i] + t01 x[i+s], t10 x[i] + t11 x[i+s])``; ``tw[0]`` acts first, so
the matrix is ``B = B_{L-1} ... B_1 B_0``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# --------------------------------------------------------------------------------------
# small utilities


def to_numpy(t) -> np.ndarray:
    """A torch tensor (or anything array-like) as a numpy array, detached, on the CPU."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if t.is_conj():
            t = t.resolve_conj()
        return t.numpy()
    return np.asarray(t)


def rel_err(got, ref) -> float:
    """Relative Frobenius error ||got - ref|| / ||ref|| (numpy, float64 / complex128)."""
    g = to_numpy(got)
    r = to_numpy(ref)
    assert g.shape == r.shape, f"shape mismatch: got {g.shape}, reference {r.shape}"
    if g.dtype.itemsize < 8 or (g.dtype.kind == "c" and g.dtype.itemsize < 16):
        g = g.astype(np.complex128 if g.dtype.kind == "c" else np.float64)
    den = np.linalg.norm(r)
    assert den > 0, "reference is zero: the comparison would be meaningless"
    return float(np.linalg.norm(g - r) / den)


def real_transform(name: str, n: int) -> np.ndarray:
    """The orthonormal real transform ``name`` (dct1..4, dst1..4 from scipy.fft, or hartley:
    ``cas(2 pi jk / n) / sqrt(n)`` from numpy's FFT) as an n x n matrix."""
    import scipy.fft

    eye = np.eye(n)
    if name == "hartley":
        F = np.fft.fft(eye, axis=0)
        return (F.real - F.imag) / np.sqrt(n)
    kind, t = name[:3], int(name[3:])
    return getattr(scipy.fft, kind)(eye, type=t, norm="ortho", axis=0)


def log2(n: int) -> int:
    m = n.bit_length() - 1
    assert 1 << m == n
    return m


POWERS_TO_4096 = [2**k for k in range(1, 13)]


# --------------------------------------------------------------------------------------
# butterflies from the pair formula


def ref_strides(n: int, increasing: bool) -> list[int]:
    L = log2(n)
    return [(1 << lv) if increasing else n >> (lv + 1) for lv in range(L)]


def pair_rows(n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, i + s) of a level with stride s, in pair order p = 0 .. n/2 - 1."""
    i = []
    for p in range(n // 2):
        i.append((p // s) * 2 * s + p % s)
    i = np.array(i, dtype=np.int64)
    return i, i + s


def level_dense(tw_level: np.ndarray, s: int) -> np.ndarray:
    """Dense (n, n) matrix of one level from its (n/2, 2, 2) blocks (pair formula)."""
    half = tw_level.shape[0]
    n = 2 * half
    out = np.zeros((n, n), dtype=np.result_type(tw_level.dtype, np.float64))
    top, bot = pair_rows(n, s)
    for p in range(half):
        i, j = top[p], bot[p]
        t = tw_level[p]
        out[i, i] += t[0, 0]
        out[i, j] += t[0, 1]
        out[j, i] += t[1, 0]
        out[j, j] += t[1, 1]
    return out


def level_sparse(tw_level: np.ndarray, s: int) -> sp.csr_matrix:
    """The same level as a scipy.sparse matrix (vectorised; for large n)."""
    half = tw_level.shape[0]
    n = 2 * half
    p = np.arange(half)
    i = (p // s) * 2 * s + p % s
    j = i + s
    rows = np.concatenate([i, i, j, j])
    cols = np.concatenate([i, j, i, j])
    vals = np.concatenate([tw_level[:, 0, 0], tw_level[:, 0, 1], tw_level[:, 1, 0], tw_level[:, 1, 1]])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def butterfly_dense(tw, increasing: bool) -> np.ndarray:
    """Dense butterfly ``B_{L-1} ... B_0`` from twiddles (L, n/2, 2, 2).

    n <= 64: the dense levels (pair formula, element by element) multiplied out with numpy;
    larger n: the sparse levels applied to the identity (same formula, O(n^2 log n) work).
    """
    tw = to_numpy(tw)
    n = 2 * tw.shape[-3]
    dtype = np.result_type(tw.dtype, np.float64)
    if n > 64:
        return butterfly_apply(tw, increasing, np.eye(n, dtype=dtype))
    out = np.eye(n, dtype=dtype)
    for lv, s in enumerate(ref_strides(n, increasing)):
        out = level_dense(tw[lv], s) @ out
    return out


def butterfly_apply(tw, increasing: bool, X: np.ndarray) -> np.ndarray:
    """``B @ X`` for column vectors X (n, k), one sparse level at a time (any n)."""
    tw = to_numpy(tw)
    n = 2 * tw.shape[-3]
    Y = np.asarray(X)
    for lv, s in enumerate(ref_strides(n, increasing)):
        Y = level_sparse(tw[lv], s) @ Y
    return Y


def butterfly_dense_large(tw, increasing: bool) -> np.ndarray:
    """Dense butterfly via sparse levels applied to the identity (cheaper for n >= 512)."""
    tw = to_numpy(tw)
    n = 2 * tw.shape[-3]
    return butterfly_apply(tw, increasing, np.eye(n, dtype=np.result_type(tw.dtype, np.float64)))


def batched_butterfly_dense(tw, increasing: bool) -> np.ndarray:
    """Dense matrices of a batch of butterflies, twiddles (*batch, L, n/2, 2, 2)."""
    tw = to_numpy(tw)
    batch = tw.shape[:-4]
    n = 2 * tw.shape[-3]
    flat = tw.reshape(-1, *tw.shape[-4:])
    out = np.stack([butterfly_dense(t, increasing) for t in flat])
    return out.reshape(*batch, n, n)


# --------------------------------------------------------------------------------------
# random data (numpy generators, independent of kfit's own random constructors)


def random_twiddles(rng: np.random.Generator, n: int, *, batch=(), complex_: bool = False, kind="normal"):
    """Random twiddles (*batch, L, n/2, 2, 2) as a float64 / complex128 numpy array.

    ``kind="normal"``: i.i.d. N(0, 1/2) entries (complex: circular).
    ``kind="orthogonal"``: Q factors of Gaussian 2x2 matrices (orthogonal / unitary, with
    rotations and reflections; well conditioned at any depth).
    """
    L = log2(n)
    shape = (*batch, L, n // 2, 2, 2)
    a = rng.standard_normal(shape)
    if complex_:
        a = (a + 1j * rng.standard_normal(shape)) / np.sqrt(2)
    a = a / np.sqrt(2)
    if kind == "orthogonal":
        q, r = np.linalg.qr(a)
        d = np.diagonal(r, axis1=-2, axis2=-1)
        ph = d / np.abs(d)
        a = q * ph[..., None, :]
    elif kind != "normal":
        raise ValueError(kind)
    return a


def random_vectors(rng: np.random.Generator, shape, complex_: bool = False) -> np.ndarray:
    x = rng.standard_normal(shape)
    if complex_:
        x = x + 1j * rng.standard_normal(shape)
    return x


# --------------------------------------------------------------------------------------
# permutations


def brute_bit_reversal(n: int) -> np.ndarray:
    m = log2(n)
    if m == 0:
        return np.zeros(1, dtype=np.int64)
    return np.array([int(format(i, f"0{m}b")[::-1], 2) for i in range(n)], dtype=np.int64)


def perm_dense(perm) -> np.ndarray:
    """P with P[i, perm[i]] = 1, i.e. (P x)[i] = x[perm[i]]."""
    perm = np.asarray(perm)
    n = perm.size
    out = np.zeros((n, n))
    for i in range(n):
        out[i, perm[i]] = 1.0
    return out


# --------------------------------------------------------------------------------------
# cost counting from scipy.sparse factors (DESIGN.md conventions)


def _mul_weight(mat_complex: bool, vec_complex: bool) -> int:
    if mat_complex and vec_complex:
        return 6
    if mat_complex or vec_complex:
        return 2
    return 1


def sparse_matvec_cost(F, vec_complex: bool) -> tuple[int, bool]:
    """FLOPs of ``F @ v`` counted from the stored entries; and whether the result is complex.

    nnz multiplies + (nnz - rows) adds; weights: real*real 1, real*complex 2, complex*complex 6
    per multiply; an add costs 1 on reals, 2 on complex numbers.
    """
    F = sp.csr_matrix(F)
    mat_complex = np.iscomplexobj(F.data)
    out_complex = mat_complex or vec_complex
    nnz, rows = F.nnz, F.shape[0]
    flops = nnz * _mul_weight(mat_complex, vec_complex) + (nnz - rows) * (2 if out_complex else 1)
    return flops, out_complex


def sparse_params(F) -> int:
    F = sp.csr_matrix(F)
    return F.nnz * (2 if np.iscomplexobj(F.data) else 1)


def count_costs(op, vec_complex: bool, *, kinds) -> tuple[int, int, bool]:
    """(flops, params, result_complex) of ``op`` on a real/complex vector, from the factors.

    ``kinds`` = (Butterfly, Permutation, Diagonal, KMatrix) classes, so this module itself
    never imports kfit. Permutations move data: 0 FLOPs, 0 parameters. ``Re(A) x`` is real
    exactly when ``x`` is real.
    """
    Butterfly, Permutation, Diagonal, KMatrix = kinds
    if isinstance(op, Permutation):
        return 0, 0, vec_complex
    if isinstance(op, (Butterfly, Diagonal)):
        flops = params = 0
        c = vec_complex
        for F in reversed(op.factors()):  # matrix-product order: the last one acts first
            f, c = sparse_matvec_cost(F, c)
            flops += f
            params += sparse_params(F)
        return flops, params, c
    if isinstance(op, KMatrix):
        flops = params = 0
        c = vec_complex
        for f in reversed(op.factors):
            fl, pa, c = count_costs(f, c, kinds=kinds)
            flops += fl
            params += pa
        if op.real_output:
            c = vec_complex
        return flops, params, c
    raise TypeError(type(op))


# --------------------------------------------------------------------------------------
# dense reference of any kfit operator, from its stored data only (twiddles, index vector,
# diagonal values, the list of factors, expansion, real_output) -- never kfit's products.


def op_dense(op) -> np.ndarray:
    """Dense ``(*batch, n, n)`` matrix of a Butterfly / Permutation / Diagonal / KMatrix."""
    if hasattr(op, "twiddle"):
        return batched_butterfly_dense(op.twiddle, op.increasing)
    if hasattr(op, "perm"):
        return perm_dense(to_numpy(op.perm))
    if hasattr(op, "values"):
        v = to_numpy(op.values)
        return v[..., :, None] * np.eye(v.shape[-1])
    if isinstance(getattr(op, "factors", None), list):
        dense = [op_dense(f) for f in op.factors]
        N = dense[0].shape[-1]
        prod = np.eye(N)
        for d in dense:  # matrix-product order
            assert d.shape[-1] == N
            prod = prod @ d
        n = N // op.expansion
        out = prod[..., :n, :n]
        if op.real_output:
            out = out.real
        return out
    raise TypeError(type(op))
