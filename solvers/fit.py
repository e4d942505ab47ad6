"""Automatic structure search: the smallest K-matrix structure that reproduces a matrix.

Cheapest first:

1. a (scaled) permutation -- routed exactly into ``B · B*`` (:mod:`solvers.permutation`);
2. ``P · B · P`` by closed-form identification (:mod:`solvers.identify`);
   for a real target also ``Re(P · B · P)`` with a complex butterfly (:mod:`solvers.realpart`:
   the DCT-II/III/IV, DST-II/III/IV and Hartley matrices, read off the matrix in closed form
   over 128 candidate permutations);
3. ``P · B · B* · P^T`` by spectral identification (:mod:`solvers.spectral`): the
   eigenvectors of ``M`` identified as a butterfly (circulants, dyadic convolutions, any
   matrix diagonalised by a butterfly basis with distinct eigenvalues); skipped above
   ``spectral_max_n``;
4. a Toeplitz matrix (constant diagonals) that is not a circulant is lifted to the
   circulant of twice the size, which is identified spectrally (or, failing that or with
   ``closed_form=False``, fitted as a complex ``B · B*`` from random starts: by recursive
   splitting (:mod:`solvers.splitting`), then if need be by gradient), and the corner
   (expansion 2) is returned; a circulant that step 3 could not identify (repeated
   eigenvalues, e.g. a symmetric kernel) is fitted as a complex ``B · B*`` the same way.
   Splitting converged on every circulant, symmetric circulant and Toeplitz lift measured
   (n = 2 ... 2048, 0.4 s at n = 512 on 2 CPU cores);
5. for a real target, ``Re(P · B · P)`` fitted from a random start by relaxed alternating
   projections (:mod:`solvers.projection`), the permutations screened over
   identify_real's 128 candidates -- the DCT-II/III/IV, DST-II/IV, Hartley and
   Hadamard matrices converged at every size measured (8 ... 256; the DCT-II, DST-II,
   DCT-IV and Hartley also at 512 and 1024), with no closed form. Its
   twiddles are complex: with ``closed_form=False`` a real butterfly target (the Hadamard
   matrix) is answered as ``Re(P·Bℂ·P)``, twice the parameters of the real ``B`` that
   ``identify`` finds (or the gradient ladder, with ``projection=False``);
6. ``B · B*`` (complex) by recursive splitting from random starts (:mod:`solvers.splitting`),
   for any target not handled by step 4 (products of two butterflies, dyadic
   convolutions); it fails fast on a matrix outside the class (0.3 s at n = 256);
7. gradient fits (:mod:`solvers.gradient`) of growing structures, each with a share of
   the time budget, until one reaches ``tol`` -- then up to ``rounds - 1`` more passes
   over the closest rungs, from fresh random starts, while the budget lasts:
   ``B``; ``Re(B · P_bitrev)`` complex (Fourier-like real transforms);
   ``Re(P_bitrev · B* · P_top)`` complex, with the 8 top-level input reorderings
   ``P_top`` of the permutation family as fixed candidates, screened by successive
   halving (the DCT-II and DST-II: Makhoul's reordering, an FFT in
   decimation-in-frequency form, a real part); ``Re(P_out · B · B* · P_in)`` complex with
   64 candidate pairs (:func:`solvers._permfamily.candidates`, ``"packed"``: the
   DCT-IV, an FFT of half the size on packed input pairs);
   ``Re(P~ · B* · P~)`` complex with both permutations learned in a structured family
   (:mod:`solvers._permfamily`; relaxed, then rounded -- found the DCT-II at n = 8, not
   yet reliable beyond); ``B · B*``; ``B · B*`` complex (fitted without a real part, which
   is far easier to optimise -- the circulant converges from random starts -- and returned
   with its real part); ``Re(B · B*)`` complex; ``Re((B · B*)^2)`` complex; ``corner[B · B*]`` with expansion 2.

Splitting fits ``B · B*`` without permutations (a circulant needs none); the
permutations are recovered by identification (steps 2 and 3), screened among a
structured family's candidates by the projections (step 5), fixed to the bit reversal in the
rungs that name it, screened over candidates built from the top-level moves of the family
(every candidate fitted, the worse half dropped repeatedly), or learned in the ``P~`` rung. A target that needs another hidden
permutation is reported with the best error found.

When nothing reaches ``tol``, the result reports the best fit beside the errors of a
sparse and a low-rank approximation with the same number of parameters
(``info["baselines"]``), so a user sees whether structure exists at all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from ._result import Result, square_target


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
    rounds : int
        Passes over the gradient rungs: the first tries them all, each later one retries
        the ``retry_rungs`` closest rungs from new random starts (another seed, twice the
        starts), until a fit converges or the time budget is spent.
    retry_rungs : int
    closed_form : bool
        Try the closed-form steps (permutation, identification of ``P·B·P`` and
        ``Re(P·B·P)``, spectral identification, also of a Toeplitz matrix's circulant lift)
        first. ``False``: only fits from random starts (the lift's circulant fitted as
        ``B · B*``, the projections, the gradient ladder) -- to study the fitting, or when
        the closed forms are known not to apply.
    projection : bool
        For a real target, fit ``Re(P·B·P)`` by relaxed alternating projections from a random
        start (:mod:`solvers.projection`, up to half the remaining budget) before the
        gradient ladder. ``False``: skip it (to study the gradient ladder alone).
    splitting : bool
        Fit ``B · B*`` by recursive splitting from random starts (:mod:`solvers.splitting`;
        a circulant, a Toeplitz matrix's circulant lift, any product of two butterflies) --
        for a Toeplitz target on its lift, before the lift's gradient fit, otherwise after
        the projections and before the gradient ladder. ``False``: skip it.
    spectral_max_n : int
        Largest matrix given to spectral identification (a dense eigendecomposition,
        O(n^3): ~1 s at n = 1024, ~6 s at 2048 on 2 CPU cores).
    """

    tol: float | None = None
    time_budget: float = 600.0
    restarts: int = 8
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    max_rung: int | None = None
    spectral_max_n: int = 2048
    rounds: int = 3
    retry_rungs: int = 2
    closed_form: bool = True
    projection: bool = True
    splitting: bool = True


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
        # Many short starts: at n = 256 (Hartley) 8 starts x 1000 Adam steps all stall at
        # 0.1-0.2, while 32 x 300 put one start at 3e-3, which LM took to 8.8e-13 (207 s).
        dict(chain=("B",), complex=True, real_output=True, col_perm=rev, restarts_factor=4, adam_steps=300),
        # The decimation-in-frequency form, each top-level input reordering of the
        # permutation family fitted with the permutation fixed and screened (the relaxed
        # P~ rung below rarely rounds to the right one): DCT-II and DST-II n = 64.
        dict(chain=("B*",), complex=True, real_output=True, perm_candidates="dif", restarts_factor=4, adam_steps=300),
        # An FFT of half the size on packed input pairs (DCT-IV): 64 permutation pairs,
        # 2 starts each, screened by successive halving. With the right pair 29 of 32
        # starts reach ~1e-2 (n = 64 and 128), so 2 starts suffice.
        dict(chain=("B", "B*"), complex=True, real_output=True, perm_candidates="packed", restarts_factor=1 / 4,
             adam_steps=300),
        dict(chain=("B*",), complex=True, real_output=True, learn_perm="both", restarts_factor=4),
        dict(chain=("B", "B*")),
        dict(chain=("B", "B*"), complex=True),
        dict(chain=("B", "B*"), complex=True, real_output=True),
        dict(chain=("B", "B*", "B", "B*"), complex=True, real_output=True),
        dict(chain=("B", "B*"), complex=True, real_output=True, expansion=2),
    ]


