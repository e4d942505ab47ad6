r"""Recursive splitting: fit ``M = B · B*`` (complex butterflies) level by level, from
random starts.

The structure
-------------
``B`` (increasing strides) ends with its stride-``n/2`` level and ``B*`` (decreasing)
begins with one, so with ``h = n/2``

    M = T_1 · diag(M_a, M_b) · T_2,

where ``T_1`` and ``T_2`` couple index ``i`` with ``i + h`` only (a 2x2 block per pair:
those two outer levels) and ``M_a``, ``M_b`` (``h x h``) are again ``B · B*`` of half the
size. Recursing down to 2x2 blocks gives every level of both butterflies. Nothing about a
target family is assumed; circulants, Toeplitz lifts, dyadic convolutions and any product
of two butterflies lie in this class.

One split
---------
Find the pair-structured ``U = T_1^{-1}`` and ``V = T_2^{-1}`` that make ``U M V``
block-diagonal. With ``M_ij`` the 2x2 matrix of entries ``(i, j), (i, j+h), (i+h, j),
(i+h, j+h)``, a zero off-diagonal block means

    u_i^T M_ij v_j = 0          for all i, j < h,

a bilinear system in the rows ``u_i`` (of ``U``'s top half) and the columns ``v_j``
(of ``V``'s right half), each a 2-vector up to scale. It is solved by alternating from a
random (seeded) ``v``: each ``u_i`` is the null vector of the ``2 x h`` matrix
``[M_ij v_j]_j`` (least squares: smallest eigenvector of its 2x2 Gram matrix), then each
``v_j`` likewise, ``starts`` (4) random starts per block as one batch, each block keeping
its best. The alternation converges linearly and, on nearly degenerate blocks (a symmetric
circulant's), very slowly -- one 8x8 block needed 20000 sweeps for 1e-12 -- so once every
block is below ``newton_below`` (1e-2) Gauss–Newton takes over: 4-6 steps from there to
1e-16 on the blocks measured. For 4x4 blocks (``h = 2``) the system is solved in closed
form (a quadratic in one unknown); a generic 4x4 matrix is a ``B · B*``.

The other off-diagonal block is the same system with another solution; it is found
*linearly*: with ``u'_i, v'_j`` the orthogonal complements, ``U M V`` is block lower
triangular ``[[X, 0], [Y, Z]]``, and ``u'_i + α_i u_i``, ``v'_j + β_j v_j`` remove ``Y``
when ``Y + diag(α) X + Z diag(β) = 0`` -- ``h^2`` linear equations in ``2h`` unknowns,
solved by least squares (normal equations, Schur complement). ``X`` and ``Z`` are the
halves.

The residual of each level (``||off-diagonal||_F / ||block||_F``, both blocks) is in
``info["levels"]``; the error of the whole product is measured dense against ``M``. When it
is above ``tol`` but below 1e-2 a Levenberg–Marquardt finish (:func:`solvers.refine`)
polishes it. Cost: ``O(sweeps · n^2)`` per level plus an ``h x h`` solve -- the circulant at
n = 512 in under a second on 2 CPU cores.

Measured (2 CPU cores, seeds 0-7): random real, complex and symmetric circulants, Toeplitz
lifts, dyadic convolutions and products of two random (Haar-unitary-block) butterflies,
n = 2 ... 512: 402 of 402 converged, errors <= 9.8e-16, <= 1.3 s each; n = 1024: ~1.4 s,
the 2048 lift of a Toeplitz matrix of size 1024: ~7 s. Products of two butterflies with
Gaussian twiddles (condition numbers 1e6-1e10) at n = 64, 128, 256: 22 of 24 converged
(errors <= 5e-13); in the other two one 8x8 block stayed at ~1e-2 through the retries and
the LM finish did not recover it (2e-3 and 6e-3). A matrix outside the class stalls at its top level within ~50
sweeps (0.3 s at n = 256, 4-7 s at 1024); the levels below are then only completed, one
sweep each, so that the reported factorization and its error are real.

Status: ``"converged"`` (error <= tol), ``"stalled"`` (a level stopped improving above its
tolerance: ``M`` is not ``B · B*``, or not without permutations), ``"budget"``.
Non-convergence never raises.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from ._result import Result, square_target


@dataclass(frozen=True)
class SplittingConfig:
    """Settings of :func:`fit_splitting`.

    Attributes
    ----------
    tol : float or None
        Status ``converged`` when the relative error is <= tol. Default 1e-12 (float64
        input), 1e-5 (float32).
    starts : int
        Random starts of each block's alternation (a batch; each block keeps its best).
    max_sweeps : int
        Alternation sweeps per level at most.
    patience : int
        Sweeps without a 10 % gain in any unfinished block's residual before a level stops.
    newton_below : float
        The alternation hands a level over to Gauss–Newton once every block's residual is
        below this (or it stalls).
    newton_steps : int
        Gauss–Newton steps per level at most (0: the alternation alone).
    split_tol : float
        A block is done once its off-diagonal residual is below this.
    retries, retry_above : int, float
        Blocks whose residual is still above ``retry_above`` are solved again from new random
        starts, up to ``retries`` times.
    finish : "lm" or "none"
        Levenberg–Marquardt (:func:`solvers.refine`) when the error is above ``tol`` and
        below 1e-2.
    time_budget : float
        Seconds (the finish gets what is left).
    seed : int
    progress : bool
        A progress bar over the levels.
    """

    tol: float | None = None
    starts: int = 4
    max_sweeps: int = 3000
    patience: int = 50
    split_tol: float = 1e-15
    newton_steps: int = 30
    newton_below: float = 1e-2
    retries: int = 3
    retry_above: float = 1e-10
    finish: str = "lm"
    time_budget: float = 600.0
    seed: int = 0
    progress: bool = False


def _perp(a):
    """``w`` with ``w^T a = 0`` (bilinear, no conjugate), same norm."""
    return torch.stack((a[..., 1], -a[..., 0]), -1)


def _unit(a):
    nrm = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    fallback = torch.zeros_like(a)
    fallback[..., 0] = 1
    return torch.where(nrm > 1e-300, a / nrm.clamp_min(1e-300), fallback)


def _null_rows(N):
    """Unit ``u`` (``(..., 2)``) minimising ``||u^T N||`` for ``N`` of shape ``(..., 2, h)``."""
    from .identify import _sumsq, _top_eigvec

    a, b = N[..., 0, :], N[..., 1, :]
    top, _ = _top_eigvec(_sumsq(a, -1), torch.linalg.vecdot(b, a), _sumsq(b, -1))
    # the Gram matrix's smallest eigenvector is orthogonal to its top one: (-conj y, conj x);
    # u^T N = 0 needs its conjugate
    return torch.stack((-top[..., 1], top[..., 0]), -1)


def _form(a, M, b):
    """``a_i^T M_ij b_j`` for every block (``a``, ``b``: ``(blocks, h, 2)``) -> ``(blocks, h, h)``."""
    return torch.einsum("kia,kijab,kjb->kij", a, M, b)


def _residual(u, M, v):
    """Relative off-diagonal residual ``||u_i^T M_ij v_j|| / ||M||`` per block."""
    return torch.linalg.matrix_norm(_form(u, M, v)) / _block_norm(M)


def _block_norm(M):
    return torch.linalg.vector_norm(M.flatten(1), dim=-1).clamp_min(1e-300)


def _alternate(M, cfg, g, t0, start=None, below=None, sweeps_left=None):
    """Alternate on ``u_i^T M_ij v_j = 0`` for every block of ``M`` (``(b, h, h, 2, 2)``):
    from ``cfg.starts`` random ``v`` per block, or from ``start = (u, v, res)`` (one each,
    and their residuals), until every block is below ``below`` or it stalls. Returns each
    block's best ``u, v`` (``(b, h, 2)``), residuals ``(b,)`` and the sweeps run."""
    b, h = M.shape[0], M.shape[1]
    below = cfg.newton_below if below is None else below
    sweeps_left = cfg.max_sweeps if sweeps_left is None else sweeps_left
    if start is None:
        v = torch.complex(torch.randn(b, cfg.starts, h, 2, generator=g, dtype=torch.float64),
                          torch.randn(b, cfg.starts, h, 2, generator=g, dtype=torch.float64))
        best = torch.full((b,), math.inf, dtype=torch.float64)
        best_u, best_v = M.new_zeros(b, h, 2), M.new_zeros(b, h, 2)
    else:
        best_u, best_v, best = start
        v = best_v[:, None]
    idx = torch.arange(b)
    mark, since, sweeps = best.clone(), 0, 0
    while sweeps < sweeps_left and (sweeps == 0 or time.perf_counter() - t0 <= cfg.time_budget):
        u = _null_rows(torch.einsum("kijab,ksjb->ksiaj", M, v))
        rows = torch.einsum("ksia,kijab->ksjbi", u, M)  # u_i^T M_ij, for every j
        v = _null_rows(rows)
        sweeps += 1
        if sweeps % 5 and sweeps != 1 and sweeps != sweeps_left:
            continue
        off = torch.einsum("ksjbi,ksjb->ksij", rows, v)
        r, s = (torch.linalg.matrix_norm(off) / _block_norm(M)[:, None]).min(1)  # best start per block
        better = r < best
        best = torch.where(better, r, best)
        best_u = torch.where(better[:, None, None], u[idx, s], best_u)
        best_v = torch.where(better[:, None, None], v[idx, s], best_v)
        open_ = best > below
        if not bool(open_.any()):
            break
        if bool((best[open_] < 0.9 * mark[open_]).any()):
            mark, since = torch.minimum(mark, best), 0
        else:
            since += 5
            if since >= cfg.patience:
                break
    return best_u, best_v, best, sweeps


