"""The jitted functions of the numba product kernel (see ``kfit/_numba.py``).

Imported only when a product runs on the numba path: importing this module imports numba.
Module-level functions, so that numba's on-disk cache (``cache=True``) finds them again in
the next process instead of compiling anew (seconds per precision).
"""
import numba as nb
import numpy as np

from ._numba import GROUP as G
from ._numba import TILE


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
        for ib in range(0, n, TILE):  # rows -> lanes, one L1-sized tile at a time
            if n >= TILE:  # a constant width, which the compiler unrolls (a runtime width: 2x slower)
                _move(xt, ar, ai, r0, rows, ib, TILE, P, True)
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
        for ib in range(0, n, TILE):  # lanes -> rows
            if n >= TILE:
                _move(ot, br, bi, r0, rows, ib, TILE, P, False)
            else:
                _move(ot, br, bi, r0, rows, ib, n, P, False)
