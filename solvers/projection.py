r"""Alternating projections: fit ``M = Re(P_out · B · P_in)`` (``B`` a complex butterfly)
from a random start.

The problem
-----------
After a candidate's permutations are moved onto ``M`` (and a transpose for decreasing
strides), the unknown is a complex increasing-stride butterfly ``C`` with ``Re(C) = A``.
In the space of complex ``n x n`` matrices that is a point in the intersection of two sets:

* ``𝒜 = {X : Re X = A}``, affine; its projection keeps ``Im X`` and sets ``Re X = A``;
* ``ℬ``, the butterflies; the projection ``P_ℬ`` used here is hierarchical: for each row
  pair ``(i, i + m/2)`` of a block of size ``m`` and each half of its columns, the
  ``2 x m/2`` sub-block is replaced by its best rank-one approximation ``u v^H`` (``u``
  the unit top eigenvector of the 2x2 Gram matrix), and the rows ``v`` are the blocks of the
  next depth. It is greedy, so not the exact nearest butterfly, but it maps every
  butterfly to itself and costs ``O(n^2 log n)``.

Plain alternating projections (``X <- P_𝒜 P_ℬ X``, as in Gerchberg–Saxton phase retrieval)
stagnate: DCT-II, n = 128, error 0.19 after 400 iterations. The relaxed averaged
alternating reflections (RAAR, Luke 2005) do not, measured:

    X <- beta/2 (R_𝒜 R_ℬ + I) X + (1 - beta) P_ℬ X,        R = 2 P - I,

which here reads ``Im X <- Im P_ℬ(X)`` and
``Re X <- beta (A + Re X - Re P_ℬ(X)) + (1 - beta) Re P_ℬ(X)``. The error of an iterate is
that of the butterfly ``P_ℬ(X)``: ``||Re P_ℬ(X) - A||_F / ||A||_F``; the best iterate is
kept. ``beta = 0.95`` (0.5 and 0.8 stagnate at 0.16 and 0.05 on the DCT-II at n = 64;
0.99 and 1 converge much more slowly at n = 128).

Start: ``Re X = A`` and ``Im X`` Gaussian of the same scale (seeded) -- a random start,
nothing read off the matrix.

Permutations
------------
Given (``row_perm``/``col_perm``/``chain``), or screened over the same structured family as
:func:`solvers.identify_real` (the identity or bit reversal on the output; the 8 top-level
reorderings of the family, with or without a bit reversal, on the input; both stride
orders; ``M`` or ``M^T``: 128 candidates). All candidates run at once as one batch and
every ``screen_every`` (4) iterations the worse half is dropped (successive halving), and
with it every candidate more than 10x worse than the leader: a wrong candidate stays near
error 1 while a right one falls fast (below 1e-2 in ten iterations), so the screen is cheap
and clear. Measured at n = 256: the screen takes 4 s of the 4-15 s of a fit (10 iterations
between cuts: 27 s of 37 s at n = 512, most of it the first round of 128 candidates). The
survivor runs until ``tol``, a stall or the budget.

Status: ``"converged"`` (error <= tol), ``"stalled"`` (no 1 % gain in ``patience``
iterations) or ``"budget"`` (time or iterations spent); non-convergence never raises.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from ._result import Result


@dataclass(frozen=True)
class ProjectionConfig:
    """Settings of :func:`fit_projection`.

    Attributes
    ----------
    tol : float or None
        Status ``converged`` when the relative error is <= tol. Default 1e-12 (float64
        input), 1e-5 (float32).
    beta : float
        RAAR relaxation, in (0, 1].
    starts : int
        Random starts per candidate.
    max_iters : int
        Iterations in all (screening included).
    time_budget : float
        Seconds.
    patience : int
        Iterations of the final run without a 1 % gain in the best error before it stops.
    finish_below : float
        RAAR hands over to the second-order finish once the error is below this (its
        convergence is linear, and slow on some targets: the DST-II at n = 128 takes
        20000 iterations from 3e-7 to 3e-8; LM goes from there to 2e-13 in 6 steps, 3 s).
    finish : "lm" or "none"
        The finish: Levenberg–Marquardt (:func:`solvers.refine`) with the remaining budget,
        run when RAAR reaches ``finish_below`` or stops above it with an error below 1e-2.
    screen_every : int
        Iterations between two cuts of the candidates. Measured with 4: the DCT-II/III/IV,
        DST-II/IV, Hartley and Hadamard matrices at n = 8 ... 256, two seeds each, 84 of 84
        fits converged (<= 22 s each; the Hadamard matrix 69 s at n = 256).
    max_group_bytes : int
        Memory for one batch of starts (complex128 ``n x n`` each); more candidates than
        fit are screened in groups whose winners then meet.
    row_perm, col_perm : None, "identity", or an index vector
        Known permutations (``(P x)[i] = x[p[i]]``); ``None``: screened (module doc).
    chain : None, "B" or "B*"
        The butterfly's stride order; ``None``: both are screened.
    seed : int
    progress : bool
        A progress bar with the current best error.
    """

    tol: float | None = None
    beta: float = 0.95
    starts: int = 1
    max_iters: int = 20000
    time_budget: float = 600.0
    patience: int = 500
    finish_below: float = 1e-6
    finish: str = "lm"
    screen_every: int = 4
    max_group_bytes: int = 512 << 20
    row_perm: object = None
    col_perm: object = None
    chain: str | None = None
    seed: int = 0
    progress: bool = False


def project_butterfly(X: torch.Tensor) -> torch.Tensor:
    """The hierarchical rank-one projection of ``X`` (``(S, n, n)`` complex) onto
    increasing-stride butterflies (module doc); exact (to rounding) on butterflies."""
    from .identify import _sumsq, _top_eigvec

    us = []
    blocks = X
    while blocks.shape[-1] > 1:
        nb, m, _ = blocks.shape
        h = m // 2
        rows = blocks.view(nb, 2, h, 2, h)  # (block, row half j, pair k, column half, c)
        a, b = rows[:, 0], rows[:, 1]  # (nb, k, half, c): the two rows of every 2 x h sub-block
        u, _ = _top_eigvec(_sumsq(a, -1), torch.linalg.vecdot(b, a), _sumsq(b, -1))  # (nb, k, half, 2)
        uc = u.conj()
        child = X.new_empty((nb, 2, h, h))  # the next depth's blocks (2 nb, h, h), [block, half, k, c]
        v = child.permute(0, 2, 1, 3)  # written through this view: no reordering copy
        torch.mul(uc[..., 0, None], a, out=v)
        v.addcmul_(uc[..., 1, None], b)
        us.append(u)
        blocks = child.view(2 * nb, h, h)
    R = blocks
    for u in reversed(us):  # rebuild bottom-up: sub-block (k, half) = u ⊗ row k of child `half`
        nb, h = u.shape[0], u.shape[1]
        child = R.view(nb, 2, h, h).permute(0, 2, 1, 3)  # (nb, k, half, c)
        out = X.new_empty((nb, 2, h, 2, h))
        torch.mul(u.permute(0, 3, 1, 2)[..., None], child[:, None], out=out)
        R = out.view(nb, 2 * h, 2 * h)
    return R


class _Runs:
    """The RAAR state of a batch of starts: targets, iterates, best errors and butterflies."""

    FIELDS = ("A", "owner", "norm", "re", "im", "best_err", "best")  # one entry per start each

    def __init__(self, A, owner, cfg, g):
        self.A, self.owner, self.beta = A, owner, cfg.beta
        self.norm = torch.linalg.matrix_norm(A).clamp_min(1e-300)
        self.re = A.clone()
        self.im = torch.randn(A.shape, generator=g, dtype=A.dtype) * (self.norm / A.shape[-1])[:, None, None]
        self.best_err = torch.full((A.shape[0],), math.inf, dtype=A.dtype)
        self.best = torch.zeros(A.shape, dtype=torch.complex128)

    def step(self):
        pb = project_butterfly(torch.complex(self.re, self.im))
        err = torch.linalg.matrix_norm(pb.real - self.A) / self.norm
        better = err < self.best_err
        if bool(better.any()):
            idx = better.nonzero()[:, 0]
            self.best[idx] = pb[idx]
            self.best_err[idx] = err[idx]
        self.re = self.beta * (self.A + self.re - pb.real) + (1 - self.beta) * pb.real
        self.im = pb.imag

    def keep(self, mask):
        for name in _Runs.FIELDS:
            setattr(self, name, getattr(self, name)[mask])

    @staticmethod
    def merge(runs):
        out = runs[0]
        for name in _Runs.FIELDS:
            setattr(out, name, torch.cat([getattr(r, name) for r in runs]))
        return out

    def per_candidate(self, C):
        """The best error of each candidate's starts (inf for those no longer running)."""
        per = torch.full((C,), math.inf, dtype=self.best_err.dtype)
        return per.scatter_reduce(0, self.owner, self.best_err, "amin")


