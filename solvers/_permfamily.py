"""A relaxed family of structured permutations, learned by gradient descent.

The family (after Dao et al., 2019/2020): for every level k (blocks of size n / 2^k,
down to 2), three optional moves applied in this order inside every block:
``sep`` (even entries first, then odd ones), ``rev1`` (reverse the first half),
``rev2`` (reverse the second half). It contains the bit reversal (``sep`` at every
level) and Makhoul's DCT reordering (``sep`` and ``rev2`` at the top level).

Relaxation: each move ``Q`` enters as ``(1 - p) I + p Q`` with ``p = sigmoid(logit)``;
after the first-order phase every ``p`` is rounded to 0 or 1, which gives an exact
permutation, and the rest of the fit keeps it fixed.
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
