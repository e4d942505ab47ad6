"""The compiled CPU kernel of the butterfly product (numba), for products without autograd.

The torch paths make one memory pass per level (or per elementwise op); on a CPU those
passes, not the arithmetic, are what a product costs. This kernel instead loads a group of
``G`` vectors once into a scratch buffer small enough to stay in the core's cache, runs
*every* level there, and writes the result once. Inside the buffer the vectors are laid
out *lane-major*, ``buf[i, g]`` = element ``i`` of vector ``g``, and complex data is held
as two real planes (real, imaginary), so a butterfly step is the same real arithmetic on
``G`` contiguous lanes. (The compiler unrolls the 16 lanes but, unable to prove that a
level's two rows do not overlap, emits mostly scalar instructions -- seen in the assembly;
the gain measured is the single pass through memory. A lane count unknown at compile time
is vectorized behind a runtime overlap check, and was slower.)

A permutation applied just before the butterfly (the ``B · P`` of the DFT) is folded into
the first level: it reads its two inputs at ``perm[i]`` instead of ``i``, so the gather
costs nothing.

Shapes (canonical, as in ``_products``): x (Tx, M, n), twiddles (Tt, L, n/2, 2, 2), result
(T, M, n), T = max(Tx, Tt). numba is imported only when this path runs.
"""
from __future__ import annotations

import functools
import threading

import numpy as np
import torch

#: Vectors per group: the SIMD lanes of the buffer (16 float32 = one AVX-512 register).
GROUP = 16
#: Columns per tile when moving data between the (M, n) rows and the lane-major buffer: a
#: 16 x 16 tile of each plane stays in L1 while it is transposed.
TILE = 16

