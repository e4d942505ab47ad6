"""A relaxed family of structured permutations, learned by gradient descent.

The family (after Dao et al., 2019/2020): for every level k (blocks of size n / 2^k,
down to 2), three optional moves applied in this order inside every block:
``sep`` (even entries first, then odd ones), ``rev1`` (reverse the first half),
``rev2`` (reverse the second half). It contains the bit reversal (``sep`` at every
level) and Makhoul's DCT reordering (``sep`` and ``rev2`` at the top level).

Relaxation: each move ``Q`` enters as ``(1 - p) I + p Q`` with ``p = sigmoid(logit)``;
after the first-order phase every ``p`` is rounded to 0 or 1, which gives an exact
permutation, and the rest of the fit keeps it fixed. Measured, the relaxation rarely
rounds to the right permutation (DCT-II n = 16 as ``Re(P~ · B* · P~)``: best 0.44 from 32
starts), so :func:`top_level` also offers the 8 subsets of the top-level moves for an
exhaustive search with each permutation fixed.
"""
from __future__ import annotations

import torch


def moves(n: int) -> list[tuple[str, torch.Tensor]]:
    """The family's moves for size n, in application order: (name, q) with (Q x)[i] = x[q[i]]."""
    out = []
    L = n.bit_length() - 1
    i = torch.arange(n)
    for k in range(L):
        b = n >> k
        if b < 2:
            break
        base, j = (i // b) * b, i % b
        h = b // 2
        sep = base + torch.where(j < h, 2 * j, 2 * (j - h) + 1)
        out.append((f"sep{k}", sep))
        if b >= 4:
            out.append((f"rev1_{k}", base + torch.where(j < h, h - 1 - j, j)))
            out.append((f"rev2_{k}", base + torch.where(j >= h, b - 1 - (j - h), j)))
    return out


def relaxed_cols(K: torch.Tensor, probs: torch.Tensor, mv) -> torch.Tensor:
    """K · P_soft with P_soft = F_m ... F_1, F = (1 - p) I + p Q; K (S, N, N), probs (S, m)."""
    for t in reversed(range(len(mv))):
        qinv = torch.argsort(mv[t][1]).to(K.device)
        p = probs[:, t].to(K.real.dtype)[:, None, None]
        K = (1 - p) * K + p * K[:, :, qinv]  # (K Q)[:, c] = K[:, q^-1[c]]
    return K


def relaxed_rows(K: torch.Tensor, probs: torch.Tensor, mv) -> torch.Tensor:
    """P_soft · K with P_soft = F_m ... F_1 (F_1 acts first on K's rows)."""
    for t in range(len(mv)):
        q = mv[t][1].to(K.device)
        p = probs[:, t].to(K.real.dtype)[:, None, None]
        K = (1 - p) * K + p * K[:, q, :]  # (Q K)[i] = K[q[i]]
    return K


def rounded(probs_row: torch.Tensor, mv) -> torch.Tensor:
    """The permutation (index vector, (P x)[i] = x[perm[i]]) of the moves with p > 1/2."""
    n = mv[0][1].numel()
    perm = torch.arange(n)
    for t, (_, q) in enumerate(mv):
        if float(probs_row[t]) > 0.5:
            perm = perm[q]
    return perm


def top_level(n: int) -> list[tuple[str, torch.Tensor]]:
    """Every subset of the family's top-level moves (``sep0``, ``rev1_0``, ``rev2_0``),
    composed in the family's order: ``[(name, perm)]``, 8 permutations for n >= 4
    (2 for n = 2), the identity first. ``name`` joins the moves with "+" ("id" for none).

    These are the reorderings that fast real transforms apply to their input before a
    complex FFT-like butterfly (e.g. ``sep0+rev2_0`` is Makhoul's even/odd reordering
    of the DCT-II); the gradient ladder fits each one with the permutation fixed.
    """
    top = [(name, q) for name, q in moves(n) if name in ("sep0", "rev1_0", "rev2_0")]
    out = []
    for mask in range(1 << len(top)):
        chosen = [top[t] for t in range(len(top)) if mask >> t & 1]
        perm = torch.arange(n)
        for _, q in chosen:
            perm = perm[q]
        out.append(("+".join(name for name, _ in chosen) or "id", perm))
    return out


def candidates(kind: str, n: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Candidate pairs ``(label, P_out, P_in)`` of fixed permutations for the gradient
    ladder's screened rungs (``GradientConfig.perm_candidates``); index vectors with
    ``(P x)[i] = x[perm[i]]``.

    ``"dif"``: ``P_out`` the bit reversal, ``P_in`` each of the 8 :func:`top_level`
    reorderings -- an FFT in decimation-in-frequency form behind an input reordering
    (the DCT-II and DST-II: Makhoul's ``sep0+rev2_0``).

    ``"packed"``: ``P_in`` each top-level reordering, ``P_out`` the inverse of each
    top-level reordering followed by the bit reversal inside both halves (``sep`` at
    every lower level): 64 pairs. The DCT-IV's FFT algorithm packs the input pairs
    ``(x[2m], x[n-1-2m])`` into an n/2-point complex FFT and unpacks the outputs into
    ``y[2k]`` and ``y[n-1-2k]``: ``Re(P_out · B · B* · P_in)`` with ``P_in`` Makhoul's
    reordering and ``P_out^-1`` = ``sep0+rev2_0`` then the within-halves bit reversal
    (a brute force over the family at n = 16 finds it).
    """
    from kfit import Permutation

    if kind == "dif":
        rev = Permutation.bit_reversal(n).perm
        return [(f"P_in: {name}", rev, perm) for name, perm in top_level(n)]
    if kind == "packed":
        lower = [q for name, q in moves(n) if name.startswith("sep") and name != "sep0"]
        out = []
        for name_out, perm in top_level(n):
            for q in lower:
                perm = perm[q]
            p_out = torch.argsort(perm)
            out += [(f"P_out^-1: {name_out}+bitrev-halves, P_in: {name_in}", p_out, p_in) for name_in, p_in in top_level(n)]
        return out
    raise ValueError(f"kind must be 'dif' or 'packed', got {kind!r}")
