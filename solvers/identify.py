r"""Closed-form identification: recover ``M = P_out · B · P_in`` from the matrix alone.

The algorithm (DESIGN.md, "Identification")
--------------------------------------------
Write ``B = B_top · diag(X, Y)`` where ``B_top`` (stride n/2) couples rows ``(i, i+n/2)``
and ``X, Y`` are butterflies of size n/2. Then for each row pair the ``2 x n/2`` block
of ``M`` over each column half is rank one: ``[d1; d3] ⊗ X[i, :]`` and ``[d2; d4] ⊗ Y[i, :]``.
Solving all of these (closed-form 2x2 Hermitian eigenproblems, batched) gives the top
level's twiddles and the rows of ``X`` and ``Y``; the recursion runs on all blocks of one
depth at once, so the total cost is O(n^2), the size of the input.

Hidden permutations are recovered on the way. At each depth all blocks share one row
space (the pair index of the level above) and each has its own columns:

1. *One pair.* For the strongest row ``a0`` and every candidate row ``b``, the 2-vectors
   ``(A_j[a0, c], A_j[b, c])`` of a true pair point along exactly two directions in every
   block ``j`` (n/2 columns each). The first candidate that passes gives, per block, the
   column partition ``S_j | T_j`` (the two directions).
2. *All pairs.* Partner rows are parallel on ``S_j``: a scale- and phase-invariant key
   (a few random projections of the row restricted to one ``S_j``, normalised) is equal
   for partners; mutual nearest neighbours of the keys (a k-d tree) give the pairing.
3. *Check.* The rank-one residual energy of every ``(pair, block, half)`` decides: the
   level passes when ``sqrt(sum residual / total) <= detect_tol``.

Normalisation of the result
---------------------------
The factorization is unique only up to diagonal rescalings between levels (and, with
permutations, up to the symmetries of the structure). kfit fixes the rescalings so that
in every level except the first-applied one (stride 1) each column ``(t[0, h], t[1, h])``
of every 2x2 block has unit 2-norm and its first entry real and positive (the second
entry, if the first is below 1e-6); all the scale is carried by the stride-1 level.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from kfit._error import _fro

from ._result import Result, square_target


@dataclass(frozen=True)
class IdentifyConfig:
    """Settings of :func:`identify`.

    Attributes
    ----------
    tol : float or None
        Status ``exact`` when the final relative error is <= tol.
        Default: 1e-12 for float64/complex128 input, 1e-5 for float32/complex64.
    detect_tol : float or None
        Threshold of the rank-one tests (relative residual per level and relative
        distance of a 2-vector from a direction). Loose enough for noise, tight enough to
        reject matrices outside the class. Default 1e-6 (float64), 1e-3 (float32).
    row_perm, col_perm : None, "identity", or an index vector
        Known permutations. ``None``: recover it from the matrix. ``"identity"``: there is
        none. An index vector ``p`` (kfit's convention, ``(P x)[i] = x[p[i]]``): ``M`` is
        taken as ``P_out · B · P_in`` with that factor fixed. When both are given, only the
        butterfly is solved.
    max_tries : int
        Candidate partner rows tried per level before declaring ``not_in_class``.
    seed : int
        Seed of the random projections used for the row keys (results do not depend on it
        for matrices in the class).
    """

    tol: float | None = None
    detect_tol: float | None = None
    row_perm: object = None
    col_perm: object = None
    max_tries: int = 4
    seed: int = 0


class _LevelFailure(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _abs2(x):
    """|x|^2 without the square root of abs() (the hot spot for complex input)."""
    return x.real.square() + x.imag.square() if x.is_complex() else x.square()


def _sumsq(x, dim):
    """``_abs2(x).sum(dim)`` as a norm reduction: no full-size temporaries (~10-20x faster
    on large complex blocks); the square of the root costs an ulp or two."""
    return _fro(x, dim).square()


def _top_eigvec(p, q, r):
    """Unit top eigenvector and smallest eigenvalue of [[p, q], [conj q, r]] (batched)."""
    half_diff = (p - r) / 2
    lam = (p + r) / 2 + torch.sqrt(half_diff**2 + q.abs() ** 2)
    e1 = torch.stack((q, (lam - p).to(q.dtype)), -1)
    e2 = torch.stack(((lam - r).to(q.dtype), q.conj()), -1)
    use1 = e1.abs().pow(2).sum(-1) >= e2.abs().pow(2).sum(-1)
    u = torch.where(use1[..., None], e1, e2)
    nrm = u.abs().pow(2).sum(-1).sqrt()
    fallback = torch.zeros_like(u)
    fallback[..., 0] = 1
    degenerate = nrm <= 1e-300
    u = torch.where(degenerate[..., None], fallback, u / torch.where(degenerate, 1.0, nrm)[..., None])
    det = (p * r - q.abs() ** 2).clamp_min(0)
    lam_min = torch.where(lam > 0, det / torch.where(lam > 0, lam, 1.0), torch.zeros_like(lam))
    return u, lam_min


def _fix_phase(u):
    """Make the first entry (or the second, if the first is ~0) real and positive."""
    ref = torch.where(u[..., 0].abs() >= 1e-6, u[..., 0], u[..., 1])
    mag = ref.abs()
    phase = torch.where(mag > 0, ref / torch.where(mag > 0, mag, 1.0), torch.ones_like(ref))
    return u * phase.conj()[..., None]


def _partner_scan(A, a0, detect_tol, others=None, chunk=256):
    """Yield ``(b, T_mask)`` for candidate partners of row ``a0``, best first per chunk.

    A: (nb, m, m). T_mask: (nb, m) bool, True for the columns of the second direction.
    """
    nb, m, _ = A.shape
    x0 = A[:, a0, :]  # (nb, m)
    c1 = x0.abs().argmax(-1)  # reference column per block
    x0c1 = x0.gather(-1, c1[:, None])  # (nb, 1)
    if others is None:
        others = torch.cat([torch.arange(a0), torch.arange(a0 + 1, m)]).to(A.device)
    half = m // 2
    x0_ss = _sumsq(x0, -1)[None]  # (1, nb)
    for start in range(0, others.numel(), chunk):
        bs = others[start : start + chunk]
        Y = A[:, bs, :].transpose(0, 1)  # (Bc, nb, m)
        # Squared distances throughout: no square roots over the (Bc, nb, m) arrays.
        scale2 = (x0_ss + _sumsq(Y, -1)) / m  # (Bc, nb): mean squared entry
        thr2 = detect_tol**2 * scale2[..., None]
        Yc1 = Y.gather(-1, c1[None, :, None].expand(Y.shape[0], nb, 1))
        w1 = _abs2(x0c1)[None] + _abs2(Yc1)  # (Bc, nb, 1), squared
        d1 = _abs2(x0c1[None] * Y - x0[None] * Yc1) / w1.clamp_min(1e-300)
        # The second direction: the column farthest from the first line (not a thresholded
        # choice, so nearly parallel directions are still told apart by the argmin below).
        c2 = d1.argmax(-1, keepdim=True)
        x0c2 = x0[None].expand(Y.shape[0], nb, m).gather(-1, c2)
        Yc2 = Y.gather(-1, c2)
        w2 = _abs2(x0c2) + _abs2(Yc2)
        d2 = _abs2(x0c2 * Y - x0[None] * Yc2) / w2.clamp_min(1e-300)
        near = torch.minimum(d1, d2)
        covered = (near <= thr2).all(-1).all(-1)  # (Bc,): every column on one of the lines
        # Assign each column to its nearer direction; the split must be exactly half/half.
        T = d2 < d1
        balanced = (T.sum(-1) == half).all(-1)
        ok = covered & balanced
        if not bool(ok.any()):
            continue
        quality = (near / scale2[..., None].clamp_min(1e-300)).amax((-1, -2))
        idx = torch.nonzero(ok).flatten()
        for i in idx[torch.argsort(quality[idx])].tolist():
            yield int(bs[i]), T[i]


def _pair_rows(A, T_mask, rng):
    """Pair all rows: partners are parallel on each column half. Returns (m/2, 2) or None."""
    from scipy.spatial import cKDTree

    nb, m, _ = A.shape
    half = m // 2
    # Key of a row: its projections on S_0 and on T_0, each normalised for scale and phase
    # (partners are parallel on each half); a half where a row vanishes gives a zero key.
    Z = A[0].cpu().numpy()  # (m, m): block 0 only, rows shared by all blocks
    tm = T_mask[0].cpu().numpy()
    k = min(4, half)
    cplx = np.iscomplexobj(Z)
    # Both halves' random projections in one product with Z (zero rows for the other
    # half's columns): Z[:, cols] would copy half the matrix twice.
    G = np.zeros((m, 2 * k), dtype=Z.dtype)
    ws = []
    for j, cols in enumerate((np.flatnonzero(~tm), np.flatnonzero(tm))):
        G[cols, j * k : (j + 1) * k] = rng.standard_normal((half, k)) + (1j * rng.standard_normal((half, k)) if cplx else 0)
        ws.append(rng.standard_normal(k) + (1j * rng.standard_normal(k) if cplx else 0))
    projected = Z @ G
    parts = []
    for j, w in enumerate(ws):
        keys = projected[:, j * k : (j + 1) * k]
        s = keys @ w
        mag = np.abs(s)
        unit = np.where(mag > 0, np.conj(s) / np.where(mag > 0, mag, 1), 0)
        keys = keys * unit[:, None]
        nrm = np.linalg.norm(keys, axis=1, keepdims=True)
        parts.append(np.where(nrm > 0, keys / np.where(nrm > 0, nrm, 1), 0))
    keys = np.concatenate(parts, axis=1)
    pts = np.concatenate([keys.real, keys.imag], axis=1) if cplx else keys
    _, nn = cKDTree(pts).query(pts, k=2)
    rows = np.arange(m)
    partner = np.where(nn[:, 0] == rows, nn[:, 1], nn[:, 0])  # ties at distance 0 come in any order
    if np.any(partner == rows) or np.any(partner[partner] != rows):
        return None
    a = rows[rows < partner]
    return torch.as_tensor(np.stack([a, partner[a]], axis=1), device=A.device)


def _split(A, pairs, T_mask, last):
    """Rank-one split of every (block, pair, half). Returns twiddles, new blocks, residual, total."""
    nb, m, _ = A.shape
    half = m // 2
    order = torch.argsort(T_mask.to(torch.int8), dim=-1, stable=True)
    if nb == 1:  # the top depth (n^2 entries): 1-D index_select moves far less index data
        rows = A[0].index_select(0, pairs.reshape(-1))  # whole rows: a memcpy each
        # columns: gather with a broadcast index (3x faster than index_select along dim 1)
        R = torch.gather(rows, 1, order[0].expand(m, m)).reshape(1, half, 2, 2, half)
    else:
        R = A[:, pairs.reshape(-1), :].reshape(nb, half, 2, m)  # rows (a_k, b_k)
        R = R.gather(-1, order[:, None, None, :].expand(nb, half, 2, m)).reshape(nb, half, 2, 2, half)
    X = R.permute(0, 1, 3, 2, 4)  # (nb, k, h, row, c)
    if last:
        total = _sumsq(X, tuple(range(X.dim())))  # 2x1 columns: the block itself is the twiddle, nothing left below
        u = X[..., 0]  # (nb, k, h, row)
        return u.transpose(-1, -2).reshape(nb * half, 2, 2), None, X.new_zeros(()).real, total, order
    p = _sumsq(X[..., 0, :], -1)
    r = _sumsq(X[..., 1, :], -1)
    q = (X[..., 0, :] * X[..., 1, :].conj()).sum(-1)
    total = (p + r).sum()
    u, lam_min = _top_eigvec(p, q, r)
    u = _fix_phase(u)
    uc = u.conj()[..., None]
    # v = u^H X, written straight into the next depth's (nb, h, k, c) layout through a
    # permuted view (no reordering copy), the second term fused in place (no temporary).
    out = X.new_empty((nb, 2, half, half))
    v = out.permute(0, 2, 1, 3)  # (nb, k, h, c)
    torch.mul(uc[..., 0, :], X[..., 0, :], out=v)
    v.addcmul_(uc[..., 1, :], X[..., 1, :])
    tw = u.transpose(-1, -2).reshape(nb * half, 2, 2)  # [row, half]
    new_blocks = out.reshape(2 * nb, half, half)
    return tw, new_blocks, lam_min.sum(), total, order


def _natural(nb, m, device):
    half = m // 2
    pairs = torch.stack([torch.arange(half), torch.arange(half, m)], 1).to(device)
    T_mask = (torch.arange(m, device=device) >= half).expand(nb, m)
    return pairs, T_mask


def _identify_butterfly(A, search_rows, search_cols, detect_tol, max_tries, seed):
    """Core recursion on a square (n, n) float64/complex128 tensor.

    Returns (twiddle (L, n/2, 2, 2), perm_out, perm_in, failed_depth, reason, residuals).
    """
    n = A.shape[0]
    L = n.bit_length() - 1
    device = A.device
    rng = np.random.default_rng(seed)
    blocks = A[None]  # (1, n, n)
    cols = torch.arange(n, device=device)[None]  # original column ids, per block
    levels = []
    residuals = []
    failed_depth, reason = None, None
    for d in range(L):
        nb, m, _ = blocks.shape
        last = m == 2
        candidates = []
        if failed_depth is None and (search_rows or search_cols) and m > 2:
            candidates = _candidate_splits(blocks, detect_tol, max_tries, rng, search_rows, search_cols)
        else:
            candidates = [_natural(nb, m, device)]
        chosen = None
        for pairs, T_mask in candidates:
            tw, new_blocks, resid, total, order = _split(blocks, pairs, T_mask, last)
            rel = math.sqrt(max(resid.item(), 0.0) / total.item()) if total.item() > 0 else 0.0
            if failed_depth is not None or rel <= detect_tol:
                chosen = (pairs, tw, new_blocks, rel, order)
                break
            if chosen is None or rel < chosen[3]:
                chosen = (pairs, tw, new_blocks, rel, order)
        if chosen is None:  # no candidate split at all: fall back to the natural one
            pairs, T_mask = _natural(nb, m, device)
            tw, new_blocks, resid, total, order = _split(blocks, pairs, T_mask, last)
            rel = math.sqrt(max(resid.item(), 0.0) / total.item()) if total.item() > 0 else 0.0
            chosen = (pairs, tw, new_blocks, rel, order)
            if failed_depth is None:
                failed_depth, reason = d, "no row pairing splits the columns into two rank-one halves"
        pairs, tw, new_blocks, rel, order = chosen
        residuals.append(rel)
        if failed_depth is None and rel > detect_tol:
            failed_depth = d
            reason = f"relative rank-one residual {rel:.2e} > detect_tol {detect_tol:.0e}"
        # rows: pair k = (a_k, b_k) of this depth's rows is row k of the next depth
        half = m // 2
        to_k = torch.empty(m, dtype=torch.int64, device=device)
        bit = torch.zeros(m, dtype=torch.int64, device=device)
        k = torch.arange(half, device=device)
        to_k[pairs[:, 0]] = k
        to_k[pairs[:, 1]] = k
        bit[pairs[:, 1]] = 1
        levels.append((tw.reshape(nb, half, 2, 2), to_k, bit))
        cols = cols.gather(-1, order).reshape(2 * nb, half)
        blocks = new_blocks
    # The position of a row inside its butterfly's row space is fixed only by the pairings
    # below it: compute it bottom-up, then place each level's twiddles at those positions.
    pos_next = torch.zeros(1, dtype=torch.int64, device=device)
    twiddle = [None] * L
    for d in reversed(range(L)):
        tw, to_k, bit = levels[d]
        nb, half = tw.shape[:2]
        placed = torch.empty_like(tw)
        placed[:, pos_next] = tw
        twiddle[L - 1 - d] = placed.reshape(nb * half, 2, 2)
        pos_next = bit * half + pos_next[to_k]
    return torch.stack(twiddle), pos_next, cols.reshape(n), failed_depth, reason, residuals


def _candidate_splits(blocks, detect_tol, max_tries, rng, search_rows, search_cols):
    """Candidate (pairs, T_mask) for one depth, most plausible first (a generator)."""
    nb, m, _ = blocks.shape
    device = blocks.device
    if not search_cols:
        # Columns known (natural halves); rows searched with the known partition.
        _, T_mask = _natural(nb, m, device)
        pairs = _pair_rows(blocks, T_mask, rng)
        if pairs is not None:
            yield pairs, T_mask
        return
    energy = _sumsq(blocks, (0, 2))
    if not search_rows:
        # Rows known (pairs (k, k + m/2)): one known pair gives the column partition.
        pairs, _ = _natural(nb, m, device)
        k = int(energy[: m // 2].argmax())
        partner = torch.tensor([k + m // 2], device=device)
        for _, T_mask in _partner_scan(blocks, k, detect_tol, others=partner):
            yield pairs, T_mask
        return
    tries = 0
    for a0 in torch.argsort(energy, descending=True)[:2].tolist():
        for _, T_mask in _partner_scan(blocks, a0, detect_tol):
            pairs = _pair_rows(blocks, T_mask, rng)
            if pairs is not None:
                yield pairs, T_mask
            tries += 1
            if tries >= max_tries:
                return


def _parse_perm(p, n, name):
    from kfit import Permutation

    if p is None:
        return None
    if isinstance(p, str):
        if p != "identity":
            raise ValueError(f"{name} must be None, 'identity' or an index vector, got {p!r}")
        return Permutation.identity(n)
    perm = p if isinstance(p, Permutation) else Permutation(p)
    if perm.n != n:
        raise ValueError(f"{name} has length {perm.n} but the matrix is {n}x{n}")
    return perm


def _chain(P_out, B, P_in) -> list:
    """The factors ``[P_out, B, P_in]`` with identity permutations left out, the
    permutations in B's real precision."""
    from kfit import Permutation

    identity, dtype = Permutation.identity(B.n), B.twiddle.real.dtype
    factors = [Permutation(P_out.perm, dtype=dtype)] if P_out != identity else []
    factors.append(B)
    if P_in != identity:
        factors.append(Permutation(P_in.perm, dtype=dtype))
    return factors


def identify(M, config: IdentifyConfig | None = None, **overrides) -> Result:
    """Identify ``M = P_out · B · P_in`` (``B`` a butterfly, increasing strides) in closed form.

    Parameters
    ----------
    M : array-like, torch.Tensor or path to a .npy file
        Square, power-of-two size, real or complex, float32 or float64, CPU or GPU.
    config : IdentifyConfig, optional
        Settings; keyword arguments override its fields (``identify(M, tol=1e-10)``).

    A (scaled) permutation matrix is detected first and routed exactly into ``B · B*``
    by :func:`solvers.route_permutation` (error 0).

    Returns
    -------
    Result
        ``kmatrix`` is ``KMatrix([P_out, B, P_in])`` (identity permutations omitted);
        ``status`` is ``"exact"``, ``"approximate"`` or ``"not_in_class"`` (then
        ``info["failed_level"]`` is the level, counted in application order from 0 = stride 1,
        whose rank-one test failed, and ``kmatrix`` the best partial factorization: the
        levels above it identified, the rest completed with natural pairings).
        ``info`` also holds the residual of every level, the permutations, the settings.
    """
    from kfit import Butterfly, KMatrix, Permutation
    from kfit._error import relative_error

    t0 = time.perf_counter()
    cfg = replace(config or IdentifyConfig(), **overrides)
    M, n, single, tol = square_target(M, cfg.tol)
    in_dtype = M.dtype
    detect_tol = cfg.detect_tol if cfg.detect_tol is not None else (1e-3 if single else 1e-6)
    A = M.to(torch.complex128 if M.is_complex() else torch.float64)
    if cfg.row_perm is None and cfg.col_perm is None:
        from .permutation import detect_permutation, route_permutation

        found = detect_permutation(A)
        if found is not None:  # cheapest first: a (scaled) permutation routes exactly
            r = route_permutation(perm=found[0], scales=found[1])
            r.dtype = str(in_dtype).replace("torch.", "")
            r.info["delegated_from"] = "identify"
            r.seconds = time.perf_counter() - t0
            return r

    P_out = _parse_perm(cfg.row_perm, n, "row_perm")
    P_in = _parse_perm(cfg.col_perm, n, "col_perm")
    B0 = A
    if P_out is not None:  # M = P_out B P_in  =>  B P_in = P_out^T M
        B0 = B0[P_out.inverse().perm.to(A.device)]
    if P_in is not None:
        B0 = B0[:, P_in.perm.to(A.device)]  # (M P_in^-1)[:, c] = M[:, p_in[c]]
    tw, perm_out, perm_in, failed_depth, reason, residuals = _identify_butterfly(
        B0, P_out is None, P_in is None, detect_tol, cfg.max_tries, cfg.seed
    )
    t_struct = time.perf_counter() - t0
    found_out = Permutation(perm_out)
    found_in = Permutation(perm_in)
    P_out_total = found_out if P_out is None else (P_out @ found_out)
    P_in_total = found_in if P_in is None else (found_in @ P_in)
    out_dtype = in_dtype if in_dtype.is_complex or in_dtype.is_floating_point else torch.float64
    B = Butterfly(tw.to(torch.complex128 if A.is_complex() else torch.float64), increasing=True)
    K = KMatrix([f.to(A.device) for f in _chain(P_out_total, B, P_in_total)])
    err = relative_error(K, A)
    L = n.bit_length() - 1
    info = {
        "residual_per_level": {L - 1 - d: r for d, r in enumerate(residuals)},
        "row_permutation": P_out_total.perm.tolist() if n <= 4096 else "omitted (n > 4096)",
        "col_permutation": P_in_total.perm.tolist() if n <= 4096 else "omitted (n > 4096)",
        "row_permutation_searched": P_out is None,
        "col_permutation_searched": P_in is None,
        "detect_tol": detect_tol,
        "seconds_structure": t_struct,
        "normalisation": "unit-norm, phase-fixed 2x2 columns in every level but the stride-1 level",
    }
    if failed_depth is not None:
        level = L - 1 - failed_depth
        info["failed_level"] = level
        info["failed_depth"] = failed_depth
        status = "not_in_class"
        message = (
            f"not of the form P·B·P: the rank-one test failed at level {level} "
            f"(stride {1 << level}, depth {failed_depth} from the top): {reason}; "
            f"the partial factorization has error {err.value:.2e}"
        )
    elif err.value <= tol:
        status = "exact"
        message = f"identified P·B·P with error {err.value:.2e} <= tol {tol:g}"
    else:
        status = "approximate"
        message = (
            f"structure identified (all rank-one tests passed at detect_tol {detect_tol:g}) but the "
            f"error {err.value:.2e} is above tol {tol:g}: noise in the target?"
        )
    if out_dtype in (torch.float32, torch.complex64):
        K = K.to(torch.complex64 if K.is_complex else torch.float32)
    return Result(
        kmatrix=K,
        error=err.value,
        error_method=err.method,
        status=status,
        solver="identify",
        seconds=time.perf_counter() - t0,
        dtype=str(in_dtype).replace("torch.", ""),
        tol=tol,
        message=message,
        info=info,
    )