#: Largest batch of dense n x n products (entries) a screened rung fits at once: 2^26
#: complex128 entries are 1 GiB per intermediate; the starts per candidate shrink to fit.
MAX_BATCH_ENTRIES = 2**26


def _converging(r) -> bool:
    """Whether a gradient fit ran out of time in its second-order finish (still
    converging there, so worth resuming) rather than stalling or running out in Adam."""
    return r.status == "budget" and bool(r.trace) and r.trace[-1][3] != "adam"


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


def is_toeplitz(M: torch.Tensor, tol: float) -> bool:
    """Whether every diagonal of ``M`` is constant to ``tol`` (relative to ||M||_F)."""
    n = M.shape[0]
    A = M.to(torch.complex128 if M.is_complex() else torch.float64)
    c, r = A[:, 0], A[0, :]
    i = torch.arange(n)
    d = i[:, None] - i[None, :]
    T = torch.where(d >= 0, c[d.clamp_min(0)], r[(-d).clamp_min(0)])
    return bool(torch.linalg.matrix_norm(T - A) <= tol * torch.linalg.matrix_norm(A))


def _better_of(best, r):
    """Of two results (either may be None), the one with a factorization and the lower error;
    ``best`` on a tie."""
    if r is None or r.kmatrix is None:
        return best
    if best is None or best.kmatrix is None or r.error < best.error:
        return r
    return best


