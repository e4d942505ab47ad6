r"""Closed-form identification of a real part: recover ``M = Re(P_out · B · P_in)``.

Fast real transforms are the real part of a complex FFT behind fixed reorderings
(Makhoul 1980): the DCT-II and DST-II are ``Re(D · F · Q)``, the DCT-IV
``Re(D1 · F · D2 · Q)``, with ``F`` the DFT, ``Q`` an even/odd reordering and ``D`` diagonal
twiddles -- the real part of one complex butterfly. Gradient fits of that structure stall
from random starts at n >= 128 (DESIGN.md, "real part"); this solver reads the complex
butterfly off the real matrix instead, in O(n^2 log n), with no knowledge of the transform.

The algorithm
-------------
Let ``A = P_out^-1 · M · P_in^-1 = Re(C)`` with ``C = T · diag(X, Y)`` an increasing-stride
butterfly (for ``B*``, decreasing strides, work on ``A^T``). For each row pair
``(i, i + n/2)`` the top level gives ``A[i, :n/2] = Re(d1 X[i])`` and
``A[i + n/2, :n/2] = Re(d3 X[i])``, so the complex row ``X[i]`` lies in the complex span
of the two real rows ``u_i = A[i, :n/2]`` and ``v_i = A[i + n/2, :n/2]``:
``X[i] ∝ α_i u_i + β_i v_i`` for one unknown ratio ``(α_i : β_i)`` per row.
(The same for ``Y`` on the right half.)

``X`` must itself be a butterfly: rows ``p`` and ``p + s`` (``p mod 2s < s``) are
proportional on every aligned block of ``s`` columns. On a block, "proportional" is the
vanishing of all 2x2 minors, bilinear in ``(α_p, β_p)`` and ``(α_{p+s}, β_{p+s})`` with
real coefficients; by Binet-Cauchy their 4x4 Gram matrix needs only the inner products
of the four real block vectors. Its null space must have dimension >= 2 (``w`` and its
conjugate solve it) -- the rank test that rejects a wrong permutation. Each edge
``(p, p + s)`` then gives

* rank 2 (two independent relations): both endpoints' ratios up to conjugation, as the
  complex root of a real quadratic;
* rank 1: a Moebius relation ``(α', β') ∝ N (α, β)``, propagated from pinned rows along
  the strongest edges; a component with no pinned row is solved symbolically from one
  seed, its cycles giving the quadratic (a random unitary butterfly);
* rank 0: nothing (e.g. real stride-1 twiddles of an FFT).

Rows with ``u_i ∥ v_i`` are real rows of ``X`` (row 0 of a DFT). Conjugating a whole row
of ``X`` preserves ``Re(d X[i])`` (with ``d`` conjugated), so the relative conjugations are
fixed last, by a search along the edges that keeps the rank-one residual small. Then
``d`` follows from a 2-unknown least-squares fit per row, ``C`` is assembled and handed to
:func:`solvers.identify` with known (identity) permutations, which checks every level and
returns the twiddles. The error is measured against ``M``.

Permutations
------------
Given (``row_perm``/``col_perm``) or searched: ``P_out`` the identity or the bit
reversal, ``P_in`` each of the 8 top-level reorderings of the permutation family
(:func:`solvers._permfamily.top_level`), with or without a bit reversal before it, and
both stride orders: 64 candidates, Makhoul's reordering first. A wrong candidate fails the
rank test at once, in a few ms at n = 256.

Limits: the top-level twiddles of a row pair must differ in phase (``d1/d3`` not real);
the Hartley matrix ``Re((1 + i) F)`` has ``d1 = d3`` and is left to the gradient solver.
At n <= 8 the real part does not determine the butterfly; any consistent one is returned.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ._result import Result, square_target

# The four wedges of (alpha u + beta v) ^ (alpha' u' + beta' v') for vectors (u, v, u', v'):
# coefficients of alpha alpha', beta alpha', alpha beta', beta beta'.
_PAIRS = ((0, 2), (1, 2), (0, 3), (1, 3))
_ROT = np.array([[0.0, 1.0], [-1.0, 0.0]])  # a ⟂ b (bilinear)  <=>  a ∝ _ROT b
_FALLBACK = np.array([1.0, 1j])  # any non-real ratio, where the data leave it free


@dataclass(frozen=True)
class RealPartConfig:
    """Settings of :func:`identify_real`.

    Attributes
    ----------
    tol : float or None
        Status ``exact`` when the final relative error is <= tol.
        Default: 1e-12 for float64 input, 1e-5 for float32.
    detect_tol : float or None
        Threshold of the rank tests (square root of the relative Gram eigenvalue that must
        vanish) and of the real-row test. Default 1e-6 (float64), 1e-3 (float32).
    row_perm, col_perm : None, "identity", or an index vector
        Known permutations (``(P x)[i] = x[p[i]]``). ``None``: searched over the candidates
        in the module doc.
    chain : None, "B" or "B*"
        The butterfly's stride order (increasing, decreasing). ``None``: both are tried.
    """

    tol: float | None = None
    detect_tol: float | None = None
    row_perm: object = None
    col_perm: object = None
    chain: str | None = None


def _wedge_gram(H: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the four wedges from inner products H (..., 4, 4):
    <a^b, c^d> = (a.c)(b.d) - (a.d)(b.c)."""
    G = H.new_zeros(H.shape[:-2] + (4, 4))
    for k, (a, b) in enumerate(_PAIRS):
        for l, (c, d) in enumerate(_PAIRS):
            G[..., k, l] = H[..., a, c] * H[..., b, d] - H[..., a, d] * H[..., b, c]
    return G


