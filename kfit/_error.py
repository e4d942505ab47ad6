"""The error convention of DESIGN.md: relative Frobenius error, measured in float64."""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: Above this size the dense product is not formed; random probes estimate the error.
DENSE_ERROR_MAX_N = 4096


@dataclass(frozen=True)
class ErrorReport:
    """``value = ||K - M||_F / ||M||_F``; ``method`` says how it was measured."""

    value: float
    method: str  # "dense float64" or "probe float64 (k vectors)"

    def __float__(self):
        return self.value

    def __str__(self):
        return f"{self.value:.3e} (relative Frobenius, {self.method})"


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def _fro(t: torch.Tensor, dim=None) -> torch.Tensor:
    """Frobenius norm in one pass (complex entries as pairs of reals: no |z| temporary);
    over the dimensions ``dim`` (an int or a tuple; None: all) when given."""
    if dim is None:
        return torch.linalg.vector_norm(torch.view_as_real(t) if t.is_complex() else t)
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if t.is_complex():  # the re/im axis of the real view is last
        dims = tuple(d - 1 if d < 0 else d for d in dims) + (-1,)
        t = torch.view_as_real(t)
    return torch.linalg.vector_norm(t, dim=dims)


#: Rows of ``K - M`` formed at a time by :func:`_diff_norm` (a cache-sized scratch buffer).
_DIFF_CHUNK_BYTES = 4 * 2**20


def _diff_norm(K: torch.Tensor, M: torch.Tensor, rows=None, cols=None) -> torch.Tensor:
    """``||K' - M||_F`` for 2-D K, M without materialising the n x n difference: the large
    matrices are read once, the difference lives in a small reused buffer.

    ``K' = K``, or with ``rows``/``cols`` (see :func:`_outer_permutations`) the permuted
    ``K'[i, c] = K[rows[i], cols[c]]``, formed a chunk of rows at a time instead of as two
    n x n copies.
    """
    dtype = torch.promote_types(K.dtype, M.dtype)
    n_rows, n_cols = M.shape
    step = max(1, _DIFF_CHUNK_BYTES // max(1, n_cols * dtype.itemsize))
    if step >= n_rows and rows is None and cols is None:
        return _fro(K.to(dtype) - M)
    buf = torch.empty((min(step, n_rows), n_cols), dtype=dtype, device=M.device)
    parts = []
    for i in range(0, n_rows, step):
        j = min(i + step, n_rows)
        chunk = K[i:j] if rows is None else K.index_select(0, rows[i:j].to(K.device))
        if cols is not None:
            chunk = torch.gather(chunk, 1, cols.to(K.device).expand(j - i, n_cols))
        parts.append(_fro(torch.sub(chunk, M[i:j], out=buf[: j - i])))
    return torch.linalg.vector_norm(torch.stack(parts))


def _outer_permutations(op):
    """``op = P_out · core · P_in`` with permutations at the ends: ``(core, rows, cols)``
    such that ``op[i, c] = core[rows[i], cols[c]]`` (None where there is no permutation);
    None when ``op`` has no such form (or the form would not save anything)."""
    from ._kmatrix import KMatrix
    from ._permutation import Permutation

    if not isinstance(op, KMatrix) or op.expansion != 1 or op.real_output or len(op.factors) < 2:
        return None
    fs = list(op.factors)
    rows = fs.pop(0).perm if isinstance(fs[0], Permutation) else None
    cols = fs.pop().inverse().perm if fs and isinstance(fs[-1], Permutation) else None
    if (rows is None and cols is None) or not fs or any(isinstance(f, Permutation) for f in fs):
        return None
    core = fs[0] if len(fs) == 1 else KMatrix(fs)
    return core, rows, cols


def relative_error(op, M: torch.Tensor, *, method: str = "auto", probes: int = 32, seed: int = 0) -> ErrorReport:
    """Relative Frobenius error of a structured operator ``op`` against the dense ``M``.

    Computed in float64/complex128 (the operator is promoted first). ``method="dense"``
    forms ``op.to_dense()``; ``"probe"`` uses ``||(K - M) X||_F / ||M X||_F`` with
    ``probes`` Gaussian columns; ``"auto"`` is dense for n <= 4096.
    """
    n = M.shape[-1]
    if method == "auto":
        method = "dense" if n <= DENSE_ERROR_MAX_N else "probe"
    wide = op.to(torch.complex128 if op.dtype.is_complex else torch.float64)
    Mw = _wide(M).to(wide.device)
    if method == "dense":
        # P_out · core · P_in: the permutations are applied chunk by chunk in _diff_norm.
        split = _outer_permutations(wide) if Mw.ndim == 2 else None
        core, rows, cols = split if split is not None else (wide, None, None)
        K = core.to_dense()
        if K.ndim == 2 and Mw.ndim == 2 and K.shape == Mw.shape and not (K.requires_grad or Mw.requires_grad):
            val = (_diff_norm(K, Mw, rows, cols) / _fro(Mw)).item()
            return ErrorReport(val, "dense float64")
        if split is not None:
            K = wide.to_dense()
        diff = K.to(torch.promote_types(K.dtype, Mw.dtype)) - Mw
        num = torch.linalg.matrix_norm(diff)
        den = torch.linalg.matrix_norm(Mw)
        val = (num / den).max().item() if den.numel() > 1 else (num / den).item()
        return ErrorReport(val, "dense float64")
    if method != "probe":
        raise ValueError(f"method must be 'auto', 'dense' or 'probe', got {method!r}")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(probes, n, generator=g, dtype=torch.float64).to(wide.device)
    Y = wide(X)  # rows K x_j
    Z = X.to(Mw.dtype) @ Mw.transpose(-1, -2)  # rows M x_j
    val = (torch.linalg.matrix_norm(Y.to(torch.promote_types(Y.dtype, Z.dtype)) - Z) / torch.linalg.matrix_norm(Z)).max().item()
    return ErrorReport(val, f"probe float64 ({probes} Gaussian vectors)")