def _solve_level(M, cfg, g, t0):
    """One level's bilinear system: random-start alternation down to ``newton_below``, then
    Gauss–Newton; where Newton stalls above ``split_tol`` (ill-conditioned blocks, e.g. of
    a product of two random Gaussian butterflies) the alternation resumes from its point with
    a 100x lower hand-over, and Newton again, while that gains. Returns ``u, v, res, sweeps``."""
    u, v, res, sweeps = _alternate(M, cfg, g, t0)
    u, v, res = _newton(M, u, v, res, cfg)
    below = cfg.newton_below
    while bool((res > cfg.split_tol).any()) and sweeps < cfg.max_sweeps and time.perf_counter() - t0 <= cfg.time_budget:
        before = float(res.max())
        below = min(below, before) / 100
        u, v, res, more = _alternate(M, cfg, g, t0, start=(u, v, res), below=below,
                                     sweeps_left=cfg.max_sweeps - sweeps)
        sweeps += more
        u, v, res = _newton(M, u, v, res, cfg)
        if float(res.max()) > 0.5 * before:
            break
    return u, v, res, sweeps


def _solve_level_with_retries(M, cfg, g, t0):
    """:func:`_solve_level`, then the blocks left clearly unsolved (residual above
    ``retry_above``) solved again from new random starts, up to ``retries`` times -- a few
    blocks of very ill-conditioned targets (products of Gaussian butterflies, condition
    ~1e5) end in a local minimum of the alternation."""
    u, v, res, sweeps = _solve_level(M, cfg, g, t0)
    for _ in range(cfg.retries):
        bad = (res > cfg.retry_above).nonzero()[:, 0]
        if not len(bad) or time.perf_counter() - t0 > cfg.time_budget:
            break
        u2, v2, r2, more = _solve_level(M[bad], cfg, g, t0)
        sweeps += more
        better = r2 < res[bad]
        keep = bad[better]
        u[keep], v[keep], res[keep] = u2[better], v2[better], r2[better]
    return u, v, res, sweeps


