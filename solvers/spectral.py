r"""Spectral identification: ``M = P · B · D · B^{-1} · P^T`` from the eigenvectors of ``M``.

A matrix diagonalised by a butterfly basis -- a circulant (the DFT diagonalises it), a
dyadic convolution (Hadamard), any ``V diag(λ) V^{-1}`` with ``V = P_out · B · P_in`` --
factors as

    M = V Λ V^{-1} = P_out · B · D · B^{-1} · P_out^T,      D = P_in Λ P_in^T,

and ``B^{-1}`` is a butterfly of the opposite stride order, so ``M`` lies in ``B · B*``
under one permutation and its inverse. Nothing about the target family is assumed:

1. the eigenvectors ``V`` of ``M`` are computed (``eigh`` for Hermitian ``M``, else
   ``eig``); each is determined up to a scale, which a butterfly absorbs, and their order
   is a column permutation, which identification recovers;
2. :func:`solvers.identify` factors ``V = P_out · B · P_in`` in closed form;
3. ``D`` is re-measured as the diagonal of ``B^{-1} P_out^T M P_out B`` (so it matches the
   identified ``B`` rather than the raw eigenvectors), folded into the stride-1 level of
   ``B``, and the error of the product is measured dense against ``M``.

The eigenvectors are unique only when the eigenvalues are distinct. A matrix with
(nearly) repeated eigenvalues -- the identity, a symmetric circulant, the DFT itself
(eigenvalues ±1, ±i) -- is reported ``not_in_class`` with the smallest gap; the other
solvers handle those.

Cost: one dense eigendecomposition, O(n^3) (about 1 s at n = 1024 on 2 CPU cores), then
identification, O(n^2).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from ._result import Result, square_target


@dataclass(frozen=True)
class SpectralConfig:
    """Settings of :func:`spectral`.

    Attributes
    ----------
    tol : float or None
        Status ``exact`` when the relative error is <= tol. Default 1e-12 (float64
        input), 1e-5 (float32).
    min_gap : float
        Smallest allowed distance between two eigenvalues, relative to the largest
        eigenvalue magnitude; below it the eigenvectors are not determined by ``M`` and the
        result is ``not_in_class``.
    seed : int
        Passed to identification (its random projections).
    """

    tol: float | None = None
    min_gap: float = 1e-8
    seed: int = 0


def _scale_columns(B, d: torch.Tensor):
    """``B · diag(d)`` as a butterfly: the scale folded into the first-applied level."""
    from kfit import Butterfly

    tw = B.twiddle.clone()
    s = B.strides[0]
    p = torch.arange(B.n // 2, device=tw.device)
    i = (p // s) * 2 * s + p % s
    tw[0, :, :, 0] *= d[i][:, None]
    tw[0, :, :, 1] *= d[i + s][:, None]
    return Butterfly(tw, increasing=B.increasing)


def _min_gap(lam: torch.Tensor) -> float:
    """The smallest distance between two eigenvalues (O(n^2), in row chunks)."""
    n = lam.numel()
    best = float("inf")
    for start in range(0, n, 512):
        d = (lam[start : start + 512, None] - lam[None, :]).abs()
        rows = torch.arange(start, min(n, start + 512))
        d[rows - start, rows] = float("inf")
        best = min(best, float(d.min()))
    return best


def spectral(M, config: SpectralConfig | None = None, **overrides) -> Result:
    """Factor ``M = P · B · D · B^{-1} · P^T`` from its eigenvectors (see module doc).

    Parameters
    ----------
    M : array-like, torch.Tensor or path to a .npy file
        Square, power-of-two size, real or complex.
    config : SpectralConfig, optional
        Keyword arguments override its fields (``spectral(M, tol=1e-10)``).

    Returns
    -------
    Result
        ``solver="spectral"``; ``status`` ``"exact"`` (error <= tol), ``"approximate"``
        (eigenvectors identified, error above tol) or ``"not_in_class"`` (repeated
        eigenvalues, or eigenvectors not of the form ``P · B · P``; ``kmatrix`` None).
        ``kmatrix`` is ``KMatrix([P, B, B^{-1}, P^T])`` (identity permutations omitted),
        with ``real_output=True`` for a real ``M`` whose eigenvectors are complex.
        ``info`` holds the eigenvalue gap, the eigenvector identification's error and how
        far ``B`` is from diagonalising ``M`` (``offdiag``: the relative Frobenius norm of
        the off-diagonal part of ``B^{-1} P^T M P B``).
    """
    import kfit
    from kfit import KMatrix
    from kfit._error import relative_error

    from .identify import identify

    t0 = time.perf_counter()
    cfg = replace(config or SpectralConfig(), **overrides)
    M, n, single, tol = square_target(M, cfg.tol)
    A = M.to(torch.complex128 if M.is_complex() else torch.float64)
    dtype = str(M.dtype).replace("torch.", "")

    def fail(message, **info):
        return Result(
            kmatrix=None, error=float("inf"), error_method="none", status="not_in_class",
            solver="spectral", seconds=time.perf_counter() - t0, dtype=dtype, tol=tol,
            message=message, info=info,
        )

    hermitian = bool(torch.allclose(A, A.mH, rtol=0, atol=1e-14 * float(A.abs().max())))
    lam, V = torch.linalg.eigh(A) if hermitian else torch.linalg.eig(A)
    scale = float(lam.abs().max())
    gap = _min_gap(lam) / scale if scale > 0 else 0.0
    info = {"hermitian": hermitian, "min_eigenvalue_gap": gap}
    if not gap > cfg.min_gap:
        return fail(
            f"eigenvalues repeat (smallest relative gap {gap:.1e} <= min_gap {cfg.min_gap:g}): "
            "the eigenvectors are not determined by M", **info
        )
    r = identify(V, tol=1e-9, seed=cfg.seed)
    info["eigenvector_identify"] = {"status": r.status, "error": r.error}
    if r.status == "not_in_class":
        return fail(f"the eigenvectors are not of the form P·B·P ({r.message})", **info)
    B = r.kmatrix.butterflies[0]
    P_out = r.kmatrix.factors[0] if isinstance(r.kmatrix.factors[0], kfit.Permutation) else None
    # W = B^{-1} P_out^T M P_out B is diagonal for an exact factorization; dense products
    # (O(n^3), like the eigendecomposition) keep the check independent of the fast paths.
    try:
        Binv = B.inverse()
    except ValueError as e:  # eigenvectors are independent, so only rounding gets here
        return fail(f"the identified eigenvector butterfly is numerically singular: {e}", **info)
    core = A.to(B.dtype)
    if P_out is not None:
        Pd = P_out.to_dense().to(B.dtype)
        core = Pd.mT @ core @ Pd
    W = Binv.to_dense() @ core @ B.to_dense()
    d = torch.diagonal(W).clone()
    info["offdiag"] = float(torch.linalg.matrix_norm(W - torch.diag(d)) / torch.linalg.matrix_norm(W))
    factors = [_scale_columns(B, d), Binv]
    if P_out is not None:
        factors = [P_out] + factors + [P_out.inverse()]
    K = KMatrix(factors, real_output=not A.is_complex() and B.is_complex)
    err = relative_error(K, A)
    status = "exact" if err.value <= tol else "approximate"
    message = (
        f"M = P·B·D·B⁻¹·Pᵀ from its eigenvectors, error {err.value:.2e}"
        + (f" <= tol {tol:g}" if status == "exact" else f" above tol {tol:g}")
    )
    if single:
        K = K.to(torch.complex64 if K.is_complex else torch.float32)
    return Result(
        kmatrix=K, error=err.value, error_method=err.method, status=status, solver="spectral",
        seconds=time.perf_counter() - t0, dtype=dtype, tol=tol, message=message, info=info,
    )
