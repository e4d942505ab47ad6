"""Route an arbitrary permutation through a Beneš network (looping algorithm).

Conventions
-----------
* ``n = 2**m``, ``m >= 1``.  An index vector ``perm`` stands for the matrix ``P`` with
  ``P[i, perm[i]] = 1``: applying it to ``x`` gives ``y[i] = x[perm[i]]``, i.e. output
  position ``i`` receives the input element at position ``perm[i]``.
* A butterfly *level* of stride ``s`` (a power of two, ``1 <= s <= n/2``) is ``n/2``
  2x2 blocks on the index pairs ``(i, i+s)`` with ``(i // s) % 2 == 0``.  Pair ``p``
  (``0 <= p < n/2``) has block ``b = p // s``, offset ``j = p % s`` and
  ``i = b*2*s + j``; its block ``t = tw[p]`` maps
  ``(x[i], x[i+s]) -> (t00 x[i] + t01 x[i+s], t10 x[i] + t11 x[i+s])``.
  For routing every ``t`` is either the identity ("straight") or ``[[0,1],[1,0]]``
  ("cross").
* The Beneš network is the levels of strides ``n/2, n/4, ..., 2, 1, 2, ..., n/2``
  applied in that order.  kfit stores it as two butterflies: ``tw_dec`` (applied
  first; strides ``n/2, n/4, ..., 1``) and ``tw_inc`` (applied second; strides
  ``1, 2, ..., n/2``).  The two stride-1 levels meet in the middle; the first level
  of ``tw_inc`` is always the identity and the routing lives in the other
  ``2m - 1`` levels.

Looping algorithm
-----------------
Take a (sub)network of size ``N`` (half ``h = N/2``) that must realise ``perm``.  Its
first layer (stride ``h``) pairs inputs ``(q, q+h)`` and its last layer pairs outputs
``(r, r+h)``; everything in between is two independent networks of size ``h`` on
positions ``[0, h)`` ("top") and ``[h, N)`` ("bottom").  Give each input element (named
by its input position ``e``) a colour: 0 = routed through the top half, 1 = bottom.
The two elements of an input pair must get different colours (one switch feeds each
half once), and so must the two elements ``perm[r], perm[r+h]`` that an output pair
receives.  Every element lies on exactly one constraint of each kind, so the
constraints form disjoint even cycles alternating between the two kinds; the
looping algorithm walks each cycle and colours it alternately: colour ``v`` 0, its
input partner ``v ^ h`` 1, then the output partner of ``v ^ h`` (which must be 0),
and so on until the cycle closes, then restart at the next uncoloured input pair.
Given the colours:

* first-layer switch ``q`` crosses iff element ``q`` is coloured 1;
* last-layer switch ``r`` crosses iff element ``perm[r]`` is coloured 1;
* the top half must realise ``top[r] = (colour-0 one of perm[r], perm[r+h]) mod h``,
  the bottom half the colour-1 one (mod ``h``) -- element ``e`` enters its half at
  local position ``e mod h``.

Recursing gives all switches in ``O(n log n)`` total work.  In this stride
convention the sub-networks of one recursion depth ``d`` are contiguous: sub-network
``k`` (size ``N = n / 2**d``) occupies positions ``[k*N, (k+1)*N)`` and owns global
pairs ``[k*N/2, (k+1)*N/2)`` of both its stride-``N/2`` levels, with its local pair
``q`` equal to global pair ``k*N/2 + q``.  So each depth is an ``(S, N)`` array
(``S = 2**d`` sub-networks) and the switches of a depth are just its rows flattened.
The top half of sub-network ``k`` becomes sub-network ``2k`` of the next depth and
the bottom half ``2k + 1``.  Depth ``d`` fills ``tw_dec`` level ``d`` and ``tw_inc``
level ``m-1-d`` (both stride ``N/2``); the last depth (``N = 2``) is a single switch
per sub-network, in ``tw_dec`` level ``m-1``.

The cycle walk is inherently sequential inside one sub-network, so each depth is
done in one of two ways: with few sub-networks (the top depths) a plain Python loop
over all elements of the depth; with many sub-networks a numpy walk that advances
every sub-network's cycle by one step per iteration (``<= N`` iterations of
width-``S`` vector operations).  Both give the same colouring.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "benes_twiddles",
    "benes_switches",
    "benes_strides",
    "apply_levels",
]

#: Depths with fewer sub-networks than this use the pure-Python loop; the others the
#: numpy walk (vectorised across sub-networks).  Both produce identical colourings.
VECTORISE_MIN_SUBNETS = 64


# --------------------------------------------------------------------------- checks
def _check_perm(perm) -> np.ndarray:
    arr = np.asarray(perm)
    if arr.ndim != 1:
        raise ValueError(
            f"perm must be a 1-D integer index vector (a permutation of 0..n-1), "
            f"got an array of shape {arr.shape}"
        )
    n = arr.shape[0]
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        if n == 0:  # np.asarray([]) is float64; report the real problem
            raise ValueError(
                "perm must be a permutation of 0..n-1 with n a power of two >= 2, "
                "got an empty sequence"
            )
        raise ValueError(
            f"perm must be a 1-D integer index vector (a permutation of 0..n-1), "
            f"got dtype {arr.dtype}; convert it with np.asarray(perm, dtype=np.int64) "
            f"if its values are whole numbers"
        )
    if n < 2 or n & (n - 1):
        up = 2 if n < 2 else 1 << (n - 1).bit_length()
        raise ValueError(
            f"perm must have length n a power of two >= 2 (a Beneš network has n = 2^m "
            f"inputs), got length {n}; pad it to {up} (e.g. append the fixed points "
            f"{n}..{up - 1})"
        )
    bad = np.flatnonzero((arr < 0) | (arr >= n))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"perm must be a permutation of 0..{n - 1}, got out-of-range value "
            f"{int(arr[k])} at position {k}"
            + (f" ({bad.size} out-of-range values in all)" if bad.size > 1 else "")
        )
    arr = arr.astype(np.int64, copy=False)
    counts = np.bincount(arr, minlength=n)
    if np.any(counts != 1):
        dup = int(np.flatnonzero(counts > 1)[0])
        missing = int(np.flatnonzero(counts == 0)[0])
        where = np.flatnonzero(arr == dup)[:2].tolist()
        raise ValueError(
            f"perm must be a permutation of 0..{n - 1} (each index exactly once), "
            f"got duplicate index {dup} (at positions {where[0]} and {where[1]}) and "
            f"missing index {missing}"
        )
    return arr


def benes_strides(n: int) -> tuple[list[int], list[int]]:
    """Strides of the two butterflies in application order: (decreasing, increasing)."""
    m = int(n).bit_length() - 1
    return [n >> (k + 1) for k in range(m)], [1 << k for k in range(m)]


# --------------------------------------------------------------------------- colouring
def _colour_python(P: np.ndarray, h: int) -> np.ndarray:
    """Looping-algorithm colours for every row of ``P`` (shape (S, 2h), local indices).

    Returns int8 colours of shape (S, 2h), indexed by input (local) position.  All rows
    are handled in one flat Python loop: with row offsets that are multiples of
    N = 2h, ``e ^ h`` is still the input partner of flat index ``e``.
    """
    S, N = P.shape
    base = (np.arange(S, dtype=np.int64) * N)[:, None]
    flat = (P + base).ravel()
    inv = np.empty_like(flat)
    inv[flat] = np.arange(flat.size, dtype=np.int64)
    p = flat.tolist()
    iv = inv.tolist()
    col = [-1] * flat.size
    for start in range(flat.size):
        if start & h or col[start] >= 0:
            continue
        v = start
        while col[v] < 0:
            col[v] = 0
            w = v ^ h
            col[w] = 1
            v = p[iv[w] ^ h]  # output partner of w: must be colour 0
    return np.asarray(col, dtype=np.int8).reshape(S, N)


def _colour_numpy(P: np.ndarray, h: int) -> np.ndarray:
    """Same colouring as :func:`_colour_python`, walking all rows in lockstep.

    Each iteration every row either colours one fresh input pair of its current cycle
    or (its cycle just closed) moves its restart pointer on by one, so at most
    ``N = 2h`` iterations of width-S vector operations are needed.
    """
    S, N = P.shape
    base = np.arange(S, dtype=np.int64) * N
    flat = (P + base[:, None]).ravel()
    inv = np.empty_like(flat)
    inv[flat] = np.arange(flat.size, dtype=np.int64)
    col = np.full(flat.size, -1, dtype=np.int8)
    cur = base.copy()        # flat vertex to colour 0 next, or -1: cycle closed
    ptr = base.copy()        # restart pointer: next input pair (flat, local < h)
    end = base + h
    rows = np.arange(S)
    while True:
        idle = cur < 0
        if idle.any():
            r = rows[idle]
            q = ptr[r]
            live = q < end[r]
            r, q = r[live], q[live]
            free = col[q] < 0
            cur[r[free]] = q[free]
            ptr[r] += 1
        act = np.flatnonzero(cur >= 0)
        if act.size == 0:
            if np.any(ptr < end):  # some rows only skipped coloured restart points
                continue
            break
        v = cur[act]
        w = v ^ h
        col[v] = 0
        col[w] = 1
        nxt = flat[inv[w] ^ h]
        cur[act] = np.where(col[nxt] < 0, nxt, -1)
    return col.reshape(S, N)


# --------------------------------------------------------------------------- routing
def benes_switches(perm) -> tuple[np.ndarray, np.ndarray]:
    """Boolean switch settings (True = cross) of the Beneš network realising ``perm``.

    Returns ``(cross_dec, cross_inc)``, each of shape ``(m, n/2)``, levels in
    application order (strides ``n/2..1`` then ``1..n/2``); ``cross_inc[0]`` is all
    False.  See :func:`benes_twiddles` for the conventions.
    """
    P = _check_perm(perm)
    n = P.shape[0]
    m = n.bit_length() - 1
    half = n // 2
    cross_dec = np.zeros((m, half), dtype=bool)
    cross_inc = np.zeros((m, half), dtype=bool)
    P = P[None, :]  # (S, N): row k = the permutation sub-network k must realise
    for d in range(m):
        S, N = P.shape
        h = N // 2
        if h == 1:  # single switch: y[0] = x[perm[0]] -> cross iff perm[0] == 1
            cross_dec[d] = P[:, 0] == 1
            break
        colour = _colour_python if S < VECTORISE_MIN_SUBNETS else _colour_numpy
        C = colour(P, h)
        cross_dec[d] = (C[:, :h] == 1).ravel()
        a, b = P[:, :h], P[:, h:]
        a_top = np.take_along_axis(C, a, axis=1) == 0  # (S, h)
        cross_inc[m - 1 - d] = ~a_top.ravel()
        top = np.where(a_top, a, b) & (h - 1)
        bot = np.where(a_top, b, a) & (h - 1)
        P = np.stack((top, bot), axis=1).reshape(2 * S, h)
    return cross_dec, cross_inc


def _to_twiddles(cross: np.ndarray, dtype) -> np.ndarray:
    tw = np.zeros(cross.shape + (2, 2), dtype=dtype)
    straight = ~cross
    tw[..., 0, 0] = straight
    tw[..., 1, 1] = straight
    tw[..., 0, 1] = cross
    tw[..., 1, 0] = cross
    return tw


def benes_twiddles(perm, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Twiddles of a Beneš network that applies the permutation ``perm``.

    Parameters
    ----------
    perm : 1-D integer array, a permutation of ``0..n-1`` with ``n = 2**m >= 2``;
        it stands for ``P[i, perm[i]] = 1`` (``y[i] = x[perm[i]]``).
    dtype : numpy dtype of the returned twiddles (entries are exactly 0 and 1).

    Returns
    -------
    (tw_dec, tw_inc), each of shape ``(m, n/2, 2, 2)``, levels in application order:
    ``tw_dec`` has strides ``n/2, n/4, ..., 1`` and is applied first, ``tw_inc`` has
    strides ``1, 2, ..., n/2`` and is applied second.  Every block is the identity or
    the swap; ``tw_inc[0]`` is all identity.  ``apply_levels`` of both (in that order)
    maps ``x`` to ``x[perm]``.
    """
    cross_dec, cross_inc = benes_switches(perm)
    return _to_twiddles(cross_dec, dtype), _to_twiddles(cross_inc, dtype)