def _solve_4(M):
    """The 4x4 split in closed form. ``M`` is ``(b, 2, 2, 2, 2)``. ``v_0^T Q_i v_1 = 0`` with
    ``Q_i = M_i0^T J M_i1`` (``J`` the 2x2 rotation) for ``i = 0, 1``, so ``Q_0^T v_0`` and
    ``Q_1^T v_0`` are parallel: ``v_0^T S v_0 = 0``, ``S = Q_0 J Q_1^T`` -- a quadratic in
    the ratio of ``v_0``'s entries; one root is taken."""
    J = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=M.dtype)
    Q0 = M[:, 0, 0].mT @ J @ M[:, 0, 1]
    Q1 = M[:, 1, 0].mT @ J @ M[:, 1, 1]
    S = Q0 @ J @ Q1.mT
    a, c = S[:, 0, 0], S[:, 1, 1]
    bb = (S[:, 0, 1] + S[:, 1, 0]) / 2
    # a x^2 + 2 bb x y + c y^2 = 0: solve for the ratio with the larger leading coefficient
    lead_a = a.abs() >= c.abs()
    p = torch.where(lead_a, a, c)
    q = torch.where(lead_a, c, a)
    disc = torch.sqrt(bb * bb - p * q)
    den = -bb + torch.where((bb.conj() * disc).real >= 0, -disc, disc)  # the larger of -bb ± disc
    # roots of p t^2 + 2 bb t + q = 0: t = q / den (stable form of (-bb ∓ disc) / p)
    safe = den.abs() > 1e-300
    t = torch.where(safe, q / torch.where(safe, den, 1), torch.zeros_like(den))
    one = torch.ones_like(t)
    v0 = torch.where(lead_a[:, None], torch.stack((t, one), -1), torch.stack((one, t), -1))
    w0, w1 = (Q0.mT @ v0[..., None])[..., 0], (Q1.mT @ v0[..., None])[..., 0]
    v1 = _perp(torch.where((_sq(w0) >= _sq(w1))[:, None], w0, w1))
    v = _unit(torch.stack((v0, v1), 1))
    cols = torch.einsum("kijab,kjb->kija", M, v)  # (b, i, j, 2): M_ij v_j
    pick = (_sq(cols[:, :, 0]) >= _sq(cols[:, :, 1]))[..., None]
    u = _unit(_perp(torch.where(pick, cols[:, :, 0], cols[:, :, 1])))
    return u, v