def _step(r, what) -> dict:
    """One entry of ``info["search"]``: the step tried and how it ended."""
    return {"step": what, "solver": r.solver, "status": r.status, "error": r.error, "seconds": r.seconds}


def _toeplitz_lift(M, cfg, tol, search, t0):
    """A Toeplitz ``M`` is the corner of the circulant of size 2n with kernel
    ``[c_0..c_{n-1}, 0, r_{n-1}..r_1]`` (read from M's first column and row): identify
    that circulant spectrally (:mod:`solvers.spectral`) or, failing that, fit it as a
    complex ``B · B*`` from random starts, and return its corner (expansion 2). A
    circulant ``M`` reaches here only when spectral identification failed on it (repeated
    eigenvalues): it is fitted directly. Only the embedding comes from the data."""
    from .gradient import GradientConfig, fit_gradient

    n = M.shape[0]
    if n < 2 or not is_toeplitz(M, tol):
        return None
    A = M.to(torch.complex128 if M.is_complex() else torch.float64)
    # A circulant (r_k = c_{n-k}) needs no lifting: B · B* fits it directly.
    circulant = bool(torch.linalg.vector_norm(A[0, 1:] - A[1:, 0].flip(0)) <= tol * torch.linalg.matrix_norm(A))
    if circulant:
        C, expansion, what = A, 1, "circulant fitted as B · B* (complex)"
    else:
        kernel = torch.cat([A[:, 0], torch.zeros(1, dtype=A.dtype), A[0, 1:].flip(0)])
        idx = torch.arange(2 * n)
        C = kernel[(idx[:, None] - idx[None, :]) % (2 * n)]
        expansion, what = 2, "Toeplitz lifted to its 2n circulant, fitted as B · B* (complex), corner taken"
    if not circulant and cfg.closed_form and C.shape[0] <= cfg.spectral_max_n:
        from .spectral import spectral

        r = spectral(C, tol=tol, seed=cfg.seed)
        search.append(_step(r, "Toeplitz -> circulant 2n, spectral"))
        if r.kmatrix is not None:
            return _corner(r, M, A, tol, "Toeplitz lifted to its 2n circulant, identified spectrally, corner taken")
    if cfg.splitting:
        from .splitting import fit_splitting

        remaining = cfg.time_budget - (time.perf_counter() - t0)
        r = fit_splitting(C, tol=tol, seed=cfg.seed, progress=cfg.progress, time_budget=max(1.0, remaining / 3))
        r = _corner(r, M, A, tol, what.replace("fitted as B · B* (complex)", "split into B · B* (complex)"), expansion)
        search.append(_step(r, ("circulant" if circulant else "Toeplitz -> circulant 2n") + ", B · B* by splitting"))
        if r.status == "converged":
            return r
        best_split = r
    else:
        best_split = None
    budget = max(1.0, (cfg.time_budget - (time.perf_counter() - t0)) / 3)
    gcfg = GradientConfig(
        chain=("B", "B*"), complex=True, tol=tol, restarts=4 * cfg.restarts, seed=cfg.seed,
        device=cfg.device, progress=cfg.progress, time_budget=budget,
    )
    r = fit_gradient(C, gcfg)
    r = _corner(r, M, A, tol, what, expansion)
    search.append(_step(r, "circulant, B · B*" if circulant else "Toeplitz -> circulant 2n, B · B*"))
    return _better_of(best_split, r)


