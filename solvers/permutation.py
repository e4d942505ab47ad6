"""Permutation routing: a (scaled) permutation matrix as ``B · B*`` with 0/1 twiddles.

A matrix with exactly one non-zero per row and per column is ``D · P`` (``D`` diagonal,
``(P x)[i] = x[perm[i]]``). ``P`` is routed through a Beneš network (looping algorithm,
``kfit.known.permutation``), which gives ``B · B*`` with every twiddle block exactly the
identity or the swap; the row scales ``D`` are folded into the last level applied (the
stride-n/2 level of ``B``), so the result is still exactly ``B · B*``.

For large n (65536 has 4.3e9 dense entries), pass the index vector (and scales) or a
``scipy.sparse`` matrix instead of a dense one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ._result import Result


@dataclass(frozen=True)
class PermutationConfig:
    """Settings of :func:`route_permutation`.

    Attributes
    ----------
    probes : int
        Random vectors used (beside ``arange(n)``) for the exact check of the result.
    seed : int
    """

    probes: int = 4
    seed: int = 0


def detect_permutation(M) -> tuple[np.ndarray, np.ndarray] | None:
    """``(perm, scales)`` if ``M`` has exactly one non-zero per row and column, else None.

    ``M`` may be a dense tensor/array or a scipy.sparse matrix. Exact test: zeros must be
    exactly zero.
    """
    import scipy.sparse as sp

    if sp.issparse(M):
        S = sp.csr_matrix(M)
        S.eliminate_zeros()
        n = S.shape[0]
        if S.shape != (n, n) or S.nnz != n or np.any(np.diff(S.indptr) != 1):
            return None
        perm = S.indices.astype(np.int64)
        scales = S.data
    else:
        T = torch.as_tensor(M)
        if T.ndim != 2 or T.shape[0] != T.shape[1]:
            return None
        nz = T != 0
        if not bool((nz.sum(1) == 1).all()) or not bool((nz.sum(0) == 1).all()):
            return None
        perm = nz.to(torch.int8).argmax(1).cpu().numpy().astype(np.int64)
        scales = T[torch.arange(T.shape[0]), torch.as_tensor(perm)].cpu().numpy()
    if np.bincount(perm, minlength=len(perm)).max() != 1:
        return None
    return perm, scales


def route_permutation(M=None, config: PermutationConfig | None = None, *, perm=None, scales=None, **overrides) -> Result:
    """Route a (scaled) permutation into ``B · B*`` exactly.

    Parameters
    ----------
    M : dense matrix or scipy.sparse matrix, optional
        One non-zero per row and column. Alternatively give ``perm`` (index vector,
        ``M[i, perm[i]] = scales[i]``) and optionally ``scales`` (default all ones).

    Returns
    -------
    Result
        status ``"exact"`` when the check ``K x == M x`` holds bit for bit on ``arange(n)``
        and on random probes, ``"not_in_class"`` when ``M`` is not a scaled permutation.
    """
    from kfit import Butterfly, KMatrix, known
    from kfit._validate import check_power_of_two

    t0 = time.perf_counter()
    cfg = replace(config or PermutationConfig(), **overrides)
    if perm is None:
        if M is None:
            raise TypeError("route_permutation needs M (a matrix) or perm (an index vector)")
        found = detect_permutation(M)
        in_dtype = str(getattr(M, "dtype", "float64")).replace("torch.", "")
        if found is None:
            return Result(
                kmatrix=None, error=float("nan"), error_method="none", status="not_in_class",
                solver="permutation", seconds=time.perf_counter() - t0, dtype=in_dtype, tol=0.0,
                message="not a (scaled) permutation: some row or column has zero or several non-zeros",
            )
        perm, scales = found
    else:
        in_dtype = "index vector"
        perm = perm.cpu().numpy() if isinstance(perm, torch.Tensor) else np.asarray(perm)
    n = check_power_of_two(len(perm), "n (the permutation's length)")
    scales = np.ones(n) if scales is None else np.asarray(scales)
    if scales.shape != (n,):
        raise ValueError(f"scales must have shape ({n},), got {scales.shape}")
    if np.any(scales == 0) or not np.all(np.isfinite(scales)):
        raise ValueError("scales must be finite and non-zero (one non-zero per row)")
    cplx = np.iscomplexobj(scales)
    dtype = torch.complex128 if cplx else torch.float64
    K = known.permutation(perm, dtype=dtype)
    unit = bool(np.all(scales == 1))
    if not unit:
        B_out = K.factors[0]  # increasing: its last level (stride n/2) writes the output
        tw = B_out.twiddle.clone()
        s = n // 2
        p = np.arange(n // 2)
        i = (p // s) * 2 * s + p % s
        d = torch.as_tensor(scales, dtype=dtype)
        tw[-1, :, 0, :] *= d[i][:, None]
        tw[-1, :, 1, :] *= d[i + s][:, None]
        K = KMatrix([Butterfly(tw, increasing=True), K.factors[1]])
    # Exact check: bit-for-bit equality of K x and M x = scales * x[perm].
    g = torch.Generator().manual_seed(cfg.seed)
    xs = [torch.arange(n, dtype=torch.float64)] + [torch.randn(n, generator=g, dtype=torch.float64) for _ in range(cfg.probes)]
    idx = torch.as_tensor(perm)
    d = torch.as_tensor(scales, dtype=dtype)
    worst = 0.0
    for x in xs:
        want = d * x.to(dtype)[idx]
        got = K(x.to(dtype), path="reference")
        worst = max(worst, float((got - want).abs().max() / want.abs().max().clamp_min(1e-300)))
    status = "exact" if worst == 0.0 else "approximate"
    what = "permutation" if unit else "scaled permutation (scales folded into the last level)"
    return Result(
        kmatrix=K,
        error=worst,
        error_method=f"exact comparison of K·x with M·x on arange(n) and {cfg.probes} Gaussian probes (max relative entry error)",
        status=status,
        solver="permutation",
        seconds=time.perf_counter() - t0,
        dtype=in_dtype,
        tol=0.0,
        message=f"{what} routed through a Beneš network into B·B* "
        f"({2 * (n.bit_length() - 1) - 1} switch layers), error {worst:.1e}",
        info={"n_switch_layers": 2 * (n.bit_length() - 1) - 1, "scaled": not unit},
    )