def _sq(a):
    return a.abs().square().sum(-1)


def _diag_lstsq(P, Q, R):
    """``alpha, beta`` minimising ``||R + diag(alpha) P + Q diag(beta)||_F`` for a batch of
    ``h x h`` matrices: the normal equations ``[[diag(a), C], [C^H, diag(d)]]`` are solved
    through their Schur complement, a Hermitian ``h x h`` matrix, pseudo-inverted (a
    diagonal gauge -- ``P`` and ``Q`` diagonal scalings of each other -- makes it singular)."""
    a = _sq(P)  # sum_j |P_ij|^2
    d = Q.abs().square().sum(-2)  # sum_i |Q_ij|^2
    C = P.conj() * Q
    r1 = (P.conj() * R).sum(-1)
    r2 = (Q.conj() * R).sum(-2)
    ai = torch.where(a > 1e-300, 1 / a.clamp_min(1e-300), torch.zeros_like(a))
    S = torch.diag_embed(d.to(C.dtype)) - C.mH @ (ai[..., None] * C)
    rhs = C.mH @ (ai * r1)[..., None] - r2[..., None]
    w, E = torch.linalg.eigh(S)
    keep = w > w.amax(-1, keepdim=True).clamp_min(1e-300) * 1e-13
    winv = torch.where(keep, 1 / torch.where(keep, w, 1), torch.zeros_like(w))
    beta = (E @ (winv.to(E.dtype)[..., None] * (E.mH @ rhs)))[..., 0]
    alpha = -ai * (r1 + (C @ beta[..., None])[..., 0])
    return alpha, beta


