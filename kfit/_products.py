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

import functools
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


def _tracked(*ts) -> bool:
    """True when autograd (reverse mode, or forward mode: dual tensors) follows any of ts:
    then the out= kernels and scratch buffers are not allowed."""
    from torch.autograd.forward_ad import unpack_dual

    for t in ts:
        if t is None:
            continue
        if torch.is_grad_enabled() and t.requires_grad:
            return True
        if unpack_dual(t).tangent is not None:
            return True
    return False


def butterfly_dense(twiddle: torch.Tensor, increasing: bool) -> torch.Tensor:
    """Dense matrices (Tt, n, n) by recursive doubling: ~2 n^2 work instead of n^2 log n.

    Increasing strides: level l joins consecutive dense blocks X, Y of size s = 2^l into
    ``[[D1 X, D2 Y], [D3 X, D4 Y]]``. Decreasing strides: the transpose of the increasing
    butterfly with levels reversed and blocks transposed.
    """
    if not increasing:
        return butterfly_dense(twiddle.flip(1).transpose(-1, -2), True).transpose(-1, -2)
    Tt, L, half = twiddle.shape[:3]
    blocks = twiddle[:, 0]  # (T, n/2, 2, 2): level 0 (stride 1), blocks of size 2
    # Without autograd, each level writes its four quadrants straight into the new blocks
    # (one pass over the output instead of three through cat); the values are the same.
    direct = not _tracked(twiddle)
    s = 2
    for level in range(1, L):
        nb = blocks.shape[1] // 2
        X, Y = blocks[:, 0::2], blocks[:, 1::2]  # (T, nb, s, s)
        t = twiddle[:, level].reshape(Tt, nb, s, 2, 2)
        if direct:
            new = blocks.new_empty((Tt, nb, 2 * s, 2 * s))
            torch.mul(t[..., 0, 0, None], X, out=new[:, :, :s, :s])
            torch.mul(t[..., 0, 1, None], Y, out=new[:, :, :s, s:])
            torch.mul(t[..., 1, 0, None], X, out=new[:, :, s:, :s])
            torch.mul(t[..., 1, 1, None], Y, out=new[:, :, s:, s:])
            blocks = new
        else:
            top = torch.cat((t[..., 0, 0, None] * X, t[..., 0, 1, None] * Y), -1)
            bottom = torch.cat((t[..., 1, 0, None] * X, t[..., 1, 1, None] * Y), -1)
            blocks = torch.cat((top, bottom), -2)
        s *= 2
    return blocks.reshape(Tt, 2 * half, 2 * half)


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
    low_t = butterfly_dense(low_tw, increasing).transpose(-1, -2).reshape(Tt, R, C, C)
    if L - k == 0:
        return low_t, None, C, R
    # High level with stride s >= C: pair p = p' * C + c, p' the pair index in r-space.
    high_tw = (
        high.reshape(Tt, L - k, R // 2, C, 2, 2).permute(0, 3, 1, 2, 4, 5).reshape(Tt * C, L - k, R // 2, 2, 2)
    )
    high_t = butterfly_dense(high_tw, increasing).transpose(-1, -2).reshape(Tt, C, R, R)
    return low_t, high_t, C, R


def butterfly_fused(x: torch.Tensor, twiddle: torch.Tensor, increasing: bool, k: int | None = None) -> torch.Tensor:
    """The levels fused into two batched matmuls; same result as the reference."""
    return apply_fused_blocks(x, fused_blocks(twiddle, increasing, k), increasing)


#: Intermediate buffers of the fused path are reused across calls up to this many bytes:
#: fresh multi-MB allocations cost page faults that rival the matmuls themselves on CPU.
WORKSPACE_MAX_BYTES = 256 * 2**20


def _buffers(workspace, x, sizes):
    """Reusable intermediates (no autograd), or None to allocate as usual."""
    if workspace is None or (torch.is_grad_enabled() and x.requires_grad):
        return None
    key = (tuple(sizes), x.dtype, x.device)
    if workspace.get("key") != key:
        nbytes = sum(torch.Size(sz).numel() for sz in sizes) * x.element_size()
        if nbytes > WORKSPACE_MAX_BYTES:
            return None
        workspace.clear()
        workspace["key"] = key
        workspace["bufs"] = [torch.empty(sz, dtype=x.dtype, device=x.device) for sz in sizes]
    return workspace["bufs"]


def _transpose_into(a: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``a.transpose(1, 2)`` made contiguous, for a 3-D ``a`` (T, P, Q) -> (T, Q, P).

    Done one 2-D matrix at a time: torch's dedicated 2-D transpose copy is ~4x faster than
    the generic strided copy of a 3-D permute.
    """
    T, P_, Q = a.shape
    if out is None:
        if T == 1:
            return a[0].t().contiguous()[None]
        out = a.new_empty((T, Q, P_))
    for t in range(T):
        out[t].copy_(a[t].t())
    return out


def apply_fused_blocks(x: torch.Tensor, blocks, increasing: bool, workspace: dict | None = None) -> torch.Tensor:
    """Apply the blocks of :func:`fused_blocks` to x (Tx, M, n).

    The two batched matmuls work on the *transposed* batch, x viewed as (R, C, M) with the
    M vectors contiguous: each block then left-multiplies an (R or C, M) BLAS matrix, and
    the transpose of x is absorbed by BLAS (a transposed operand) in the matmul that reads
    x (increasing) or that writes the result (decreasing). The only full transpose is one
    2-D transpose copy (of the result, resp. of x), plus one cheap swap of whole M-rows.
    ``workspace`` (a dict owned by the caller) keeps the intermediates between calls when
    autograd is not recording.
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
    grad = _tracked(x, low_t, high_t)
    # Buffers: "p" and "q" alternate as scratch; the result is always a fresh tensor.
    full = (T, M, n)
    bufs = None if grad else _buffers(workspace, x, [full, full])
    out = None if bufs is None else dict(zip("pq", bufs))

    def take(name, shape):  # a view of a scratch buffer (Tx-batched tensors use part of it)
        return out[name].view(-1)[: torch.Size(shape).numel()].view(shape)

    def mm(a, b, name):
        if out is None:
            return torch.matmul(a, b)
        shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        return torch.matmul(a, b, out=take(name, shape))

    def copy(a, name):
        return a.contiguous() if out is None else take(name, a.shape).copy_(a)

    if increasing:
        xt = x.reshape(Tx, M, R, C).permute(0, 2, 3, 1)  # (Tx, R, C, M), a strided view
        y = mm(low_t.transpose(-1, -2), xt, "p")  # (T, R, C, M): low_t[r]^T @ x[r, :]^T
        z = mm(high_t.transpose(-1, -2), y.transpose(1, 2), "q")  # (T, C, R, M)
        u = copy(z.transpose(1, 2), "p")  # (T, R, C, M): whole M-rows moved
        return _transpose_into(u.view(T, n, M), None if out is None else x.new_empty(full))
    xt = _transpose_into(x.reshape(Tx, M, n), None if out is None else take("p", (Tx, n, M)))
    y = mm(high_t.transpose(-1, -2), xt.view(Tx, R, C, M).transpose(1, 2), "q")  # (T, C, R, M)
    v = mm(y.permute(0, 2, 3, 1), low_t, "p")  # (T, R, M, C): y[:, r, :]^T @ low_t[r]
    return v.transpose(1, 2).reshape(T, M, n)  # (T, M, R, C), a fresh tensor


#: "auto" uses the fused path from this many vectors on: below it, building (or checking)
#: the dense blocks costs more than the per-level passes over so few vectors.
FUSED_MIN_ROWS = 8


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:
    """Whether triton can be imported (looked up once, without importing it)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def resolve_path(path: str | None, n: int, device: torch.device, rows: int | None = None) -> str:
    """Pick the product path: explicit argument > $KFIT_PRODUCT_PATH > automatic.

    "auto": the fused Triton kernel for CUDA tensors when triton is installed; otherwise
    the fused-matmul path, or the per-level reference for tiny products. "triton" runs on
    CUDA, or on the CPU under the Triton interpreter (TRITON_INTERPRET=1, for tests).
    """
    chosen = path if path is not None else os.environ.get("KFIT_PRODUCT_PATH", "auto")
    source = "path" if path is not None else "$KFIT_PRODUCT_PATH"
    if chosen not in _PATHS:
        raise ValueError(f"{source} must be one of {', '.join(_PATHS)}, got {chosen!r}")
    device = torch.device(device)
    if chosen == "triton":
        if not _has_triton():
            raise ValueError(
                f"{source}='triton' needs the triton package, which is not installed: "
                f"pip install kfit[gpu] (or pick path='fused')"
            )
        interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
        if device.type != "cuda" and not (device.type == "cpu" and interpret):
            raise ValueError(
                f"{source}='triton' expects CUDA tensors (or CPU tensors with TRITON_INTERPRET=1, the "
                f"slow Triton interpreter used by the tests), got tensors on {device}: move them with "
                f".to('cuda'), set TRITON_INTERPRET=1 before the first triton product, or use path='fused'"
            )
        return "triton"
    if chosen == "auto":
        if device.type == "cuda" and _has_triton():
            return "triton"
        few = rows is not None and rows < FUSED_MIN_ROWS
        return "fused" if n >= FUSED_MIN_N and not few else "reference"
    return chosen
