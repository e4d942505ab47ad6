"""The result every solver returns (non-convergence is a status, never an exception)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """What a solver found, with the evidence for it.

    Attributes
    ----------
    kmatrix : kfit.KMatrix or None
        The factorization (for failures: the best partial one, or None).
    error : float
        Relative Frobenius error ``||K - M||_F / ||M||_F`` against the input matrix.
    error_method : str
        How ``error`` was measured (e.g. ``"dense float64"``).
    status : str
        Solver-specific; ``identify``: ``"exact"`` (error <= tol), ``"approximate"``
        (the structure was identified but the error is above tol, e.g. a noisy target),
        ``"not_in_class"`` (a rank-one test failed; see ``info["failed_level"]``).
    solver : str
    seconds : float
        Wall time of the solve (the error check included).
    dtype : str
        The input's dtype; solvers compute in float64/complex128.
    tol : float
        The tolerance ``status`` was decided with.
    message : str
        One human-readable sentence on the outcome.
    info : dict
        Solver-specific details (permutations found, residuals per level, settings).
    trace : list of (step, seconds, error)
        For iterative solvers; empty for closed-form ones.
    """

    kmatrix: Any
    error: float
    error_method: str
    status: str
    solver: str
    seconds: float
    dtype: str
    tol: float
    message: str
    info: dict = field(default_factory=dict)
    trace: list = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.status in ("exact", "converged")

    def summary(self) -> str:
        from kfit import costs

        lines = [
            f"solver     {self.solver}",
            f"status     {self.status}: {self.message}",
            f"error      {self.error:.3e} (relative Frobenius, {self.error_method}; input {self.dtype}; tol {self.tol:g})",
            f"time       {self.seconds:.3f} s",
        ]
        if self.kmatrix is not None:
            lines.insert(1, f"structure  {self.kmatrix.structure()}  (n = {self.kmatrix.n})")
            lines.append(f"costs      {costs.format_summary(self.kmatrix)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (the factorization itself is saved with ``kfit.save``)."""
        from kfit import costs

        out = {
            "solver": self.solver,
            "status": self.status,
            "message": self.message,
            "error": self.error,
            "error_method": self.error_method,
            "dtype": self.dtype,
            "tol": self.tol,
            "seconds": self.seconds,
            "info": _jsonable(self.info),
        }
        if self.kmatrix is not None:
            out["structure"] = self.kmatrix.structure()
            out.update({k: v for k, v in costs.summary(self.kmatrix).items()})
        return out


def _jsonable(obj):
    import numpy as np
    import torch

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def square_target(M, tol):
    """A solver's input, checked once: ``(M, n, single, tol)``.

    ``M`` as a square torch matrix of power-of-two size (``kfit._matrix_input.as_matrix``
    accepts arrays, tensors and .npy paths and names the argument in its errors);
    ``single`` whether it is float32/complex64; ``tol`` the given tolerance or the default
    for the precision (1e-12 for float64/complex128, 1e-5 for single precision).
    """
    import torch

    from kfit._matrix_input import as_matrix
    from kfit._validate import check_power_of_two

    M = as_matrix(M, "M")
    n = check_power_of_two(M.shape[0], "M.shape[0]")
    single = M.dtype in (torch.float32, torch.complex64)
    return M, n, single, (tol if tol is not None else (1e-5 if single else 1e-12))