def fit_projection(M, config: ProjectionConfig | None = None, **overrides) -> Result:
    """Fit ``M = Re(P_out · B · P_in)`` (``B`` a complex butterfly) by relaxed alternating
    projections from random starts, screening the permutation candidates (module doc).

    Parameters
    ----------
    M : array-like, torch.Tensor or path to a .npy file
        Real, square, power-of-two size, float32 or float64.
    config : ProjectionConfig, optional
        Settings; keyword arguments override its fields (``fit_projection(M, seed=1)``).

    Returns
    -------
    Result
        ``kmatrix`` is ``KMatrix([P_out, B, P_in], real_output=True)`` (identity permutations
        omitted) built from the best iterate's butterfly; ``error`` its relative Frobenius
        error against ``M`` (dense, float64); ``status`` converged / stalled / budget;
        ``trace`` ``(iteration, seconds, best error, phase)``; ``info`` the candidate, the
        iterations, and each screened-out candidate's best error.
    """
    from kfit._error import relative_error

    from .gradient import _progress
    from .realpart import assemble, candidate_target, real_problem

    t0 = time.perf_counter()
    cfg = replace(config or ProjectionConfig(), **overrides)
    if not 0 < cfg.beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {cfg.beta!r}")
    for name in ("starts", "max_iters", "patience", "screen_every"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)!r}")
    if cfg.finish not in ("lm", "none"):
        raise ValueError(f"finish must be 'lm' or 'none', got {cfg.finish!r}")
    M, A0, single, tol, cands = real_problem(M, cfg, "fit_projection fits",
                                             "solvers.identify / solvers.fit_gradient")
    n = A0.shape[0]
    C = len(cands)
    g = torch.Generator().manual_seed(cfg.seed)
    trace: list = []
    screened: dict = {}  # label -> best error when dropped
    cuts: list = []  # candidates left after each cut
    it = 0
    bar = _progress(cfg, total=cfg.max_iters, desc="fit Re(P·B·P) (projections)")

    def record(runs, phase):
        best = float(runs.best_err.min())
        trace.append((it, time.perf_counter() - t0, best, phase))
        bar.set_postfix_str(f"best err {best:.2e}, {len(torch.unique(runs.owner))} candidate(s)")
        bar.update(1)

    def out_of_time():
        return it >= cfg.max_iters or time.perf_counter() - t0 > cfg.time_budget

    def screen(runs):
        """Successive halving down to one candidate (or until tol, time or iterations)."""
        nonlocal it
        while True:
            for _ in range(cfg.screen_every):
                runs.step()
                it += 1
                record(runs, "screen")
                if float(runs.best_err.min()) <= tol or out_of_time():
                    return runs
            alive = torch.unique(runs.owner)
            if len(alive) <= 1:
                return runs
            per = runs.per_candidate(C)
            order = alive[per[alive].argsort()]
            # the better half, and of it only those within 10x of the leader: a right candidate
            # is below 1e-2 after 10 iterations while the wrong ones stay near 1
            kept = order[: (len(order) + 1) // 2]
            kept = kept[per[kept] <= 10 * per[order[0]]]
            for c in order[len(kept):].tolist():
                screened[cands[c][0]] = float(per[c])
            runs.keep(torch.isin(runs.owner, kept))
            cuts.append(len(kept))

    # Groups of candidates that fit max_group_bytes, each screened to its winner; the winners meet.
    per_group = max(1, cfg.max_group_bytes // (16 * n * n * cfg.starts))
    winners = []
    for lo in range(0, C, per_group):
        ids = list(range(lo, min(C, lo + per_group)))
        A = torch.stack([candidate_target(A0, cands[c]) for c in ids]).repeat_interleave(cfg.starts, 0)
        owner = torch.tensor(ids).repeat_interleave(cfg.starts)
        winners.append(screen(_Runs(A, owner, cfg, g)) if C > 1 else _Runs(A, owner, cfg, g))
        if out_of_time() or min(float(w.best_err.min()) for w in winners) <= tol:
            break
    runs = screen(_Runs.merge(winners)) if len(winners) > 1 else winners[0]

    # The final run: the best start of the surviving candidate, until tol, a stall or the budget.
    s = int(runs.best_err.argmin())
    runs.keep(torch.tensor([s]))
    mark, since = float(runs.best_err[0]), 0
    status = "budget"
    while True:
        best = float(runs.best_err[0])
        if best <= tol:
            status = "converged"
            break
        if best <= cfg.finish_below and cfg.finish == "lm":
            status = "handover"
            break
        if best < 0.99 * mark:
            mark, since = best, 0
        elif since >= cfg.patience:
            status = "stalled"
            break
        if out_of_time():
            break
        runs.step()
        it += 1
        since += 1
        record(runs, "raar")
    bar.close()
    cand = cands[int(runs.owner[0])]
    K, _ = assemble(runs.best[0], cand, detect_tol=1.0)  # an exact butterfly: every test passes
    err = relative_error(K, A0)
    finish = None
    if err.value > tol and cfg.finish == "lm" and err.value < 1e-2 and not out_of_time():
        from .gradient import lm_finish

        K, err, lm_status, finish = lm_finish(A0, K, err, tol=tol, cfg=cfg, t0=t0, trace=trace, step0=it)
        status = lm_status or status
    if err.value <= tol:
        status = "converged"
    elif status in ("converged", "handover"):  # accuracy lost reading the twiddles, or LM did not gain
        status = "stalled"
    if single:
        K = K.to(torch.float32)
    words = {"converged": "reached", "stalled": "stalled at", "budget": "budget spent at"}[status]
    return Result(
        kmatrix=K, error=err.value, error_method=err.method, status=status, solver="projection",
        seconds=time.perf_counter() - t0, dtype=str(M.dtype).replace("torch.", ""), tol=tol,
        message=(f"RAAR from random starts ({it} iterations){' then LM' if finish else ''} {words} error "
                 f"{err.value:.2e} (tol {tol:g}); structure {cand[0]}, screened from {C} candidates"),
        info={
            "candidate": cand[0],
            "chain": "B" if K.butterflies[0].increasing else "B*",
            "candidates": C,
            "iterations": it,
            "finish": finish,
            "candidates_after_each_cut": cuts,
            "screened_out": dict(sorted(screened.items(), key=lambda kv: kv[1])[:16]),
            "settings": {k: v for k, v in cfg.__dict__.items() if k not in ("row_perm", "col_perm")},
            "row_perm_fixed": cfg.row_perm is not None,
            "col_perm_fixed": cfg.col_perm is not None,
        },
        trace=trace,
    )
