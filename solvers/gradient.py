r"""Gradient fitting: the parameters of a given K-matrix structure, fitted to a target.

Structure
---------
``K = Re?( E^T · P_out · F_1 F_2 ... F_k · P_in · E )`` where each ``F_i`` is a butterfly
with increasing (``"B"``) or decreasing (``"B*"``) strides, real or complex, ``P_out`` and
``P_in`` fixed permutations (given), ``E`` the expansion corner. ``GradientConfig.chain``
spells the butterflies in matrix order, e.g. ``("B", "B*")`` for BB* or
``("B", "B*", "B", "B*")`` for (BB*)^2.

Method
------
1. Many random starts at once: every twiddle tensor carries a leading batch dimension of
   ``restarts`` independent starts (one process, one device), each level's 2x2 blocks
   Haar-random unitary (orthogonal) by default; the loss of each start is
   ``||K_s - M||_F^2 / ||M||_F^2``, computed from the dense products (butterflies are
   densified by recursive doubling, ~2 n^2 work each).
2. First-order phase: Adam on all starts together (float64), keeping each start's best
   iterate -- Adam drifts away from minima it has reached. With ``perm_candidates``, the
   starts of every candidate pair of permutations share the batch (each fitted to its
   permuted target) and the worse half of the candidates is dropped at fixed steps
   (successive halving), so the survivors get the remaining steps.
3. Second-order finish: the best starts are polished one by one with Levenberg–Marquardt
   (or L-BFGS with strong Wolfe, ``finish="lbfgs"``), in float64, until the relative
   error is below ``tol``, progress stalls, or the budget of time or iterations is spent.
   The best iterate is kept. LM solves ``(J^T J + lam D) d = -J^T r`` by conjugate
   gradients, matrix-free (one forward- and one reverse-mode product per iteration), with
   ``D = diag(J^T J)`` computed exactly from row and column norms of partial products
   (:func:`_gn_diag`) as Marquardt's scaling and as the Jacobi preconditioner, and an
   inexact-Newton stopping rule for CG (relative residual ``min(0.1, sqrt(error))``).
   Measured: Hartley n = 64 polishes in 1.5 s instead of 10.5 s; n = 128 converges in
   ~17 s where the unscaled LM with a fixed 60 CG steps stalled at 1.5e-6 after 400 s.

:func:`refine` runs step 3 alone on a given K-matrix (resuming a fit).

The result's status: ``"converged"`` (error <= tol), ``"stalled"`` (no progress) or
``"budget"`` (time or iterations spent); non-convergence never raises.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from ._result import Result


@dataclass(frozen=True)
class GradientConfig:
    """Settings of :func:`fit_gradient`.

    Attributes
    ----------
    chain : tuple of "B" / "B*"
        The butterflies, in matrix order.
    complex : bool
        Complex twiddles.
    real_output : bool
        Fit ``Re(...)`` (DCT/DST/Hartley from complex butterflies).
    expansion : int
        Fit the top-left n x n corner of a size ``expansion * n`` product.
    row_perm, col_perm : index vectors or None
        Fixed permutations ``P_out``, ``P_in`` (``(P x)[i] = x[perm[i]]``).
    learn_perm : "none", "in", "out" or "both"
        Learn ``P_in`` / ``P_out`` in the structured family of :mod:`solvers._permfamily`
        (relaxed during the first-order phase, rounded, then fixed for the finish).
    perm_candidates : sequence of (label, row_perm, col_perm), or None
        Candidate pairs of fixed permutations (either may be None), all fitted at once:
        ``restarts`` starts per candidate, screened by successive halving during the
        first-order phase (:func:`_halving_steps`): at a third of ``adam_steps`` the
        better half of the candidates (by their best start) is kept, then again every
        sixth, while more than 2 remain. The finish polishes the best starts of the
        survivors. A start of candidate ``(P_out, P_in)`` is fitted to the permuted target
        ``P_out^T M P_in^T`` (the same loss), so one batch serves every candidate.
        Not with ``row_perm``, ``col_perm``, ``learn_perm`` or ``expansion > 1``.
    restarts : int
        Random starts fitted at once (a batch dimension); per candidate with
        ``perm_candidates``.
    init : "unitary" or "gaussian"
        Distribution of the starts' 2x2 blocks (:func:`_random_blocks`): Haar-random
        unitary (orthogonal when real) blocks by default.
    adam_steps, adam_lr : first-order phase.
    polish : int
        How many of the best starts the second-order phase polishes.
    finish : "lm" or "lbfgs"
        Second-order finish: Levenberg–Marquardt on the residual with matrix-free CG
        (Gauss–Newton products by forward- and reverse-mode autodiff; default: measured to
        reach 1e-12 where L-BFGS crawls linearly), or L-BFGS with strong Wolfe.
    lm_steps, cg_iters : int
        Levenberg–Marquardt steps per polished start; the most CG iterations per step
        (each step stops earlier, at its forcing term).
    lm_patience : int
        LM steps without a 10% gain before a start counts as stalled.
    lbfgs_iters : int
        L-BFGS iterations per polished start (in rounds of 50).
    tol : float
        Target relative Frobenius error (machine precision in float64: 1e-12).
    time_budget : float
        Seconds for the whole fit.
    seed : int
        Same seed, same machine: same result.
    device : str
        Where the starts are computed ("cpu", "cuda", ...). The returned K-matrix is on
        the CPU, like every solver's result; ``result.kmatrix.to("cuda")`` moves it.
    progress : bool
        Show a progress bar with the current best error.
    """

    chain: tuple = ("B", "B*")
    complex: bool = False
    real_output: bool = False
    expansion: int = 1
    row_perm: object = None
    col_perm: object = None
    learn_perm: str = "none"
    perm_candidates: object = None
    perm_penalty: float = 0.1
    restarts: int = 16
    init: str = "unitary"
    adam_steps: int = 1000
    adam_lr: float = 0.02
    polish: int = 3
    finish: str = "lm"
    lm_steps: int = 60
    cg_iters: int = 250
    lm_patience: int = 8
    lbfgs_iters: int = 2000
    tol: float = 1e-12
    time_budget: float = 600.0
    seed: int = 0
    device: str = "cpu"
    progress: bool = False

    def describe(self) -> str:
        core = " · ".join(self.chain)  # P~: a learned permutation
        cands = self.perm_candidates or ()
        if self.row_perm is not None or self.learn_perm in ("out", "both") or any(c[1] is not None for c in cands):
            core = ("P~ · " if self.learn_perm in ("out", "both") else "P · ") + core
        if self.col_perm is not None or self.learn_perm in ("in", "both") or any(c[2] is not None for c in cands):
            core = core + (" · P~" if self.learn_perm in ("in", "both") else " · P")
        if self.expansion > 1:
            core = f"corner[{core}] (e={self.expansion})"
        if self.real_output:
            core = f"Re({core})"
        return core + (" complex" if self.complex else " real")


@dataclass
class _Model:
    params: list  # real tensors (S, L, N/2, 2, 2[, 2 for complex])
    increasing: list
    cfg: GradientConfig
    n: int
    N: int
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    logits: dict = field(default_factory=dict)  # "in"/"out" -> (S, m) learnable logits
    moves: list = field(default_factory=list)

    def twiddles(self, params=None):
        ps = self.params if params is None else params
        return [torch.view_as_complex(p) if self.cfg.complex else p for p in ps]

    def dense(self, params=None) -> torch.Tensor:
        """(S, n, n) dense K for every start."""
        from kfit._products import butterfly_dense

        from ._permfamily import relaxed_cols, relaxed_rows

        K = None
        for tw, inc in zip(self.twiddles(params), self.increasing):
            D = butterfly_dense(tw, inc)
            K = D if K is None else K @ D
        if "out" in self.logits:
            K = relaxed_rows(K, torch.sigmoid(self.logits["out"]), self.moves)
        if "in" in self.logits:
            K = relaxed_cols(K, torch.sigmoid(self.logits["in"]), self.moves)
        if self.rows is not None:
            K = K[:, self.rows, :]
        if self.cols is not None:
            K = K[:, :, self.cols]
        K = K[:, : self.n, : self.n]
        return K.real if self.cfg.real_output and K.is_complex() else K

    def kmatrix(self, s: int):
        """Start ``s`` as a kfit.KMatrix."""
        from kfit import Butterfly, KMatrix, Permutation

        dev = self.cfg.device  # the permutations' index vectors are kept on the CPU
        fs = []
        if self.rows is not None:
            fs.append(Permutation(self.rows_perm).to(dev))
        fs += [Butterfly(tw[s].detach().clone(), increasing=inc) for tw, inc in zip(self.twiddles(), self.increasing)]
        if self.cols is not None:
            fs.append(Permutation(self.cols_perm).to(dev))
        return KMatrix(fs, expansion=self.cfg.expansion, real_output=self.cfg.real_output)


def _build(M: torch.Tensor, cfg: GradientConfig) -> _Model:
    from kfit import Permutation
    from kfit._validate import check_power_of_two

    n = M.shape[0]
    N = check_power_of_two(n * cfg.expansion, "n * expansion")
    L = N.bit_length() - 1
    g = torch.Generator().manual_seed(cfg.seed)
    params, inc = [], []
    for kind in cfg.chain:
        if kind not in ("B", "B*"):
            raise ValueError(f"chain entries must be 'B' or 'B*', got {kind!r}")
        p = _random_blocks((cfg.restarts, L, N // 2), cfg.complex, cfg.init, g).to(cfg.device)
        params.append(p.requires_grad_(True))
        inc.append(kind == "B")
    model = _Model(params, inc, cfg, n, N)
    if cfg.learn_perm not in ("none", "in", "out", "both"):
        raise ValueError(f"learn_perm must be 'none', 'in', 'out' or 'both', got {cfg.learn_perm!r}")
    sides = {"none": (), "in": ("in",), "out": ("out",), "both": ("out", "in")}[cfg.learn_perm]
    if sides:
        from ._permfamily import moves

        if (cfg.row_perm is not None and "out" in sides) or (cfg.col_perm is not None and "in" in sides):
            raise ValueError("a permutation cannot be both fixed (row_perm/col_perm) and learned (learn_perm)")
        model.moves = moves(N)
        for side in sides:
            lg = 0.5 * torch.randn((cfg.restarts, len(model.moves)), generator=g, dtype=torch.float64)
            model.logits[side] = lg.to(cfg.device).requires_grad_(True)
    # (P D)[i] = D[perm[i]]: rows gathered by perm; (D P)[:, c] = D[:, perm^-1[c]].
    if cfg.row_perm is not None:
        P = cfg.row_perm if isinstance(cfg.row_perm, Permutation) else Permutation(cfg.row_perm)
        if P.n != N:
            raise ValueError(f"row_perm has length {P.n}, expected {N}")
        model.rows, model.rows_perm = P.perm.to(cfg.device), P.perm
    if cfg.col_perm is not None:
        P = cfg.col_perm if isinstance(cfg.col_perm, Permutation) else Permutation(cfg.col_perm)
        if P.n != N:
            raise ValueError(f"col_perm has length {P.n}, expected {N}")
        model.cols, model.cols_perm = P.inverse().perm.to(cfg.device), P.perm
    return model


def _random_blocks(batch: tuple, complex_: bool, init: str, g: torch.Generator) -> torch.Tensor:
    """Random 2x2 twiddle blocks, shape ``(*batch, 2, 2)`` (complex: a trailing 2 for
    the real and imaginary parts).

    ``"unitary"``: Haar-random orthogonal / unitary blocks (QR of a Gaussian block, the
    signs / phases of R's diagonal moved into Q), so every start's product is exactly
    orthogonal / unitary at any depth, the scale of an orthonormal transform. ``"gaussian"``:
    entries N(0, 1/2) (complex: 1/4 per part), unit scale only on average; the norm of a
    product is then a random walk over the levels. Measured (DCT-II n = 64 as
    ``Re(B · P)`` with its permutation given, 10 seeds x 32 starts of 300 Adam steps):
    4 converging starts with "unitary", 1 with "gaussian"; Hartley n = 128: 8 vs 6 of 64
    starts within 1e-2 after Adam.
    """
    if init not in ("unitary", "gaussian"):
        raise ValueError(f"init must be 'unitary' or 'gaussian', got {init!r}")
    Z = torch.randn((*batch, 2, 2) + ((2,) if complex_ else ()), generator=g, dtype=torch.float64)
    if init == "gaussian":
        return Z * (1 / math.sqrt(2) / (math.sqrt(2) if complex_ else 1))
    Z = torch.view_as_complex(Z) if complex_ else Z
    Q, R = torch.linalg.qr(Z)
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    Q = Q * (d / d.abs().clamp_min(1e-300))[..., None, :]
    return torch.view_as_real(Q).contiguous() if complex_ else Q.contiguous()


def _fix_perms(model, perms: dict):
    """Install fixed permutations ("out" -> rows, "in" -> columns) into the model."""
    from kfit import Permutation

    if "out" in perms:
        model.rows, model.rows_perm = perms["out"].to(model.cfg.device), perms["out"]
    if "in" in perms:
        model.cols, model.cols_perm = Permutation(perms["in"]).inverse().perm.to(model.cfg.device), perms["in"]


def _candidates(cfg: GradientConfig, n: int) -> list:
    """``cfg.perm_candidates`` checked: a list of (label, row perm, col perm), index
    tensors or None; [] without candidates."""
    from kfit import Permutation

    if cfg.perm_candidates is None:
        return []
    if cfg.row_perm is not None or cfg.col_perm is not None or cfg.learn_perm != "none" or cfg.expansion != 1:
        raise ValueError(
            "perm_candidates cannot be combined with row_perm, col_perm, learn_perm or expansion > 1: "
            "put the fixed permutations into every candidate instead"
        )
    out = []
    for k, cand in enumerate(cfg.perm_candidates):
        if not (isinstance(cand, (tuple, list)) and len(cand) == 3):
            raise ValueError(f"perm_candidates[{k}] must be (label, row_perm, col_perm), got {cand!r:.80}")
        label, *perms = cand
        perms = [None if p is None else (p if isinstance(p, Permutation) else Permutation(p)).perm for p in perms]
        for side, p in zip(("row_perm", "col_perm"), perms):
            if p is not None and p.numel() != n:
                raise ValueError(f"perm_candidates[{k}] ({label}): {side} has length {p.numel()}, expected {n} (the target's size)")
        out.append((str(label), *perms))
    if not out:
        raise ValueError("perm_candidates is empty: give at least one (label, row_perm, col_perm), or None")
    return out


def _permuted(target, rows, cols):
    """``P_out^T · M · P_in^T``: fitting ``X`` to it is fitting ``P_out · X · P_in`` to M
    (``(P x)[i] = x[perm[i]]``)."""
    if rows is not None:
        target = target[torch.argsort(rows).to(target.device)]
    if cols is not None:
        target = target[:, cols.to(target.device)]
    return target


def _install(model, cand):
    """Fix the model's permutations to those of candidate ``(label, rows, cols)``."""
    _, rows, cols = cand
    model.rows = model.cols = None
    _fix_perms(model, {k: v for k, v in (("out", rows), ("in", cols)) if v is not None})


def _halving_steps(adam_steps: int, C: int) -> dict:
    """Successive halving of ``C`` candidates over ``adam_steps`` Adam steps: ``{step: how
    many candidates to keep}``, the first cut at a third of the steps, then one every
    sixth, while more than 2 remain. Measured on the DCT-IV n = 128 and 256 (``Re(P · B ·
    B* · P)``, 4 starts): the right permutations are at 0.2-0.6 after 100 of 300 steps,
    the wrong ones at >= 0.59 (0.83 at 256), and at 0.02-0.05 vs >= 0.22 after 150."""
    cuts, step, alive = {}, max(1, adam_steps // 3), C
    while alive > 2 and step <= adam_steps:
        alive = max(2, (alive + 1) // 2)
        cuts[step] = alive
        step += max(1, adam_steps // 6)
    return cuts


def _compact(opt, model, keep, lr):
    """Keep only the starts ``keep`` (indices) of the model's parameters, and of Adam's
    moments: a new optimizer over the smaller leaves, its state carried over."""
    new = []
    for p in model.params:
        q = p.detach()[keep].clone().requires_grad_(True)
        state = opt.state.get(p, {})
        new.append((q, {k: v[keep].clone() if torch.is_tensor(v) and v.dim() > 0 else v for k, v in state.items()}))
    model.params = [q for q, _ in new]
    opt = torch.optim.Adam(model.params, lr=lr)
    for q, state in new:
        if state:
            opt.state[q] = state
    return opt


def _per_candidate(best_loss, owner, C: int) -> torch.Tensor:
    """The best loss of each of the ``C`` candidates over its starts (inf: none left)."""
    per = torch.full((C,), float("inf"), dtype=best_loss.dtype, device=best_loss.device)
    return per.scatter_reduce(0, owner, best_loss, "amin")


def _screen_info(cands, owner, best_loss, s_best, screen, steps) -> dict:
    """``candidate`` (the winner's label) and ``screen``: every candidate's best error and
    the Adam steps it ran, best first."""
    per = _per_candidate(best_loss, owner, len(cands))
    rows = [(cands[c][0], math.sqrt(max(float(per[c]), 0.0)), steps) for c in sorted(set(owner.tolist()))]
    rows += [(cands[c][0], e, st) for c, (e, st) in screen.items()]
    rows.sort(key=lambda r: r[1])
    return {
        "candidate": cands[int(owner[s_best])][0],
        "screen": [{"candidate": lab, "error": e, "adam_steps": st} for lab, e, st in rows],
    }


def fit_gradient(M, config: GradientConfig | None = None, **overrides) -> Result:
    """Fit the structure of ``config`` to ``M`` by gradient descent (see module doc).

    Returns a :class:`solvers.Result`: ``kmatrix`` the best start, ``error`` its relative
    Frobenius error (dense, float64), ``status`` converged / stalled / budget, ``trace``
    a list of ``(step, seconds, best relative error, phase)``. ``info["finish"]`` says
    what each second-order finish did, one dict per polished start: ``start``, ``status``,
    ``error``, ``finish`` ("lm" or "l-bfgs") and ``steps``; for LM also ``accepted`` and
    ``rejected`` steps, ``cg_iterations`` (normal-equation products in all), ``cg_capped``
    (solves that hit their iteration cap before their tolerance), ``final_lambda`` and
    ``reductions`` (error ratio of the last accepted steps: near 1, a crawl; far below 1,
    still converging). When the budget ends while the best start's LM is still gaining,
    the message says so and how to continue (:func:`refine`).
    """
    return _fit(M, replace(config or GradientConfig(), **overrides))


def lm_finish(A, K, err, *, tol, cfg, t0, trace, step0):
    """The Levenberg–Marquardt finish of the solvers that build a K-matrix another way
    (projections, splitting): :func:`refine` of ``K`` against ``A`` with what is left of
    ``cfg.time_budget`` (counted from ``t0``), its steps appended to ``trace`` after
    ``step0``. Returns ``(K, err, status, finish)``: the refined factorization, its
    re-measured error and refine's status when it is better, else ``K, err, None``;
    ``finish`` is refine's record of the finish."""
    from kfit._error import relative_error

    r2 = refine(A, K, tol=tol, time_budget=max(1.0, cfg.time_budget - (time.perf_counter() - t0)),
                progress=cfg.progress, seed=cfg.seed)
    t_lm = trace[-1][1] if trace else 0.0
    trace += [(step0 + step, t_lm + sec, e, phase) for step, sec, e, phase in r2.trace]
    if r2.error < err.value:
        return r2.kmatrix, relative_error(r2.kmatrix, A), r2.status, r2.info["finish"]
    return K, err, None, r2.info["finish"]


def refine(M, K, config: GradientConfig | None = None, **overrides) -> Result:
    """Polish the parameters of an existing K-matrix ``K`` against ``M`` with the
    second-order finish of :func:`fit_gradient` (Levenberg–Marquardt by default), its
    structure and permutations kept.

    ``K`` must be ``[P_out ·] F_1 ... F_k [· P_in]`` with unbatched butterflies ``F_i``
    (as :func:`fit_gradient` returns them), any expansion, real part or not. Use it to
    resume a fit whose time budget ran out while it was still converging, or to take a
    float32 factorization to float64 precision. ``config`` supplies the finish's settings
    (``tol``, ``time_budget``, ``lm_steps``, ``finish``, ...); the structure fields are
    read from ``K``.
    """
    from kfit import Butterfly, KMatrix, Permutation
    from kfit._matrix_input import as_matrix

    if not isinstance(K, KMatrix):
        raise TypeError(f"K must be a kfit.KMatrix, got {type(K).__name__}")
    M = as_matrix(M, "M")
    if tuple(K.shape) != tuple(M.shape):
        raise ValueError(
            f"K is {K.shape[0]} x {K.shape[1]} but M is {M.shape[0]} x {M.shape[1]}: refine continues a fit "
            "of M, so K must have M's shape (was K saved from a fit of another size?)"
        )
    fs = list(K.factors)
    rows = fs.pop(0).perm if fs and isinstance(fs[0], Permutation) else None
    cols = fs.pop().perm if fs and isinstance(fs[-1], Permutation) else None
    if not fs or not all(isinstance(f, Butterfly) and not len(f.batch_shape) for f in fs):
        raise ValueError(
            "refine needs K = [Permutation ·] Butterfly · ... · Butterfly [· Permutation] with unbatched "
            f"butterflies, got factors {[type(f).__name__ for f in K.factors]}"
        )
    complex_ = any(f.twiddle.is_complex() for f in fs)
    cfg = replace(
        config or GradientConfig(), **overrides,
        chain=tuple("B" if f.increasing else "B*" for f in fs), complex=complex_, real_output=K.real_output,
        expansion=K.expansion, row_perm=rows, col_perm=cols, learn_perm="none", perm_candidates=None,
        restarts=1, adam_steps=0, polish=1,
    )
    dtype = torch.complex128 if complex_ else torch.float64
    start = [f.twiddle.detach().to(dtype)[None] for f in fs]
    return _fit(M, cfg, [torch.view_as_real(t) if complex_ else t for t in start])


def _fit(M, cfg: GradientConfig, start=None) -> Result:
    """fit_gradient's body; ``start``: the twiddles of one start (refine), instead of
    random starts and the first-order phase."""
    from kfit._error import relative_error
    from kfit._matrix_input import as_matrix

    t0 = time.perf_counter()
    M = as_matrix(M, "M")
    in_dtype = str(M.dtype).replace("torch.", "")
    target = M.to(torch.complex128 if M.is_complex() else torch.float64).to(cfg.device)
    if target.is_complex() and (cfg.real_output or not cfg.complex):
        raise ValueError(
            "M is complex but the structure is real (complex=False or real_output=True): "
            "use complex=True, real_output=False for a complex target"
        )
    cands = _candidates(cfg, target.shape[0])
    C = max(1, len(cands))
    model = _build(target, replace(cfg, restarts=cfg.restarts * C))
    if start is not None:
        with torch.no_grad():
            for p, tw in zip(model.params, start):
                p.copy_(tw.to(p.device))
    norm2 = target.abs().pow(2).sum()
    trace: list = []
    S = cfg.restarts * C
    # Each start's target (candidate permutations moved onto the target) and candidate.
    owner = torch.arange(C, device=cfg.device).repeat_interleave(cfg.restarts)
    targets = target
    if cands:
        targets = torch.stack([_permuted(target, ro, co) for _, ro, co in cands]).repeat_interleave(cfg.restarts, 0)
    cuts = _halving_steps(cfg.adam_steps, C)
    screen = {}  # candidate -> (best error, Adam steps) when screened out
    best_loss = torch.full((S,), float("inf"), dtype=torch.float64, device=cfg.device)
    best_params = [p.detach().clone() for p in model.params]
    step = 0
    bar = _progress(cfg, total=cfg.adam_steps, desc=f"fit {cfg.describe()} (Adam)")

    def losses(params=None):
        diff = model.dense(params) - targets
        return (diff.abs().pow(2).sum((-1, -2))) / norm2

    # -- phase 1: Adam on every start at once ---------------------------------------------
    best_logits = {k: v.detach().clone() for k, v in model.logits.items()}
    opt = torch.optim.Adam(model.params + list(model.logits.values()), lr=cfg.adam_lr)
    status = None
    for step in range(1, cfg.adam_steps + 1):
        opt.zero_grad(set_to_none=True)
        ls = losses()
        total = ls.sum()
        if model.logits:
            # Push the relaxed permutations towards 0/1 over the second half of the phase,
            # so that rounding them changes little.
            beta = cfg.perm_penalty * max(0.0, 2 * step / cfg.adam_steps - 1)
            for lg in model.logits.values():
                pr = torch.sigmoid(lg)
                total = total + beta * (pr * (1 - pr)).sum()
        total.backward()
        with torch.no_grad():
            better = ls.detach() < best_loss
            if bool(better.any()):
                best_loss = torch.where(better, ls.detach(), best_loss)
                for bp, p in zip(best_params, model.params):
                    bp[better] = p.detach()[better]
                for k, lg in model.logits.items():
                    best_logits[k][better] = lg.detach()[better]
        opt.step()
        if step in cuts:  # successive halving: drop the worse half of the candidates
            per = _per_candidate(best_loss, owner, C)
            alive = sorted(set(owner.tolist()), key=lambda c: float(per[c]))
            for c in alive[cuts[step]:]:
                screen[c] = (math.sqrt(max(float(per[c]), 0.0)), step)
            keep = torch.isin(owner, torch.tensor(alive[: cuts[step]], device=owner.device)).nonzero().squeeze(1)
            opt = _compact(opt, model, keep, cfg.adam_lr)
            best_params = [bp[keep] for bp in best_params]
            best_loss, owner, targets = best_loss[keep], owner[keep], targets[keep]
            S = len(keep)
        err = math.sqrt(max(best_loss.min().item(), 0.0))
        if step % 10 == 0 or step == 1:
            trace.append((step, time.perf_counter() - t0, err, "adam"))
            bar.set_postfix_str(f"best err {err:.2e}")
        bar.update(1)
        if err <= cfg.tol:
            status = "converged"
            break
        if time.perf_counter() - t0 > cfg.time_budget:
            status = "budget"
            break
    bar.close()
    adam_ran = step

    # -- phase 2: L-BFGS polish of the best starts, one by one ------------------------------
    order = torch.argsort(best_loss).tolist()
    rounded_perms = {}
    if model.logits:
        # Round the relaxed permutations of every start; from here on they are fixed.
        from ._permfamily import rounded

        with torch.no_grad():
            for s in range(S):
                rounded_perms[s] = {k: rounded(torch.sigmoid(lg[s]).cpu(), model.moves) for k, lg in best_logits.items()}
        model.logits = {}
        # The rounded error of each start (the relaxed one no longer applies).
        with torch.no_grad():
            for s in range(S):
                _fix_perms(model, rounded_perms[s])
                best_loss[s] = ((model.dense([bp[s : s + 1] for bp in best_params]) - target).abs().pow(2).sum() / norm2).item()
        order = torch.argsort(best_loss).tolist()
        status = None if status != "budget" else status
    finishes = []  # what each second-order finish did, for info["finish"]
    if status is None:
        for rank, s in enumerate(order[: cfg.polish]):
            if rounded_perms:
                _fix_perms(model, rounded_perms[s])
            if cands:
                _install(model, cands[int(owner[s])])
            remaining = cfg.time_budget - (time.perf_counter() - t0)
            if remaining <= 0:
                status = "budget"
                break
            finish = _lm if cfg.finish == "lm" else _lbfgs
            loss_s, params_s, st, step, stats = finish(model, best_params, s, target, norm2, cfg, t0, trace, step, rank)
            finishes.append({"start": s, "status": st, "error": math.sqrt(max(loss_s, 0.0)), **stats})
            if loss_s < best_loss[s]:
                best_loss[s] = loss_s
                for bp, p in zip(best_params, params_s):
                    bp[s] = p
            if math.sqrt(max(loss_s, 0.0)) <= cfg.tol:
                status = "converged"
                break
            status = st
    s_best = int(torch.argmin(best_loss))
    if rounded_perms:
        _fix_perms(model, rounded_perms[s_best])
    if cands:
        _install(model, cands[int(owner[s_best])])
    with torch.no_grad():
        for p, bp in zip(model.params, best_params):
            p.copy_(bp)
    K = model.kmatrix(s_best)
    if not target.is_complex() and K.output_is_complex:
        # A complex structure fitted to a real target: its real part is at least as close
        # (||Re K - M|| <= ||K - M||) and maps real vectors to real vectors.
        from kfit import KMatrix

        K = KMatrix(K.factors, expansion=K.expansion, real_output=True)
    err = relative_error(K, target)  # on the fitting device
    K = K.to("cpu")  # like every solver's result, whatever device did the work
    if err.value <= cfg.tol:
        status = "converged"
    elif status in (None, "converged"):
        status = "stalled"
    messages = {
        "converged": f"converged: error {err.value:.2e} <= tol {cfg.tol:g}",
        "stalled": f"stalled at error {err.value:.2e} (tol {cfg.tol:g}): no further progress",
        "budget": f"budget spent ({cfg.time_budget:g} s or the iteration limits) at error {err.value:.2e} (tol {cfg.tol:g})",
    }
    return Result(
        kmatrix=K,
        error=err.value,
        error_method=err.method,
        status=status,
        solver="gradient",
        seconds=time.perf_counter() - t0,
        dtype=in_dtype,
        tol=cfg.tol,
        message=f"{cfg.describe()}: " + messages[status] + _still_converging(status, finishes, s_best),
        info={
            "structure": cfg.describe(),
            "restarts": cfg.restarts * C,
            "best_start": s_best,
            "start_errors_after_adam": [math.sqrt(max(v, 0.0)) for v in best_loss.tolist()],
            "settings": {k: v for k, v in cfg.__dict__.items() if k not in ("row_perm", "col_perm", "perm_candidates")},
            "row_perm_fixed": cfg.row_perm is not None,
            "col_perm_fixed": cfg.col_perm is not None,
            "learned_permutations": {k: v.tolist() for k, v in rounded_perms.get(s_best, {}).items()},
            **(_screen_info(cands, owner, best_loss, s_best, screen, adam_ran) if cands else {}),
            "finish": finishes,
        },
        trace=trace,
    )


def _still_converging(status: str, finishes: list, s_best: int) -> str:
    """A hint for a fit cut off by its budget while the best start's LM was still gaining."""
    # each start is polished at most once, so this is the best start's finish, if LM ran
    lm = next((f for f in finishes if f["start"] == s_best and f["finish"] == "lm"), None)
    if status != "budget" or lm is None or not lm["reductions"] or lm["reductions"][-1] > 0.9:
        return ""
    cuts = ", ".join(f"{x:.2f}" for x in lm["reductions"][-3:])
    return (f"; its LM finish was still converging (error x {cuts} on its last accepted steps): "
            "continue it with solvers.refine(M, result.kmatrix, time_budget=...), or from the command line "
            "with kfit fit TARGET --save FILE, then kfit fit TARGET --resume FILE)")


class _Polish:
    """Bookkeeping shared by the second-order loops: the best iterate, stall counting,
    the trace, the progress bar and the stopping rule (tol, stall, time budget)."""

    def __init__(self, cfg, t0, trace, step, label, total, patience):
        self.cfg, self.t0, self.trace, self.step = cfg, t0, trace, step
        self.label, self.patience = label, patience
        self.best_loss, self.best = float("inf"), None
        self.stall, self.status = 0, "budget"
        self.stats = {"finish": label.split()[0].lower()}  # what the loop did, for Result.info
        self.bar = _progress(cfg, total=total, desc=f"fit ({label})")

    def update(self, loss: float, snapshot, steps: int = 1) -> bool:
        """Record one round; ``snapshot()`` copies the current iterate. True: stop."""
        self.step += steps
        self.stats["steps"] = self.stats.get("steps", 0) + steps
        if math.isfinite(loss) and loss < self.best_loss:
            self.stall = 0 if loss < 0.9 * self.best_loss else self.stall + 1
            self.best_loss, self.best = loss, snapshot()
        else:
            self.stall += 1
        err = math.sqrt(max(self.best_loss, 0.0))
        self.trace.append((self.step, time.perf_counter() - self.t0, err, self.label.split()[0].lower()))
        self.bar.set_postfix_str(f"best err {err:.2e}")
        self.bar.update(steps)
        if err <= self.cfg.tol:
            self.status = "converged"
        elif self.stall >= self.patience or not math.isfinite(loss):
            self.status = "stalled"
        elif time.perf_counter() - self.t0 > self.cfg.time_budget:
            self.status = "budget"
        else:
            return False
        return True

    def close(self):
        self.bar.close()


def _gn_diag(model, params) -> torch.Tensor:
    """The diagonal of ``J^T J`` (flat, in ``theta``'s order), exact.

    The derivative of ``K`` by the entry ``(a, b)`` of a 2x2 block is the outer product of
    column ``i_a`` of everything left of that level and row ``i_b`` of everything right of
    it, so its squared norm is a product of a column norm and a row norm. One sweep from
    each side over all levels gives them all in O(levels · n · N). With ``real_output``,
    for ``u = a + ib`` (the column) and ``v = c + id`` (the row):
    ``||Re(u v^T)||^2 = |a|^2 |c|^2 + |b|^2 |d|^2 - 2 (a·b)(c·d)`` for the real part of the
    twiddle and ``||Im(u v^T)||^2 = |a|^2 |d|^2 + |b|^2 |c|^2 + 2 (a·b)(c·d)`` for its
    imaginary part.
    """
    cfg, N, n = model.cfg, model.N, model.n
    L = N.bit_length() - 1
    tws = model.twiddles([p.detach() for p in params])  # (1, L, N/2, 2, 2), complex or real
    dtype = tws[0].dtype
    rows = model.rows[:n] if model.rows is not None else torch.arange(n, device=tws[0].device)
    cols = model.cols[:n] if model.cols is not None else torch.arange(n, device=tws[0].device)
    eye = torch.eye(N, dtype=dtype, device=tws[0].device)
    seq = []  # (butterfly, storage level, pair indices i, stride) in matrix order, left to right
    p_idx = torch.arange(N // 2, device=tws[0].device)
    for b, (tw, inc) in enumerate(zip(tws, model.increasing)):
        for level in reversed(range(L)):
            st = (1 << level) if inc else N >> (level + 1)
            seq.append((b, level, (p_idx // st) * 2 * st + p_idx % st, st))
    left = []  # squared column norms of E_rows · A_1 ... A_{t-1}
    X = eye[rows]  # (n, N)
    for b, level, i, st in seq:
        left.append(_norm_parts(X, 0))
        t = tws[b][0, level]
        xi, xj = X[:, i], X[:, i + st]
        X = X.clone()
        X[:, i] = xi * t[:, 0, 0] + xj * t[:, 1, 0]
        X[:, i + st] = xi * t[:, 0, 1] + xj * t[:, 1, 1]
    right = [None] * len(seq)  # squared row norms of A_{t+1} ... A_m · E_cols
    Y = eye[:, cols]  # (N, n)
    for k in reversed(range(len(seq))):
        b, level, i, st = seq[k]
        right[k] = _norm_parts(Y, 1)
        t = tws[b][0, level]
        yi, yj = Y[i], Y[i + st]
        Y = Y.clone()
        Y[i] = t[:, 0, 0, None] * yi + t[:, 0, 1, None] * yj
        Y[i + st] = t[:, 1, 0, None] * yi + t[:, 1, 1, None] * yj
    out = [torch.zeros(p.shape[1:], dtype=torch.float64, device=p.device) for p in params]
    for k, (b, level, i, st) in enumerate(seq):
        idx = torch.stack((i, i + st))  # (2, N/2): output / input index of entry a / b
        # (N/2, a, b) arrays of the column parts (left) and row parts (right)
        aa, bb, ab = (q[idx].T[:, :, None] for q in left[k])
        cc, dd, cd = (q[idx].T[:, None, :] for q in right[k])
        if not cfg.complex:
            out[b][level] = aa * cc
        elif cfg.real_output:
            out[b][level] = torch.stack((aa * cc + bb * dd - 2 * ab * cd, aa * dd + bb * cc + 2 * ab * cd), -1)
        else:
            full = (aa + bb) * (cc + dd)
            out[b][level] = torch.stack((full, full), -1)
    return torch.cat([o.reshape(-1) for o in out])


def _norm_parts(X, dim):
    """``(|Re X|^2, |Im X|^2, Re X · Im X)`` summed over ``dim`` (zeros for real X)."""
    if not X.is_complex():
        z = torch.zeros(X.shape[1 - dim], dtype=X.dtype, device=X.device)
        return X.square().sum(dim), z, z
    a, b = X.real, X.imag
    return a.square().sum(dim), b.square().sum(dim), (a * b).sum(dim)


def _lm(model, best_params, s, target, norm2, cfg, t0, trace, step, rank):
    """Levenberg–Marquardt on start ``s``: solve (J^T J + lam D) d = -J^T r by CG, where
    J^T J v is one forward-mode and one reverse-mode product (never forming J) and
    D = diag(J^T J) (Marquardt's scaling, also the CG preconditioner).

    The inner solve stops at relative residual ``min(0.1, sqrt(error))`` (an inexact
    Newton forcing term: cheap steps far away, accurate ones near the solution, where a
    fixed iteration count would turn the quadratic convergence of Gauss–Newton linear)
    or after ``cap`` iterations. ``cap`` starts at ``cg_iters`` and doubles (up to 8x)
    after each step whose solve ran out of iterations: close to the solution the system is
    worst conditioned and an exact step is worth its cost (Hartley n = 256 crept from 5e-9
    to 2e-9 over the last minutes of a 600 s budget with the cap fixed at 250)."""
    from torch.func import jvp, vjp

    shapes = [bp[s : s + 1].shape for bp in best_params]
    sizes = [math.prod(sh) for sh in shapes]
    scale = norm2.sqrt()

    def unflat(theta):
        return [c.reshape(sh) for c, sh in zip(torch.split(theta, sizes), shapes)]

    def residual(theta):
        r = (model.dense(unflat(theta)) - target) / scale
        return torch.view_as_real(r).reshape(-1) if r.is_complex() else r.reshape(-1)

    theta = torch.cat([bp[s].reshape(-1) for bp in best_params]).detach().clone()
    r = residual(theta)
    loss = float(r @ r)
    lam = 1e-3
    cap = cfg.cg_iters
    book = _Polish(cfg, t0, trace, step, f"LM start {rank + 1}/{cfg.polish}", cfg.lm_steps, patience=cfg.lm_patience)
    book.update(loss, theta.clone, steps=0)
    st = book.stats
    st.update(accepted=0, rejected=0, cg_iterations=0, cg_capped=0, reductions=[])
    for _ in range(cfg.lm_steps):
        r, vjp_fn = vjp(residual, theta)
        g = vjp_fn(r)[0]
        diag = _gn_diag(model, unflat(theta)) / norm2
        floor = 1e-12 * float(diag.max())  # gauge directions (rescalings between levels) have none
        damp = lam * (diag + floor)

        def normal(v):
            st["cg_iterations"] += 1
            jv = jvp(residual, (theta,), (v,))[1]
            return vjp_fn(jv)[0] + damp * v

        forcing = min(0.1, math.sqrt(math.sqrt(max(loss, 0.0))))
        step_, reached = _cg(normal, -g, cap, precond=1.0 / (diag + floor + damp), rtol=forcing)
        if not reached:
            st["cg_capped"] += 1
            cap = min(2 * cap, 8 * cfg.cg_iters)
        trial = theta + step_
        r_new = residual(trial)
        new = float(r_new @ r_new)
        if math.isfinite(new) and new < loss:  # accept: trust the quadratic model more
            st["accepted"] += 1
            st["reductions"].append(math.sqrt(new / loss) if loss > 0 else 0.0)
            theta, loss = trial, new
            lam = max(lam / 3, 1e-12)
        else:
            st["rejected"] += 1
            lam *= 4
        if book.update(loss, theta.clone):
            break
    book.close()
    st["final_lambda"] = lam
    st["reductions"] = st["reductions"][-5:]
    return book.best_loss, [p[0] for p in unflat(book.best)], book.status, book.step, st


def _cg(matvec, b, iters, precond=None, rtol=1e-10):
    """(Preconditioned) conjugate gradients for a symmetric positive definite operator,
    from x = 0, until ``||b - A x|| <= rtol ||b||`` or ``iters`` iterations. Returns
    ``(x, reached)``: whether the tolerance was reached."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = r * precond if precond is not None else r
    p = z.clone()
    rz = r @ z
    stop = (rtol * float(b.norm())) ** 2
    reached = False
    for _ in range(iters):
        Ap = matvec(p)
        alpha = rz / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        if float(r @ r) <= stop:
            reached = True
            break
        z = r * precond if precond is not None else r
        rz_new = r @ z
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, reached


def _lbfgs(model, best_params, s, target, norm2, cfg, t0, trace, step, rank):
    """Polish start ``s`` with L-BFGS (strong Wolfe); returns (best loss, params, status, step)."""
    params = [bp[s : s + 1].clone().requires_grad_(True) for bp in best_params]
    opt = torch.optim.LBFGS(
        params, lr=1, max_iter=50, history_size=100, line_search_fn="strong_wolfe",
        tolerance_grad=1e-300, tolerance_change=1e-300,
    )

    def loss_fn():
        return ((model.dense(params) - target).abs().pow(2).sum()) / norm2

    def closure():
        opt.zero_grad(set_to_none=True)
        ls = loss_fn()
        ls.backward()
        return ls

    book = _Polish(cfg, t0, trace, step, f"L-BFGS start {rank + 1}/{cfg.polish}", cfg.lbfgs_iters, patience=10)
    for _ in range(max(1, cfg.lbfgs_iters // 50)):
        opt.step(closure)
        with torch.no_grad():
            cur = loss_fn().item()
        if book.update(cur, lambda: [p.detach()[0].clone() for p in params], steps=50):
            break
    book.close()
    return book.best_loss, book.best, book.status, book.step, book.stats


def _progress(cfg, total, desc):
    if cfg.progress:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False)

    class _Null:
        def update(self, *_):
            pass

        def set_postfix_str(self, *_):
            pass

        def close(self):
            pass

    return _Null()