def _newton(M, u, v, res, cfg):
    """Gauss–Newton on ``u_i^T M_ij v_j = 0`` from ``u, v`` (``(b, h, 2)``), each block's
    residual ``res``: ``u_i += x_i u_i^perp``, ``v_j += y_j v_j^perp`` with ``x, y`` the
    least-squares solution of the linearised system ``off + diag(x) P + Q diag(y) = 0`` --
    the same diagonal least squares as the completion -- halved up to 3 times until it lowers
    a block's residual; a block whose step does not is left where it is. Quadratic where the
    alternation is slow (nearly degenerate blocks, e.g. of a symmetric circulant)."""
    for _ in range(cfg.newton_steps):
        open_ = res > cfg.split_tol
        if not bool(open_.any()):
            break
        up, vp = _perp(u).conj(), _perp(v).conj()
        off = _form(u, M, v)
        P = _form(up, M, v)
        Q = _form(u, M, vp)
        x, y = _diag_lstsq(P, Q, off)
        moved = torch.zeros_like(open_)
        for t in (1.0, 0.5, 0.25, 0.125):
            u2, v2 = _unit(u + t * x[..., None] * up), _unit(v + t * y[..., None] * vp)
            r2 = _residual(u2, M, v2)
            better = (r2 < res) & open_ & ~moved
            u = torch.where(better[:, None, None], u2, u)
            v = torch.where(better[:, None, None], v2, v)
            res = torch.where(better, r2, res)
            moved |= better
            if bool(moved[open_].all()):
                break
        if not bool(moved.any()):
            break
    return u, v, res


def _complete(M, u, v):
    """The second solution, linearly (module doc). Returns the pair blocks of ``T_1`` and
    ``T_2`` (``(b, h, 2, 2)``), the halves ``X``, ``Z`` (``(b, h, h)``) and the residual of
    the eliminated block."""
    u1, v0 = _perp(u).conj(), _perp(v).conj()  # orthonormal complements
    X = _form(u, M, v0)
    Y = _form(u1, M, v0)
    Z = _form(u1, M, v)
    alpha, beta = _diag_lstsq(X, Z, Y)  # Y + diag(alpha) X + Z diag(beta) = 0
    u1 = u1 + alpha[..., None] * u
    v0 = v0 + beta[..., None] * v
    Yn = Y + alpha[..., None] * X + Z * beta[..., None, :]
    res = torch.linalg.matrix_norm(Yn) / _block_norm(M)
    # U = [u; u1] (rows) and V = [v0, v] (columns) have determinants -|u|^2 and |v|^2 whatever
    # alpha and beta are (the complements are orthogonal), so their inverses are the adjugates
    # over those: never singular, even where a degenerate block makes alpha, beta huge (the
    # residual then says so)
    T1 = torch.stack((torch.stack((u1[..., 1], -u[..., 1]), -1), torch.stack((-u1[..., 0], u[..., 0]), -1)), -2)
    T1 = T1 / -_sq(u)[..., None, None]
    T2 = torch.stack((torch.stack((v[..., 1], -v[..., 0]), -1), torch.stack((-v0[..., 1], v0[..., 0]), -1)), -2)
    T2 = T2 / _sq(v)[..., None, None]
    return T1, T2, X, Z, res