# --------------------------------------------------------------------------- reference
def apply_levels(tw, strides: Sequence[int], x, *, vectorized: bool = True) -> np.ndarray:
    """Apply butterfly levels to ``x`` (shape ``(n,)`` or a batch ``(..., n)``).

    ``tw`` is ``(L, n/2, 2, 2)`` (or a sequence of ``(n/2, 2, 2)`` levels) and
    ``strides`` the ``L`` strides, both in application order.  ``vectorized=False``
    runs the defining per-pair loop (slow; for small n / cross-checking).
    """
    x = np.asarray(x)
    n = x.shape[-1]
    strides = [int(s) for s in strides]
    if len(tw) != len(strides):
        raise ValueError(f"got {len(tw)} twiddle levels but {len(strides)} strides")
    out_dtype = np.result_type(*(np.asarray(t).dtype for t in tw), x.dtype) if len(tw) else x.dtype
    y = x.astype(out_dtype, copy=True)
    for t, s in zip(tw, strides):
        t = np.asarray(t)
        if t.shape != (n // 2, 2, 2) or s < 1 or s > n // 2 or s & (s - 1):
            raise ValueError(
                f"level with stride {s} and twiddle shape {t.shape} does not fit n = {n}"
            )
        if vectorized:
            nb = n // (2 * s)
            tb = t.reshape(nb, s, 2, 2)
            yv = y.reshape(y.shape[:-1] + (nb, 2, s))
            x0, x1 = yv[..., 0, :], yv[..., 1, :]
            y0 = tb[..., 0, 0] * x0 + tb[..., 0, 1] * x1
            y1 = tb[..., 1, 0] * x0 + tb[..., 1, 1] * x1
            y = np.stack((y0, y1), axis=-2).reshape(y.shape)
        else:
            z = y.copy()
            for p in range(n // 2):
                i = (p // s) * 2 * s + p % s
                a, b = y[..., i], y[..., i + s]
                z[..., i] = t[p, 0, 0] * a + t[p, 0, 1] * b
                z[..., i + s] = t[p, 1, 0] * a + t[p, 1, 1] * b
            y = z
    return y
