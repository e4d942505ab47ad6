"""Butterfly products on canonical tensors.

Every function here works on *canonical* shapes, already validated by the public types:

    x        : (Tx, M, n)            Tx in {1, T}: a stack of M row vectors per member
    twiddle  : (Tt, L, n/2, 2, 2)    Tt in {1, T}: L = log2(n) levels in application order

and returns (T, M, n), T = max(Tx, Tt).  Level ``l`` has stride ``2**l`` (increasing order)
or ``n / 2**(l+1)`` (decreasing order); its pair ``p`` couples indices ``i`` and ``i + s``
where ``i = (p // s) * 2s + p % s``, and the 2x2 block ``t = twiddle[..., l, p, :, :]`` maps
``(x[i], x[i+s]) -> (t00 x[i] + t01 x[i+s], t10 x[i] + t11 x[i+s])``.

Two paths compute the same thing:

* :func:`butterfly_reference` -- one memory pass per level (the definition, kept simple);
* :func:`butterfly_fused` -- the levels fused into two batched dense matmuls of
  ~sqrt(n) x sqrt(n) blocks (the "four-step"/Monarch form, DESIGN.md): the levels whose
  stride is < C = 2^k act inside contiguous blocks of size C, the others act along the
  strided index ``i // C`` for each fixed ``i % C``.
"""
from __future__ import annotations

import os

import torch

#: Below this size the fused path has nothing to fuse and the reference is as fast.
FUSED_MIN_N = 16

_PATHS = ("auto", "reference", "fused", "triton")


def stride(n: int, level: int, increasing: bool) -> int:
    return (1 << level) if increasing else n >> (level + 1)


def butterfly_reference(x: torch.Tensor, twiddle: torch.Tensor, increasing: bool) -> torch.Tensor:
    """Apply the levels one at a time (the defining formula)."""
    Tt, L, half = twiddle.shape[:3]
    n = 2 * half
    T = max(Tt, x.shape[0])
    M = x.shape[1]
    for level in range(L):
        s = stride(n, level, increasing)
        nb = n // (2 * s)
        t = twiddle[:, level].reshape(Tt, 1, nb, s, 2, 2)
        xv = x.reshape(x.shape[0], M, nb, 2, s)
        x0, x1 = xv[:, :, :, 0, :], xv[:, :, :, 1, :]
        y0 = t[..., 0, 0] * x0 + t[..., 0, 1] * x1
        y1 = t[..., 1, 0] * x0 + t[..., 1, 1] * x1
        x = torch.stack((y0, y1), dim=3).reshape(T, M, n)
    if x.shape[0] != T:  # L == 0 cannot happen (n >= 2), but keep the contract explicit
        x = x.expand(T, M, n)
    return x


def split_point(L: int) -> int:
    """Number of levels fused into the contiguous blocks (C = 2^k columns)."""
    return (L + 1) // 2


def fused_blocks(twiddle: torch.Tensor, increasing: bool, k: int | None = None):
    """The two block stacks of the fused form, as *transposed* dense blocks.

    Returns ``(low_t, high_t, C, R)`` with ``low_t`` of shape (Tt, R, C, C) and
    ``high_t`` of shape (Tt, C, R, R), such that the low levels map a row ``x[r, :]``
    (x viewed as (R, C)) to ``x[r, :] @ low_t[r]`` and the high levels map a column
    ``x[:, c]`` to ``x[:, c] @ high_t[c]``.
    """
    Tt, L, half = twiddle.shape[:3]
    n = 2 * half
    if k is None:
        k = split_point(L)
    C, R = 1 << k, n >> k
    if increasing:
        low, high = twiddle[:, :k], twiddle[:, k:]
    else:
        high, low = twiddle[:, : L - k], twiddle[:, L - k :]
    # Low level with stride s < C: the C/2 pairs of block r are contiguous, [r*C/2, (r+1)*C/2).
    low_tw = low.reshape(Tt, k, R, C // 2, 2, 2).transpose(1, 2).reshape(Tt * R, k, C // 2, 2, 2)
    eye_c = torch.eye(C, dtype=twiddle.dtype, device=twiddle.device).expand(1, C, C)
    # B(I) has rows B e_j: the transposed dense block.
    low_t = butterfly_reference(eye_c, low_tw, increasing).reshape(Tt, R, C, C)
    if L - k == 0:
        return low_t, None, C, R
    # High level with stride s >= C: pair p = p' * C + c, p' the pair index in r-space.
    high_tw = (
        high.reshape(Tt, L - k, R // 2, C, 2, 2).permute(0, 3, 1, 2, 4, 5).reshape(Tt * C, L - k, R // 2, 2, 2)
    )
    eye_r = torch.eye(R, dtype=twiddle.dtype, device=twiddle.device).expand(1, R, R)
    high_t = butterfly_reference(eye_r, high_tw, increasing).reshape(Tt, C, R, R)
    return low_t, high_t, C, R


def butterfly_fused(x: torch.Tensor, twiddle: torch.Tensor, increasing: bool, k: int | None = None) -> torch.Tensor:
    """The levels fused into two batched matmuls; same result as the reference."""
    return apply_fused_blocks(x, fused_blocks(twiddle, increasing, k), increasing)


def apply_fused_blocks(x: torch.Tensor, blocks, increasing: bool) -> torch.Tensor:
    """Apply the blocks of :func:`fused_blocks` to x (Tx, M, n).

    Layouts are chosen so that both batched matmuls read BLAS-compatible strided views;
    the only copies are one (M, C, R) <-> (R, M, C) transpose between them and the
    reshaping of the output.
    """
    low_t, high_t, C, R = blocks
    n = C * R
    Tx, M = x.shape[:2]
    if x.is_complex() and not low_t.is_complex():
        low_t = low_t.to(x.dtype)
        high_t = None if high_t is None else high_t.to(x.dtype)
    T = max(Tx, low_t.shape[0])
    if high_t is None:  # n == 2: a single dense 2x2 block
        return torch.matmul(x, low_t[:, 0]).expand(T, M, n)
    xv = x.reshape(Tx, M, R, C)
    if increasing:
        y = torch.matmul(xv.transpose(1, 2), low_t)  # (T, R, M, C): rows x[r, :] @ low_t[r]
        z = y.permute(0, 2, 3, 1).contiguous()  # (T, M, C, R)
        w = torch.matmul(z.transpose(1, 2), high_t)  # (T, C, M, R): columns @ high_t[c]
        return w.permute(0, 2, 3, 1).reshape(T, M, n)
    z = xv.transpose(2, 3).contiguous()  # (T, M, C, R): high levels first
    w = torch.matmul(z.transpose(1, 2), high_t)  # (T, C, M, R)
    y = w.permute(0, 3, 2, 1).contiguous()  # (T, R, M, C)
    v = torch.matmul(y, low_t)  # (T, R, M, C)
    return v.transpose(1, 2).reshape(T, M, n)


def resolve_path(path: str | None, n: int, device: torch.device) -> str:
    """Pick the product path: explicit argument > $KFIT_PRODUCT_PATH > automatic."""
    chosen = path if path is not None else os.environ.get("KFIT_PRODUCT_PATH", "auto")
    if chosen not in _PATHS:
        source = "path" if path is not None else "$KFIT_PRODUCT_PATH"
        raise ValueError(f"{source} must be one of {', '.join(_PATHS)}, got {chosen!r}")
    if chosen == "triton":
        raise NotImplementedError(
            "path='triton' (the fused GPU kernel) is not available yet; "
            "use 'fused' or 'reference'"
        )
    if chosen == "auto":
        return "fused" if n >= FUSED_MIN_N else "reference"
    return chosen