def _corner(r, M, A, tol, what, expansion=2):
    """``r`` (a fit of the circulant lift) as a fit of ``M``: the corner of its product
    (expansion 2; 1 for a circulant fitted directly), real part for a real ``M``, the error
    re-measured against ``M``."""
    from kfit import KMatrix
    from kfit._error import relative_error

    K = KMatrix(r.kmatrix.factors, expansion=expansion, real_output=not M.is_complex())
    err = relative_error(K, A)
    r.kmatrix, r.error, r.error_method = K, err.value, err.method
    if r.status in ("exact", "approximate"):  # a closed-form solver's vocabulary
        r.status = "exact" if err.value <= tol else "approximate"
    else:
        r.status = "converged" if err.value <= tol else ("stalled" if r.status == "converged" else r.status)
    r.message = f"{what}: error {err.value:.2e}"
    r.info["structure"] = "B · B*" if expansion == 1 else "corner[B · B*] (e=2), lifted from the Toeplitz embedding"
    return r


def fit(M, config: FitConfig | None = None, **overrides) -> Result:
    """Find the smallest structure reproducing ``M`` to ``tol`` (see module doc).

    Returns the :class:`solvers.Result` of the step that succeeded (its ``solver`` says
    which), with ``info["search"]`` listing every step tried (structure, status, error,
    seconds); or the best result found, with ``info["baselines"]``.
    """

    from ._permfamily import candidates
    from .gradient import GradientConfig, fit_gradient, refine
    from .identify import identify
    from .permutation import detect_permutation, route_permutation
    from .projection import fit_projection
    from .realpart import identify_real
    from .spectral import spectral
    from .splitting import fit_splitting

    t0 = time.perf_counter()
    cfg = replace(config or FitConfig(), **overrides)
    M, n, single, tol = square_target(M, cfg.tol)
    search = []

    def record(r, what):
        search.append(_step(r, what))

    def resume(r, what, budget):  # a fit still converging in its finish, continued by refine
        r = refine(M, r.kmatrix, tol=tol, device=cfg.device, progress=cfg.progress, time_budget=budget)
        return r, what.removesuffix(" [resumed]") + " [resumed]"

    def done(r):  # the answer: the whole search attached, the whole call timed
        r.info["search"] = search
        r.seconds = time.perf_counter() - t0
        return r

    if cfg.max_rung == 0 and not cfg.closed_form and not cfg.splitting and not (cfg.projection and not M.is_complex()):
        raise ValueError(
            "closed_form=False, splitting=False and max_rung=0 leave nothing to try: allow a gradient rung, the "
            "closed forms, splitting=True or (for a real target) projection=True"
        )
    best = None
    if cfg.closed_form:
        found = detect_permutation(M)
        if found is not None:
            r = route_permutation(perm=found[0], scales=found[1])
            record(r, "permutation")
            r.info["search"] = search
            return r
        r = identify(M, tol=tol)
        record(r, "identify P·B·P")
        if r.status == "exact":
            return done(r)
        best = r
        if not M.is_complex():
            r = identify_real(M, tol=tol)
            record(r, "identify Re(P·B·P)")
            if r.status == "exact":
                return done(r)
            best = _better_of(best, r)
        if n <= cfg.spectral_max_n:
            r = spectral(M, tol=tol, seed=cfg.seed)
            record(r, "spectral P·B·B*·Pᵀ")
            if r.status == "exact":
                return done(r)
            best = _better_of(best, r)
    # The Toeplitz lift is an embedding read off the matrix's constant diagonals, its
    # circulant fitted from random starts (or, with the closed forms, identified spectrally).
    lifted = _toeplitz_lift(M, cfg, tol, search, t0)
    if lifted is not None and lifted.status in ("converged", "exact"):
        return done(lifted)
    best = _better_of(best, lifted)
    # The fits from random starts that are not gradient fits, each with up to half the time
    # left (a Toeplitz target's lift was split above).
    for wanted, solve, what in (
        (cfg.projection and not M.is_complex(), fit_projection, "Re(P·B·P) by alternating projections"),
        (cfg.splitting and lifted is None, fit_splitting, "B · B* by recursive splitting"),
    ):
        remaining = cfg.time_budget - (time.perf_counter() - t0)
        if wanted and remaining > 1:
            r = solve(M, tol=tol, seed=cfg.seed, progress=cfg.progress, time_budget=remaining / 2)
            record(r, what)
            if r.status == "converged":
                return done(r)
            best = _better_of(best, r)
    rungs = ladder(n, M.is_complex())
    if cfg.max_rung is not None:
        rungs = rungs[: cfg.max_rung]
    # Round 0 tries every rung; each later round retries the `retry_rungs` rungs that came
    # closest, from fresh random starts (another seed, twice the starts): a rung that
    # stalls in a local minimum often converges from other starts, and without retries
    # most of the budget went unused (DCT-II n = 64: every rung stalled within 220 of 600 s).
    # A rung whose second-order finish was still converging when its share ran out is
    # resumed from where it stopped (`refine`) instead: the DCT-IV n = 128 needs ~250 s of
    # Levenberg-Marquardt after ~45 s of screening, more than a first-round share.
    queue, closest, latest = list(enumerate(rungs)), {}, {}
    for round_ in range(cfg.rounds):
        for k, (i, rung) in enumerate(queue):
            remaining = cfg.time_budget - (time.perf_counter() - t0)
            if remaining <= 1:
                break
            share = remaining / (len(queue) - k)
            seed = cfg.seed + 7919 * round_
            if i in latest and _converging(latest[i][0]):
                # Its finish was still converging when its time ran out: resume it.
                r, what = resume(*latest[i], share)
                seed = None
            else:
                rung = dict(rung)
                kind = rung.pop("perm_candidates", None)
                cands = candidates(kind, n) if kind else None
                restarts = max(1, int(cfg.restarts * rung.pop("restarts_factor", 1))) * 2 ** min(round_, 2)
                if cands:  # all candidates' starts are one batch of dense n x n products
                    restarts = max(1, min(restarts, MAX_BATCH_ENTRIES // (len(cands) * n * n)))
                gcfg = GradientConfig(
                    tol=tol, restarts=restarts, seed=seed, device=cfg.device,
                    progress=cfg.progress, time_budget=share, perm_candidates=cands, **rung,
                )
                r = fit_gradient(M, gcfg)
                what = gcfg.describe() + (f" [{r.info['candidate']}]" if cands else "")
            step = what
            if round_:  # a retry: which round, and its seed unless it was a resume
                step += f" (round {round_ + 1}" + ("" if seed is None else f", seed {seed}") + ")"
            record(r, step)
            if r.status != "converged" and _converging(r) and r.error <= tol**0.5:
                # Past sqrt(tol) and still converging: resume it at once with all the time
                # left (it returns early if it stalls) -- DCT-IV n = 128 reached 6e-8 in
                # its first share and then waited behind 5 futile rungs.
                r2, what = resume(r, what, cfg.time_budget - (time.perf_counter() - t0))
                record(r2, what)
                r = r2 if r2.error <= r.error else r
            if r.status == "converged":
                return done(r)
            closest[i] = min(closest.get(i, float("inf")), r.error)
            if i not in latest or r.error <= latest[i][0].error:
                latest[i] = (r, what)
            best = _better_of(best, r)
        if cfg.time_budget - (time.perf_counter() - t0) <= 1:
            break
        queue = [(i, rungs[i]) for i in sorted(closest, key=closest.get)[: cfg.retry_rungs]]
    if best is None:  # closed_form=False and no time for a single rung
        best = Result(
            kmatrix=None, error=float("inf"), error_method="none", status="budget", solver="fit", seconds=0.0,
            dtype=str(M.dtype).replace("torch.", ""), tol=tol,
            message=f"the time budget ({cfg.time_budget:g} s) ran out before a gradient rung could start",
        )
    if best.kmatrix is not None:
        best.info["baselines"] = baselines(M, best.kmatrix.n_params)
        b = best.info["baselines"]
        best.message += (
            f" | no structure reached tol {tol:g}; at the same {b['n_params']} parameters a sparse "
            f"approximation has error {b['sparse_error']:.2e}, a rank-{b['low_rank']} one {b['low_rank_error']:.2e}"
        )
    return done(best)
