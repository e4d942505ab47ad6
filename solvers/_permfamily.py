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