# numba's default threading layer aborts the process when two Python threads launch
# parallel kernels at once; products from several threads take turns on the kernel (each
# call uses every core anyway).
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether numba imports here (tried once; numba refuses to import beside a numpy newer
    than it supports, and then "auto" uses the fused path)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _kernel():
    import numba as nb

    G, TILE_ = GROUP, TILE

    @nb.njit(inline="always", fastmath={"contract"})
    def _pair(sr, si, dr, di, k0, k1, i0, i1, w, p, P):  # pragma: no cover - compiled
        # One butterfly on all G lanes: (dst[i0], dst[i1]) = t_p (src[k0], src[k1]).
        if P == 1:
            w00, w01, w10, w11 = w[0, 0, p], w[1, 0, p], w[2, 0, p], w[3, 0, p]
            for g in range(G):
                u = sr[k0, g]
                v = sr[k1, g]
                dr[i0, g] = w00 * u + w01 * v
                dr[i1, g] = w10 * u + w11 * v
        else:
            w00r, w00i = w[0, 0, p], w[0, 1, p]
            w01r, w01i = w[1, 0, p], w[1, 1, p]
            w10r, w10i = w[2, 0, p], w[2, 1, p]
            w11r, w11i = w[3, 0, p], w[3, 1, p]
            for g in range(G):
                ur, ui = sr[k0, g], si[k0, g]
                vr, vi = sr[k1, g], si[k1, g]
                dr[i0, g] = w00r * ur - w00i * ui + w01r * vr - w01i * vi
                di[i0, g] = w00r * ui + w00i * ur + w01r * vi + w01i * vr
                dr[i1, g] = w10r * ur - w10i * ui + w11r * vr - w11i * vi
                di[i1, g] = w10r * ui + w10i * ur + w11r * vi + w11i * vr

    @nb.njit(inline="always")
    def _move(x, ar, ai, r0, rows, ib, width, P, load):  # pragma: no cover - compiled
        # One tile of `width` columns between rows r0.. of x (M, n, P) and the lanes of
        # the planes (n, G): load (x -> planes) or store (planes -> x).
        for g in range(rows):
            for ii in range(width):
                if load:
                    ar[ib + ii, g] = x[r0 + g, ib + ii, 0]
                    if P == 2:
                        ai[ib + ii, g] = x[r0 + g, ib + ii, 1]
                else:
                    x[r0 + g, ib + ii, 0] = ar[ib + ii, g]
                    if P == 2:
                        x[r0 + g, ib + ii, 1] = ai[ib + ii, g]

    # "contract" only (FMA): no fast-math assumptions about NaN or Inf, so non-finite
    # inputs propagate exactly as in the torch paths.
    @nb.njit(parallel=True, fastmath={"contract"}, cache=True, nogil=True)
    def run(x, perm, tw, strides, out):  # pragma: no cover - compiled; tested through the public path
        # x: (Tx, M, n, P) real view (P = 1 real, 2 complex); tw: (Tt, L, 4, P, n/2) with
        # 4 = t00, t01, t10, t11; strides: (L,) the stride of each level in application
        # order; perm: (n,) read permutation of the first level; out: (T, M, n, P).
        Tx, M, n, P = x.shape
        Tt, L = tw.shape[0], tw.shape[1]
        T = max(Tx, Tt)
        groups = (M + G - 1) // G
        for job in nb.prange(T * groups):
            t = job // groups
            r0 = (job % groups) * G
            rows = min(G, M - r0)
            xt = x[t if Tx > 1 else 0]
            w = tw[t if Tt > 1 else 0]
            # a: the group as loaded (lanes past the last row stay 0); b: the levels' work
            a = np.empty((P, n, G), dtype=x.dtype) if rows == G else np.zeros((P, n, G), dtype=x.dtype)
            b = np.empty((P, n, G), dtype=x.dtype)
            ar, ai, br, bi = a[0], a[P - 1], b[0], b[P - 1]
            for ib in range(0, n, TILE_):  # rows -> lanes, one L1-sized tile at a time
                if n >= TILE_:  # a constant width: the compiler unrolls and vectorizes
                    _move(xt, ar, ai, r0, rows, ib, TILE_, P, True)
                else:
                    _move(xt, ar, ai, r0, rows, ib, n, P, True)
            for lv in range(L):
                s = strides[lv]
                wl = w[lv]
                for blk in range(n // (2 * s)):
                    base = blk * 2 * s
                    for j in range(s):
                        i0 = base + j
                        i1 = i0 + s
                        if lv == 0:  # a -> b, reading through the permutation
                            _pair(ar, ai, br, bi, perm[i0], perm[i1], i0, i1, wl, blk * s + j, P)
                        else:  # in place in b
                            _pair(br, bi, br, bi, i0, i1, i0, i1, wl, blk * s + j, P)
            ot = out[t]
            for ib in range(0, n, TILE_):  # lanes -> rows
                if n >= TILE_:
                    _move(ot, br, bi, r0, rows, ib, TILE_, P, False)
                else:
                    _move(ot, br, bi, r0, rows, ib, n, P, False)

    return run


def plan(twiddle: torch.Tensor, increasing: bool):
    """The kernel's twiddles: (Tt, L, 4, P, n/2) contiguous numpy planes (P = 2 for complex:
    real and imaginary part), and the stride of each level."""
    from ._products import stride

    Tt, L, half = twiddle.shape[:3]
    tw = twiddle.detach().cpu().reshape(Tt, L, half, 4)
    parts = torch.view_as_real(tw) if tw.is_complex() else tw.unsqueeze(-1)  # (Tt, L, n/2, 4, P)
    planes = np.ascontiguousarray(parts.permute(0, 1, 3, 4, 2).numpy())
    strides = np.array([stride(2 * half, lv, increasing) for lv in range(L)], dtype=np.int64)
    return planes, strides


def _real_view(t: torch.Tensor) -> np.ndarray:
    return (torch.view_as_real(t) if t.is_complex() else t.unsqueeze(-1)).numpy()


def apply(x: torch.Tensor, kernel_plan, perm: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``B (P x)`` for x (Tx, M, n) on the CPU, without autograd: ``kernel_plan`` from
    :func:`plan` (its dtype and complexity match x's), ``perm`` the optional permutation
    ``P`` (``(P x)[i] = x[perm[i]]``), ``out`` a contiguous (T, M, n) result buffer."""
    planes, strides = kernel_plan
    Tx, M, n = x.shape
    T = max(Tx, planes.shape[0])
    x = x.detach().contiguous()
    if out is None:
        out = torch.empty((T, M, n), dtype=x.dtype)
    idx = np.arange(n, dtype=np.int64) if perm is None else perm.detach().cpu().numpy().astype(np.int64, copy=False)
    run = _kernel()
    import numba

    with _LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        run(_real_view(x), idx, planes, strides, _real_view(out))
    return out