def fit_splitting(M, config: SplittingConfig | None = None, **overrides) -> Result:
    """Fit ``M = B · B*`` (complex butterflies, no permutations) by recursive splitting from
    random starts (module doc).

    Parameters
    ----------
    M : array-like, torch.Tensor or path to a .npy file
        Square, power-of-two size ``n >= 2``, real or complex, single or double precision.
    config : SplittingConfig, optional
        Settings; keyword arguments override its fields (``fit_splitting(M, seed=1)``).

    Returns
    -------
    Result
        ``kmatrix`` is ``KMatrix([B, B*])`` (complex twiddles; ``real_output`` for a real
        ``M``); ``error`` its relative Frobenius error against ``M`` (dense, float64);
        ``status`` converged / stalled / budget; ``info["levels"]`` each level's block size,
        sweeps and residuals.
    """
    from kfit import Butterfly, KMatrix
    from kfit._error import relative_error

    from .gradient import _progress

    t0 = time.perf_counter()
    cfg = replace(config or SplittingConfig(), **overrides)
    for name, least in (("starts", 1), ("max_sweeps", 1), ("patience", 1), ("newton_steps", 0), ("retries", 0)):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if cfg.finish not in ("lm", "none"):
        raise ValueError(f"finish must be 'lm' or 'none', got {cfg.finish!r}")
    M, n, single, tol = square_target(M, cfg.tol)
    A = M.to(torch.complex128 if M.is_complex() else torch.float64)
    L = n.bit_length() - 1
    g = torch.Generator().manual_seed(cfg.seed)
    tw_b = torch.zeros(L, n // 2, 2, 2, dtype=torch.complex128)
    tw_s = torch.zeros(L, n // 2, 2, 2, dtype=torch.complex128)
    levels, total_sweeps, worst, hopeless = [], 0, 0.0, False
    bar = _progress(cfg, total=L, desc="fit B·B* (splitting)")
    blocks = A.to(torch.complex128).contiguous()[None]
    for depth in range(L - 1):  # blocks of size m = n / 2^depth: B's level L-1-depth, B*'s level depth
        b, m = blocks.shape[0], blocks.shape[1]
        h = m // 2
        Mb = blocks.view(b, 2, h, 2, h).permute(0, 2, 4, 1, 3)  # Mb[k, i, j, r, c] = block[r h + i, c h + j]
        if h == 2:
            u, v = _solve_4(Mb)
            res, sweeps = _residual(u, Mb, v), 0
        else:
            # once a level has failed (M is not B · B*), the rest only completes a
            # factorization to report: one sweep each, no Newton
            if hopeless:
                u, v, res, sweeps = _alternate(Mb, replace(cfg, max_sweeps=1), g, t0)
            else:
                u, v, res, sweeps = _solve_level_with_retries(Mb, cfg, g, t0)
        T1, T2, X, Z, res_y = _complete(Mb, u, v)
        tw_b[L - 1 - depth] = T1.reshape(-1, 2, 2)
        tw_s[depth] = T2.reshape(-1, 2, 2)
        level_res = float(torch.maximum(res, res_y).max())
        worst = max(worst, level_res)
        levels.append({"size": m, "blocks": b, "sweeps": sweeps, "residual": level_res})
        hopeless = hopeless or level_res > 1e-2
        total_sweeps += sweeps
        blocks = torch.stack((X, Z), 1).reshape(2 * b, h, h)
        bar.set_postfix_str(f"size {m}: residual {level_res:.1e}")
        bar.update(1)
    tw_b[0] = blocks  # the 2x2 blocks: B's stride-1 level, B*'s an identity
    tw_s[L - 1] = torch.eye(2, dtype=torch.complex128)
    bar.update(1)
    bar.close()
    real = not M.is_complex()
    K = KMatrix([Butterfly(tw_b, increasing=True), Butterfly(tw_s, increasing=False)], real_output=real)
    err = relative_error(K, A)
    status = "converged" if err.value <= tol else (
        "budget" if time.perf_counter() - t0 > cfg.time_budget else "stalled")
    trace = [(total_sweeps, time.perf_counter() - t0, err.value, "split")]
    finish = None
    if status != "converged" and cfg.finish == "lm" and err.value < 1e-2 and time.perf_counter() - t0 < cfg.time_budget:
        from .gradient import lm_finish

        K, err, lm_status, finish = lm_finish(A, K, err, tol=tol, cfg=cfg, t0=t0, trace=trace, step0=total_sweeps)
        status = "converged" if err.value <= tol else (lm_status or status)
    if single:
        K = K.to(torch.float32)
    words = {"converged": "reached", "stalled": "stalled at", "budget": "budget spent at"}[status]
    return Result(
        kmatrix=K, error=err.value, error_method=err.method, status=status, solver="splitting",
        seconds=time.perf_counter() - t0, dtype=str(M.dtype).replace("torch.", ""), tol=tol,
        message=(f"recursive splitting into B · B* from random starts ({total_sweeps} sweeps, worst level "
                 f"residual {worst:.1e}){' then LM' if finish else ''} {words} error {err.value:.2e} (tol {tol:g})"),
        info={"levels": levels, "sweeps": total_sweeps, "finish": finish, "settings": dict(cfg.__dict__)},
        trace=trace,
    )
