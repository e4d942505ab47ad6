"""Automatic structure search: the smallest K-matrix structure that reproduces a matrix.

Cheapest first:

1. a (scaled) permutation -- routed exactly into ``B · B*`` (:mod:`solvers.permutation`);
2. ``P · B · P`` by closed-form identification (:mod:`solvers.identify`);
3. gradient fits (:mod:`solvers.gradient`) of growing structures, each with a share of
   the time budget, until one reaches ``tol``:
   ``B``; ``Re(B · P_bitrev)`` complex (Fourier-like real transforms);
   ``Re(P~ · B* · P~)`` complex with both permutations learned in a structured family
   (:mod:`solvers._permfamily`; relaxed, then rounded -- found the DCT-II at n = 8, not
   yet reliable beyond); ``B · B*``;
   ``Re(B · B*)`` complex; ``Re((B · B*)^2)`` complex; ``corner[B · B*]`` with expansion 2.

Permutations are recovered by identification (step 2), fixed to the bit reversal in the
rung that names it, or learned in the ``P~`` rung. A target that needs another hidden
permutation is reported with the best error found.

When nothing reaches ``tol``, the result reports the best fit beside the errors of a
sparse and a low-rank approximation with the same number of parameters
(``info["baselines"]``), so a user sees whether structure exists at all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from ._result import Result


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit`.

    Attributes
    ----------
    tol : float or None
        Target relative error; default 1e-12 (float64 input), 1e-5 (float32).
    time_budget : float
        Seconds for the whole search (shared by the gradient rungs).
    restarts : int
        Random starts per gradient rung.
    seed : int
    device : str
    progress : bool
    max_rung : int or None
        Stop the ladder after this many gradient rungs (None: all).
    """

    tol: float | None = None
    time_budget: float = 600.0
    restarts: int = 8
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    max_rung: int | None = None


def ladder(n: int, target_is_complex: bool) -> list[dict]:
    """The gradient rungs for a size-n target, cheapest first (GradientConfig overrides)."""
    from kfit import Permutation

    rev = Permutation.bit_reversal(n).perm if n >= 2 else None
    if target_is_complex:
        return [
            dict(chain=("B",), complex=True),
            dict(chain=("B",), complex=True, col_perm=rev),
            dict(chain=("B", "B*"), complex=True),
            dict(chain=("B", "B*", "B", "B*"), complex=True),
            dict(chain=("B", "B*"), complex=True, expansion=2),
        ]
    return [
        dict(chain=("B",)),
        dict(chain=("B",), complex=True, real_output=True, col_perm=rev),
        dict(chain=("B*",), complex=True, real_output=True, learn_perm="both", restarts_factor=4),
        dict(chain=("B", "B*")),
        dict(chain=("B", "B*"), complex=True, real_output=True),
        dict(chain=("B", "B*", "B", "B*"), complex=True, real_output=True),
        dict(chain=("B", "B*"), complex=True, real_output=True, expansion=2),
    ]


def baselines(M: torch.Tensor, n_params: int) -> dict:
    """Relative errors of the best sparse and low-rank approximations with ``n_params``
    real parameters (a complex entry or factor value counts 2), for comparison."""
    A = M.to(torch.complex128 if M.is_complex() else torch.float64)
    n = A.shape[0]
    per = 2 if A.is_complex() else 1
    norm = torch.linalg.matrix_norm(A).item()
    k = min(n * n, n_params // per)
    mags = A.abs().flatten().square().sort(descending=True).values
    sparse = (mags[k:].sum().clamp_min(0).sqrt().item() / norm) if norm > 0 else 0.0
    r = min(n, n_params // (2 * n * per))
    s = torch.linalg.svdvals(A).square()
    lowrank = (s[r:].sum().clamp_min(0).sqrt().item() / norm) if norm > 0 else 0.0
    return {"n_params": n_params, "sparse_entries": k, "sparse_error": sparse, "low_rank": r, "low_rank_error": lowrank}


def fit(M, config: FitConfig | None = None, **overrides) -> Result:
    """Find the smallest structure reproducing ``M`` to ``tol`` (see module doc).

    Returns the :class:`solvers.Result` of the step that succeeded (its ``solver`` says
    which), with ``info["search"]`` listing every step tried (structure, status, error,
    seconds); or the best result found, with ``info["baselines"]``.
    """
    from kfit._matrix_input import as_matrix
    from kfit._validate import check_power_of_two

    from .gradient import GradientConfig, fit_gradient
    from .identify import identify
    from .permutation import detect_permutation, route_permutation

    t0 = time.perf_counter()
    cfg = replace(config or FitConfig(), **overrides)
    M = as_matrix(M, "M")
    n = check_power_of_two(M.shape[0], "M.shape[0]")
    single = M.dtype in (torch.float32, torch.complex64)
    tol = cfg.tol if cfg.tol is not None else (1e-5 if single else 1e-12)
    search = []

    def record(r, what):
        search.append({"step": what, "solver": r.solver, "status": r.status, "error": r.error, "seconds": r.seconds})

    found = detect_permutation(M)
    if found is not None:
        r = route_permutation(perm=found[0], scales=found[1])
        record(r, "permutation")
        r.info["search"] = search
        return r
    r = identify(M, tol=tol)
    record(r, "identify P·B·P")
    if r.status == "exact":
        r.info["search"] = search
        r.seconds = time.perf_counter() - t0
        return r
    best = r
    rungs = ladder(n, M.is_complex())
    if cfg.max_rung is not None:
        rungs = rungs[: cfg.max_rung]
    for i, rung in enumerate(rungs):
        remaining = cfg.time_budget - (time.perf_counter() - t0)
        if remaining <= 1:
            break
        share = remaining / (len(rungs) - i)
        rung = dict(rung)
        restarts = cfg.restarts * rung.pop("restarts_factor", 1)
        gcfg = GradientConfig(
            tol=tol, restarts=restarts, seed=cfg.seed, device=cfg.device,
            progress=cfg.progress, time_budget=share, **rung,
        )
        r = fit_gradient(M, gcfg)
        record(r, gcfg.describe())
        if r.status == "converged":
            r.info["search"] = search
            r.seconds = time.perf_counter() - t0
            return r
        if best.kmatrix is None or r.error < best.error:
            best = r
    best.info["search"] = search
    if best.kmatrix is not None:
        best.info["baselines"] = baselines(M, best.kmatrix.n_params)
        b = best.info["baselines"]
        best.message += (
            f" | no structure reached tol {tol:g}; at the same {b['n_params']} parameters a sparse "
            f"approximation has error {b['sparse_error']:.2e}, a rank-{b['low_rank']} one {b['low_rank_error']:.2e}"
        )
    best.seconds = time.perf_counter() - t0
    return best