def _bilinear(k: np.ndarray) -> np.ndarray:
    """The 2x2 matrix K with (α, β) K (α', β')^T = the relation k over the four wedges."""
    return np.array([[k[0], k[2]], [k[1], k[3]]])


def _quadratic(Q: np.ndarray) -> np.ndarray:
    """Coefficients (z^2, z, 1) of v^T Q v with v = (z, 1)."""
    return np.array([Q[0, 0], Q[0, 1] + Q[1, 0], Q[1, 1]])


def _complex_root(a: np.ndarray):
    """A root (projective 2-vector) of the real quadratic a, or None if its roots are real."""
    A, B, C = (float(t) for t in a)
    disc = 4 * A * C - B * B
    if not disc > 1e-12 * (A * A + B * B + C * C):
        return None
    if abs(A) >= abs(C):
        return np.array([complex(-B, math.sqrt(disc)) / (2 * A), 1.0])
    return np.array([1.0, complex(-B, math.sqrt(disc)) / (2 * C)])


def _common_root(quads, weights):
    """The complex root shared by several real quadratics (weighted least squares)."""
    Q = np.array(quads)
    norms = np.linalg.norm(Q, axis=1, keepdims=True)
    ok = np.isfinite(Q).all(1) & (norms[:, 0] > 0)
    if not ok.any():
        return None
    Q = Q[ok] / norms[ok] * np.asarray(weights)[ok, None]
    _, vec = np.linalg.eigh(Q.T @ Q)
    return _complex_root(vec[:, 2])


def _unit(x):
    nrm = float(np.sqrt((np.abs(x) ** 2).sum()))
    return x / nrm if math.isfinite(nrm) and nrm > 1e-300 else _FALLBACK.copy()


def _rank1_residual(x: np.ndarray, y: np.ndarray, s: int) -> float:
    """Relative distance of the 2 x s blocks [x; y] from rank one (complex)."""
    x, y = x.reshape(-1, s), y.reshape(-1, s)
    p, r = (np.abs(x) ** 2).sum(1), (np.abs(y) ** 2).sum(1)
    c = np.abs((x * y.conj()).sum(1)) ** 2
    return math.sqrt(max(0.0, (p * r - c).clip(min=0).sum()) / max(((p + r) ** 2).sum(), 1e-300))


