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
(T, M, n), T = max(Tx, Tt). numba is imported only when this path runs; the jitted code
(``_numba_kernels.py``) compiles at the first product of each precision (~5 s, 2 cores)
and is cached on disk by numba: a later process loads it in ~0.5 s.
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


def _kernel():
    try:
        from ._numba_kernels import run  # imports numba: only on this path
    except RuntimeError as exc:  # numba raises this when no cache directory is writable
        raise RuntimeError(
            f"the numba product kernel could not be set up ({exc}); numba caches it on disk: set "
            f"NUMBA_CACHE_DIR to a writable directory, or pick path='fused' (KFIT_PRODUCT_PATH=fused)"
        ) from exc
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