def _edges(U, V, real, detect_tol):
    """Relations between rows of the half-problem, per stride. Returns (nbrs, pins, worst)."""
    m = U.shape[0]
    info_tol = 100 * detect_tol**2
    nbrs = [[] for _ in range(m)]  # (weight, other row, stride, matrix N: other ∝ ROT N v)
    pins = [([], []) for _ in range(m)]  # quadratics pinning a row, and their weights
    worst = 0.0
    for s in reversed([1 << k for k in range(1, m.bit_length() - 1)]):  # m/2 .. 2 (1 is vacuous)
        r = torch.arange(m)
        p = r[(r % (2 * s)) < s]
        Wv = torch.stack([U[p], V[p], U[p + s], V[p + s]], 1).reshape(len(p), 4, m // s, s).transpose(1, 2)
        H = Wv @ Wv.transpose(-1, -2)
        scale = (H.diagonal(dim1=-2, dim2=-1).sum(-1) ** 2).sum(-1).clamp_min(1e-300)
        lam, vec = torch.linalg.eigh(_wedge_gram(H).sum(1))
        lam = (lam / scale[:, None]).numpy()
        vec = vec.numpy()
        for e, a in enumerate(p.tolist()):
            b = a + s
            if real[a] or real[b] or lam[e, 3] <= info_tol:
                continue
            worst = max(worst, float(lam[e, 1]))
            if worst > detect_tol**2:  # a wrong candidate: stop at the first failed stride
                return nbrs, pins, math.sqrt(worst)
            K1 = _bilinear(vec[e, :, 3])
            nbrs[a].append((float(lam[e, 3]), b, s, K1.T))
            nbrs[b].append((float(lam[e, 3]), a, s, K1))
            if lam[e, 2] > info_tol:  # two relations: each endpoint pinned up to conjugation
                K2 = _bilinear(vec[e, :, 2])
                w = float(lam[e, 2])
                pins[a][0].append(_quadratic(np.outer(K1[:, 0], K2[:, 1]) - np.outer(K1[:, 1], K2[:, 0])))
                pins[a][1].append(w)
                pins[b][0].append(_quadratic(np.outer(K1[0], K2[1]) - np.outer(K1[1], K2[0])))
                pins[b][1].append(w)
    return nbrs, pins, math.sqrt(max(worst, 0.0))


def _components(nbrs, real):
    m = len(nbrs)
    seen, comps = [False] * m, []
    for r0 in range(m):
        if real[r0] or seen[r0]:
            continue
        seen[r0], members, stack = True, [r0], [r0]
        while stack:
            for _, r2, _, _ in nbrs[stack.pop()]:
                if not seen[r2]:
                    seen[r2] = True
                    members.append(r2)
                    stack.append(r2)
        comps.append(members)
    return comps


def _propagate(start, nbrs, assign):
    """Strongest edges first (Prim): ``assign(row, parent, N)`` for every row reached."""
    heap, count, done = [], 0, set(start)

    def push(r):
        nonlocal count
        for w, r2, _, N in nbrs[r]:
            if r2 not in done:
                heapq.heappush(heap, (-w, count, r2, r, N))
                count += 1

    for r in start:
        push(r)
    while heap:
        _, _, r2, r, N = heapq.heappop(heap)
        if r2 in done:
            continue
        done.add(r2)
        assign(r2, r, N)
        push(r2)


def _solve_half(U: torch.Tensor, V: torch.Tensor, detect_tol: float):
    """Complex rows ``X[i] = α_i u_i + β_i v_i`` making X a butterfly (up to row scales).

    Returns (X as a complex128 tensor, or None, diagnostics dict)."""
    m = U.shape[0]
    nu, nv = U.norm(dim=-1, keepdim=True), V.norm(dim=-1, keepdim=True)
    # Rows at the rounding level of the matrix are zero (an exact zero computed in floating
    # point, e.g. cos + sin at 3pi/4): normalised, they would be noise of unit size.
    floor = 1e-12 * float(torch.maximum(nu.max(), nv.max()))
    zero_u, zero_v = (nu[:, 0] <= floor), (nv[:, 0] <= floor)
    U = torch.where(zero_u[:, None], 0.0, U / nu.clamp_min(1e-300))
    V = torch.where(zero_v[:, None], 0.0, V / nv.clamp_min(1e-300))
    # Real rows of X: u ∥ v (or one of them zero) -- X[i] is then that real row.
    real = (((1 - (U * V).sum(-1).square()).clamp_min(0).sqrt() < detect_tol) | zero_u | zero_v).tolist()
    diag = {"real_rows": sum(real)}
    if m > 1 and all(real):
        diag["reason"] = "every row pair's real parts are parallel: the top level does not determine the imaginary part"
        diag["parallel"] = True
        return None, diag
    nbrs, pins, worst = _edges(U, V, real, detect_tol)
    diag["edge_residual"] = worst
    if worst > detect_tol:
        diag["reason"] = f"rank test failed: edge residual {worst:.2e} > detect_tol {detect_tol:.0e}"
        return None, diag
    v = [None] * m  # every non-real row is set below: pinned, propagated or from its cycles
    for r in range(m):
        if pins[r][0]:  # (edges, and so pins, join non-real rows only)
            v[r] = _common_root(*pins[r])
    comps = _components(nbrs, real)
    for members in comps:
        pinned = [r for r in members if v[r] is not None]
        if pinned:
            def assign(r2, r, N):
                v[r2] = _unit(_ROT @ (N @ v[r]))

            _propagate(pinned, nbrs, assign)
            continue
        # No pinned row: express every row's ratio as a real 2x2 map of the seed's, then the
        # edges off the spanning tree (cycles) give quadratics in the seed's ratio.
        maps, tree = {members[0]: np.eye(2)}, set()

        def assign_map(r2, r, N):
            T = _ROT @ N @ maps[r]
            maps[r2] = T / max(np.linalg.norm(T), 1e-300)
            tree.add((min(r, r2), max(r, r2)))

        _propagate([members[0]], nbrs, assign_map)
        quads, weights = [], []
        for r in members:
            for w, r2, _, N in nbrs[r]:
                if r < r2 and (r, r2) not in tree:
                    P, R = maps[r2], _ROT @ N @ maps[r]
                    quads.append(_quadratic(np.outer(P[0], R[1]) - np.outer(P[1], R[0])))
                    weights.append(w)
        root = _common_root(quads, weights) if quads else None
        root = _FALLBACK if root is None else root
        for r in members:
            v[r] = _unit(maps[r] @ root)
    coef = np.array([([0.0, 1.0] if zero_u[r] else [1.0, 0.0]) if real[r] else v[r] for r in range(m)], dtype=complex)
    X = coef[:, :1] * U.numpy() + coef[:, 1:] * V.numpy()
    # Relative conjugations, searched along the edges (each component has one free choice).
    flip = [None] * m
    for members in comps:
        flip[members[0]] = False
        stack = [members[0]]
        while stack:
            r = stack.pop()
            xr = X[r].conj() if flip[r] else X[r]
            for _, r2, s, _ in nbrs[r]:
                if flip[r2] is None:
                    flip[r2] = _rank1_residual(xr, X[r2].conj(), s) < _rank1_residual(xr, X[r2], s)
                    stack.append(r2)
    for r in range(m):
        if flip[r]:
            X[r] = X[r].conj()
    return torch.from_numpy(X), diag


def _lift(A: torch.Tensor, detect_tol: float):
    """A complex increasing-stride butterfly C with Re(C) = A (float64), or (None, diagnostics)."""
    n = A.shape[0]
    if n == 1:
        return A.to(torch.complex128), {}
    h = n // 2
    C = torch.empty(n, n, dtype=torch.complex128)
    diags = {}
    for c, name in enumerate(("left", "right")):
        cols = slice(c * h, (c + 1) * h)
        U, V = A[:h, cols], A[h:, cols]
        X, diag = _solve_half(U, V, detect_tol)
        diags[name] = diag
        if X is None and diag.get("parallel"):
            # The top level's twiddle pairs share their phase (d1/d3 real: the Hartley
            # matrix, an FFT's first stage): V = diag(c) U, and the imaginary part lives
            # one level down -- lift U (or V, if U has a zero row) as a butterfly of size h.
            base_is_u = bool(U.norm(dim=1).min() >= V.norm(dim=1).min())
            base, other = (U, V) if base_is_u else (V, U)
            sub, sub_diags = _lift(base, detect_tol)
            diag["lifted_below"] = sub_diags
            if sub is None:
                return None, diags
            ratio = (other * base).sum(1) / (base * base).sum(1).clamp_min(1e-300)
            C[(slice(0, h) if base_is_u else slice(h, n)), cols] = sub
            C[(slice(h, n) if base_is_u else slice(0, h)), cols] = ratio[:, None] * sub
            continue
        if X is None:
            return None, diags
        # the top-level twiddles: Re(d X[i]) = target row, two real unknowns per row
        basis = torch.stack([X.real, -X.imag], -1)  # (h, h, 2)
        for rows, target in ((slice(0, h), U), (slice(h, n), V)):
            # gelsd (SVD): the default gelsy reads uninitialised memory on rank-deficient
            # systems -- here every real row, whose basis has a zero column -- and returned
            # a zero solution about once per thousand calls (pytorch/pytorch#71222).
            sol = torch.linalg.lstsq(basis, target[..., None], driver="gelsd").solution[..., 0]
            C[rows, cols] = torch.complex(sol[:, 0], sol[:, 1])[:, None] * X
    miss = float(torch.linalg.matrix_norm(C.real - A) / torch.linalg.matrix_norm(A).clamp_min(1e-300))
    if miss > detect_tol:  # an inconsistent choice somewhere (a degenerate row): not this candidate
        diags["reason"] = f"the lifted matrix's real part misses the target by {miss:.2e}"
        return None, diags
    return C, diags


def _candidates(n, row_perm, col_perm, chain):
    """(label, P_out, P_in, chain, transposed): the given permutations, or the searched
    family; ``transposed``: the candidate is for ``M^T`` (the DCT-III is the DCT-II's
    transpose, its reordering on the output side), searched only when neither
    permutation is given."""
    from kfit import Permutation

    from ._permfamily import top_level
    from .identify import _parse_perm

    P_out = _parse_perm(row_perm, n, "row_perm")
    P_in = _parse_perm(col_perm, n, "col_perm")
    chains = ("B", "B*") if chain is None else (chain,)
    ident, rev = Permutation.identity(n), Permutation.bit_reversal(n)
    outs = [("P_out: given", P_out)] if P_out is not None else [("P_out: identity", ident), ("P_out: bitrev", rev)]
    if P_in is not None:
        ins = [("P_in: given", P_in)]
    else:
        tops = sorted(top_level(n), key=lambda t: t[0] != "sep0+rev2_0")  # Makhoul's first
        ins = [(f"P_in: bitrev·{name}", rev @ Permutation(p)) for name, p in tops]
        ins += [(f"P_in: {name}", Permutation(p)) for name, p in tops]
    # Measured: the DCT-II, DST-II, DCT-IV and DST-IV are Re(B · bitrev·Q) with Makhoul's Q,
    # the Hartley matrix Re(B · bitrev), the DCT-III and DST-III their transposes: first.
    likely = ("B, P_out: identity, P_in: bitrev·sep0+rev2_0", "B, P_out: identity, P_in: bitrev·id")
    out = []  # (label without the transpose, candidate); the sort is stable
    # given permutations are for M itself: no candidates for M^T then
    for transposed in (False, True) if P_out is None and P_in is None else (False,):
        for ch in chains:
            for o_name, Po in outs:
                for i_name, Pi in ins:
                    label = f"{ch}, {o_name}, {i_name}"
                    shown = f"transpose of ({label})" if transposed else label
                    out.append((label, (shown, Po, Pi, ch, transposed)))
    return [cand for label, cand in sorted(out, key=lambda c: c[0] not in likely)]


def real_problem(M, cfg, what: str, otherwise: str):
    """The checked input of a solver for ``M = Re(P_out · B · P_in)``: ``(M, A0, single, tol,
    candidates)``, ``M`` as a torch matrix, ``A0`` its float64 CPU copy, ``tol`` ``cfg.tol`` or
    the precision's default, the candidates of :func:`_candidates` for ``cfg``'s
    ``row_perm``, ``col_perm`` and ``chain``. ``what`` and ``otherwise`` word the error for a
    complex ``M`` (what the solver does, what to use instead)."""
    if cfg.chain not in (None, "B", "B*"):
        raise ValueError(f"chain must be None, 'B' or 'B*', got {cfg.chain!r}")
    M, n, single, tol = square_target(M, cfg.tol)
    if M.is_complex():
        raise ValueError(
            f"M is complex ({M.dtype}) but {what} the real part of a butterfly: pass a real matrix, or use "
            f"{otherwise} for a complex one"
        )
    return M, M.to(torch.float64).cpu(), single, tol, _candidates(n, cfg.row_perm, cfg.col_perm, cfg.chain)


def candidate_target(A0: torch.Tensor, cand) -> torch.Tensor:
    """The real matrix ``A`` with ``Re(C) = A`` for an increasing-stride butterfly ``C`` that a
    candidate ``(label, P_out, P_in, chain, transposed)`` of :func:`_candidates` implies:
    ``P_out^-1 · M · P_in^-1`` (of ``M^T`` if transposed), transposed for ``chain="B*"``."""
    _, P_out, P_in, chain, transposed = cand
    A = (A0.T if transposed else A0)[P_out.inverse().perm][:, P_in.perm]
    return A.T.contiguous() if chain == "B*" else A


def assemble(C: torch.Tensor, cand, detect_tol: float):
    """``(KMatrix, identify status)``: the real-output K-matrix of ``M`` from the complex
    butterfly ``C`` (dense, increasing strides) found for ``candidate_target(M, cand)``; the
    twiddles are read off ``C`` by :func:`solvers.identify` with identity permutations."""
    from kfit import KMatrix

    from .identify import _chain, identify

    _, P_out, P_in, chain, transposed = cand
    # known (identity) permutations: identify returns KMatrix([B]), never a routing
    r = identify(C, row_perm="identity", col_perm="identity", detect_tol=detect_tol)
    (B,) = r.kmatrix.factors
    if chain == "B*":
        B = B.transpose()
    if transposed:  # M = Re(P_out B P_in)^T = Re(P_in^T B^T P_out^T)
        P_out, B, P_in = P_in.inverse(), B.transpose(), P_out.inverse()
    return KMatrix(_chain(P_out, B, P_in), real_output=True), r.status


def identify_real(M, config: RealPartConfig | None = None, **overrides) -> Result:
    """Identify ``M = Re(P_out · B · P_in)`` (``B`` a complex butterfly) in closed form.

    Parameters
    ----------
    M : array-like, torch.Tensor or path to a .npy file
        Real, square, power-of-two size, float32 or float64.
    config : RealPartConfig, optional
        Settings; keyword arguments override its fields.

    Returns
    -------
    Result
        ``kmatrix`` is ``KMatrix([P_out, B, P_in], real_output=True)`` (identity
        permutations omitted; ``B`` with decreasing strides for ``chain="B*"``);
        ``status`` ``"exact"`` (error <= tol), ``"approximate"`` (the rank tests passed,
        the error is above tol) or ``"not_in_class"`` (no candidate passed; ``kmatrix`` is
        then the closest candidate that got through, or None).
        ``info`` holds the candidate (permutations, stride order), how many were tried,
        and the rank-test diagnostics.
    """
    from kfit._error import relative_error

    t0 = time.perf_counter()
    cfg = replace(config or RealPartConfig(), **overrides)
    M, A0, single, tol, candidates = real_problem(M, cfg, "identify_real recovers", "solvers.identify")
    detect_tol = cfg.detect_tol if cfg.detect_tol is not None else (1e-3 if single else 1e-6)
    best, tried, rejected = None, 0, {}
    for cand in candidates:
        label = cand[0]
        tried += 1
        C, diags = _lift(candidate_target(A0, cand), detect_tol)
        if C is None:
            reasons = [diags["reason"]] if "reason" in diags else [d["reason"] for d in diags.values() if "reason" in d]
            rejected[label] = reasons[0] if reasons else "rejected"
            continue
        K, id_status = assemble(C, cand, detect_tol)
        err = relative_error(K, A0)
        found = (err.value, err.method, K, label, "B" if K.butterflies[0].increasing else "B*", diags, id_status)
        if best is None or err.value < best[0]:
            best = found
        if err.value <= tol:
            break
    info = {"candidates_tried": tried, "detect_tol": detect_tol}
    if best is None:
        info["rejected"] = rejected
        first = next(iter(rejected.values()), "no candidate")
        return Result(
            kmatrix=None, error=float("inf"), error_method="none", status="not_in_class", solver="identify_real",
            seconds=time.perf_counter() - t0, dtype=str(M.dtype).replace("torch.", ""), tol=tol,
            message=f"not of the form Re(P·B·P): every one of {tried} candidates failed (first: {first})", info=info,
        )
    err, method, K, label, chain, diags, id_status = best
    info.update(candidate=label, chain=chain, diagnostics=diags, lifted_identify_status=id_status)
    if len(rejected) < 16:
        info["rejected"] = rejected
    if err <= tol:
        status, message = "exact", f"identified Re(P·B·P) ({label}) with error {err:.2e} <= tol {tol:g}"
    elif id_status == "not_in_class":
        status = "not_in_class"
        message = f"not of the form Re(P·B·P): the closest candidate ({label}) has error {err:.2e}"
    else:
        status = "approximate"
        message = f"structure identified ({label}) but the error {err:.2e} is above tol {tol:g}: noise in the target?"
    if single:
        K = K.to(torch.float32)  # the precision: the butterfly stays complex (complex64)
    return Result(
        kmatrix=K, error=err, error_method=method, status=status, solver="identify_real",
        seconds=time.perf_counter() - t0, dtype=str(M.dtype).replace("torch.", ""), tol=tol,
        message=message, info=info,
    )
