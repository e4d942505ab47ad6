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
* the fused path, the levels fused into batched dense matmuls (DESIGN.md), in two plans:

  - :func:`apply_fused_blocks` (under autograd) -- two batched matmuls of ~sqrt(n) x
    sqrt(n) blocks (the "four-step"/Monarch form): the levels whose stride is < C = 2^k
    act inside contiguous blocks of size C, the others along the strided index ``i // C``
    for each fixed ``i % C``;
  - :func:`apply_pass_plan` (CPU, no autograd) -- the five lowest levels as one batched matmul
    of 32 x 32 blocks, then one elementwise pass per remaining level on a block-major
    layout: no full transpose, which is what the two-matmul plan spends most on (CPU).

Two compiled kernels run every level with the data in cache: ``kfit/_numba.py`` (CPU, no
autograd; what "auto" picks there) and ``kfit/_triton.py`` (CUDA, forward and backward).
"""
from __future__ import annotations

import functools
import os
import threading

import torch

#: Under autograd, below this size the fused path has nothing to fuse and the reference
#: is as fast (without autograd the fused path wins at every size).
FUSED_MIN_N = 16

_PATHS = ("auto", "reference", "fused", "numba", "triton")

#: Above this size "auto" leaves the numba kernel for the fused path: the kernel's scratch
#: (2 x 16 vectors per thread, in both planes) would outgrow every cache and reach ~100 MB.
NUMBA_MAX_N = 2**16
#: Real products of at least this many vectors stay on the fused pass plan below
#: NUMBA_REAL_FROM_N: there its real batched matmul keeps up with the kernel, whose real
#: arithmetic the compiler leaves scalar (measured, 2 CPU cores, float32, batch 1024:
#: n = 256 0.57 vs 0.79 ms, n = 1024 3.6 vs 4.5 ms, n = 4096 15.2 vs 10.4 ms; fewer
#: vectors, and every complex product, run faster in the kernel).
NUMBA_REAL_MIN_ROWS, NUMBA_REAL_FROM_N = 256, 4096


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


def fused_blocks(twiddle: torch.Tensor, increasing: bool, k: int | None = None, low_only: bool = False):
    """The two block stacks of the fused form, as *transposed* dense blocks.

    Returns ``(low_t, high_t, C, R)`` with ``low_t`` of shape (Tt, R, C, C) and
    ``high_t`` of shape (Tt, C, R, R), such that the low levels map a row ``x[r, :]``
    (x viewed as (R, C)) to ``x[r, :] @ low_t[r]`` and the high levels map a column
    ``x[:, c]`` to ``x[:, c] @ high_t[c]``. ``low_only``: build ``low_t`` alone
    (``high_t`` is None).
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
    if L - k == 0 or low_only:
        return low_t, None, C, R
    # High level with stride s >= C: pair p = p' * C + c, p' the pair index in r-space.
    high_tw = (
        high.reshape(Tt, L - k, R // 2, C, 2, 2).permute(0, 3, 1, 2, 4, 5).reshape(Tt * C, L - k, R // 2, 2, 2)
    )
    high_t = butterfly_dense(high_tw, increasing).transpose(-1, -2).reshape(Tt, C, R, R)
    return low_t, high_t, C, R


#: Scratch buffers are reused across calls up to this many bytes each: fresh multi-MB
#: allocations can cost page faults that rival the matmuls themselves on CPU (measured:
#: 1024 x 1024 complex64 B @ P, two fresh intermediates, 4064 page faults and ~2x the time).
#: An operator keeps at most two per thread for its products (a K-matrix two more for its
#: intermediates); larger products allocate afresh, where the arithmetic dominates anyway.
WORKSPACE_MAX_BYTES = 64 * 2**20


def workspace(owner) -> dict:
    """The calling thread's scratch space on ``owner`` (an operator).

    Per thread, so that threads running products on the same operator never share a
    buffer; the entries of threads that have ended are dropped when a new one is made.
    """
    spaces = owner.__dict__.setdefault("_workspaces", {})
    me = threading.get_ident()
    ws = spaces.get(me)
    if ws is None:
        alive = {t.ident for t in threading.enumerate()}
        for ident in [i for i in spaces if i not in alive]:
            spaces.pop(ident, None)
        ws = spaces[me] = {}
    return ws


def scratch(ws: dict | None, slot, shape, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """A reusable buffer of ``shape`` and ``dtype`` on ``like``'s device, held in
    ``ws[slot]`` (contents undefined), or a fresh tensor when there is no workspace or it
    would exceed WORKSPACE_MAX_BYTES. Never for tensors that autograd records, nor for
    anything handed back to the user."""
    shape = torch.Size(shape)
    if ws is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    key = (shape, dtype, like.device)
    held = ws.get(slot)
    if held is not None and held[0] == key:
        return held[1]
    buf = torch.empty(shape, dtype=dtype, device=like.device)
    if shape.numel() * buf.element_size() <= WORKSPACE_MAX_BYTES:
        ws[slot] = (key, buf)
    return buf


def _transpose_into(a: torch.Tensor) -> torch.Tensor:
    """``a.transpose(1, 2)`` made contiguous, for a 3-D ``a`` (T, P, Q) -> (T, Q, P).

    Done one 2-D matrix at a time: torch's dedicated 2-D transpose copy is ~4x faster than
    the generic strided copy of a 3-D permute.
    """
    T, P_, Q = a.shape
    if T == 1:
        return a[0].t().contiguous()[None]
    out = a.new_empty((T, Q, P_))
    for t in range(T):
        out[t].copy_(a[t].t())
    return out


def apply_fused_blocks(x: torch.Tensor, blocks, increasing: bool) -> torch.Tensor:
    """Apply the blocks of :func:`fused_blocks` to x (Tx, M, n): the plan used under autograd.

    The two batched matmuls work on the *transposed* batch, x viewed as (R, C, M) with the
    M vectors contiguous: each block then left-multiplies an (R or C, M) BLAS matrix, and
    the transpose of x is absorbed by BLAS (a transposed operand) in the matmul that reads
    x (increasing) or that writes the result (decreasing). The only full transpose is one
    2-D transpose copy (of the result, resp. of x), plus one cheap swap of whole M-rows.
    Autograd saves just the two block stacks and two intermediates; without autograd
    :func:`apply_pass_plan` is faster.
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
    if increasing:
        xt = x.reshape(Tx, M, R, C).permute(0, 2, 3, 1)  # (Tx, R, C, M), a strided view
        y = torch.matmul(low_t.transpose(-1, -2), xt)  # (T, R, C, M): low_t[r]^T @ x[r, :]^T
        z = torch.matmul(high_t.transpose(-1, -2), y.transpose(1, 2))  # (T, C, R, M)
        u = z.transpose(1, 2).contiguous()  # (T, R, C, M): whole M-rows moved
        return _transpose_into(u.view(T, n, M))
    xt = _transpose_into(x.reshape(Tx, M, n))
    y = torch.matmul(high_t.transpose(-1, -2), xt.view(Tx, R, C, M).transpose(1, 2))  # (T, C, R, M)
    v = torch.matmul(y.permute(0, 2, 3, 1), low_t)  # (T, R, M, C): y[:, r, :]^T @ low_t[r]
    return v.transpose(1, 2).reshape(T, M, n)  # (T, M, R, C), a fresh tensor


#: Low levels fused into the one matmul of the pass plan (dense blocks of 2**5 = 32).
PASS_PLAN_LEVELS = 5


def pass_plan(twiddle: torch.Tensor, increasing: bool, k: int | None = None):
    """The blocks of :func:`apply_pass_plan`: one matmul, then one pass per remaining level.

    The ``k`` lowest-stride levels (default ``min(L, PASS_PLAN_LEVELS)``) become dense
    blocks exactly as in :func:`fused_blocks` (``low_t``, (Tt, R, C, C), C = 2^k); each
    other level becomes its four twiddle planes ``t00, t01, t10, t11`` of shape
    (Tt, nb, sp, 1, C), broadcastable over a block-major batch (T, R, M, C) viewed as
    (T, nb, 2, sp, M, C): a level of stride ``s = sp * C`` couples block rows ``r`` and
    ``r + sp`` of each vector viewed as (R, C).

    Returns ``(low_t, passes, C, R)``, ``passes`` a list of ``(nb, sp, planes)`` in
    application order (empty when k = L).
    """
    Tt, L, half = twiddle.shape[:3]
    n = 2 * half
    k = min(L, PASS_PLAN_LEVELS) if k is None else k
    C, R = 1 << k, n >> k
    low_t = fused_blocks(twiddle, increasing, k, low_only=True)[0]
    levels = range(k, L) if increasing else range(L - k)
    passes = []
    for level in levels:
        sp = stride(n, level, increasing) // C
        nb = R // (2 * sp)
        t = twiddle[:, level].reshape(Tt, nb, sp, 1, C, 2, 2)
        passes.append((nb, sp, tuple(t[..., a, b].contiguous() for a in (0, 1) for b in (0, 1))))
    return low_t, passes, C, R


def apply_pass_plan(x: torch.Tensor, plan, increasing: bool, ws: dict | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply :func:`pass_plan` blocks to x (Tx, M, n), without autograd.

    ``ws``: a :func:`workspace` for the two scratch buffers; ``out``: where to write the
    result, (T, M, n) contiguous (default: a fresh tensor).

    The data lives *block-major*, (T, R, M, C): the low levels are one batched matmul of
    the (M, C) row blocks of x (read in place), which writes that layout; every other
    level is one elementwise pass in which a level's partners are contiguous (M, C)
    slabs and its twiddles broadcast over M. The first pass (decreasing) or the last
    (increasing) reads or writes the (M, n) layout of x through a strided view, and the
    decreasing order needs one more move of whole C-runs after its matmul. Against the
    two matmuls of :func:`apply_fused_blocks` this skips the full (n, M) transpose (the
    slowest step on a CPU) and does C instead of ~2 sqrt(n) multiply-adds per value in
    the matmul.
    """
    low_t, passes, C, R = plan
    n = C * R
    Tx, M = x.shape[:2]
    if x.is_complex() and not low_t.is_complex():
        low_t = low_t.to(x.dtype)
        passes = [(nb, sp, tuple(t.to(x.dtype) for t in ts)) for nb, sp, ts in passes]
    T = max(Tx, low_t.shape[0])
    full = (T, M, n)
    out = x.new_empty(full) if out is None else out
    if R == 1:  # n <= 2^k: the whole butterfly is one dense block
        return torch.matmul(x, low_t[:, 0], out=out)
    p, q = scratch(ws, "pass.p", full, x.dtype, x), scratch(ws, "pass.q", full, x.dtype, x)

    def block_major(a, nb, sp):  # (Ta, R, M, C) storage viewed as (Ta, nb, 2, sp, M, C)
        return a.view(a.shape[0], nb, 2, sp, M, C)

    def row_major(a, nb, sp):  # (Ta, M, R, C) storage, same view order
        return a.reshape(a.shape[0], M, nb, 2, sp, C).permute(0, 2, 3, 4, 1, 5)

    def run_passes(src, src_view, bufs, out=None):
        """The pass levels from src; the last writes to ``out`` (row-major) if given."""
        for i, (nb, sp, (t00, t01, t10, t11)) in enumerate(passes):
            last = i == len(passes) - 1
            dst = out if (last and out is not None) else bufs[i % 2]
            sv = src_view(src, nb, sp)
            dv = (row_major if dst is out else block_major)(dst, nb, sp)
            x0, x1, y0, y1 = sv[:, :, 0], sv[:, :, 1], dv[:, :, 0], dv[:, :, 1]
            torch.mul(x0, t00, out=y0)
            y0.addcmul_(x1, t01)
            torch.mul(x0, t10, out=y1)
            y1.addcmul_(x1, t11)
            src, src_view = dst, block_major
        return src

    if increasing:
        xv = x.reshape(Tx, M, R, C).transpose(1, 2)
        torch.matmul(xv, low_t, out=q.view(T, R, M, C))
        run_passes(q, block_major, (p, q), out)
        return out
    y = run_passes(x, row_major, (p, q))
    z = q if y is p else p
    torch.matmul(y.view(T, R, M, C), low_t, out=z.view(T, R, M, C))
    out.view(T, M, R, C).copy_(z.view(T, R, M, C).transpose(1, 2))
    return out


#: Under autograd "auto" uses the fused path from this many vectors on: below it, building
#: the dense blocks (and their backward) costs more than the per-level passes over so few
#: vectors. Without autograd the pass plan is faster even for one vector (measured, 2 CPU
#: cores: n = 4 ... 1024, 1 to 32 vectors, 2-4x).
FUSED_MIN_ROWS = 8


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:
    """Whether triton can be imported (looked up once, without importing it)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def resolve_path(path: str | None, n: int, device: torch.device, rows: int | None = None, autograd: bool = False,
                 complex_: bool = True) -> str:
    """Pick the product path: explicit argument > $KFIT_PRODUCT_PATH > automatic.

    "auto": the fused Triton kernel for CUDA tensors when triton is installed; on the CPU
    without autograd the compiled numba kernel when numba is installed (n <= NUMBA_MAX_N;
    for real data (``complex_=False``) not for NUMBA_REAL_MIN_ROWS+ vectors below
    NUMBA_REAL_FROM_N); otherwise the fused path -- under autograd (``autograd=True``)
    only from FUSED_MIN_N and FUSED_MIN_ROWS on, the per-level reference below. "triton"
    runs on CUDA, or on the CPU under the Triton interpreter (TRITON_INTERPRET=1, for
    tests). "numba" runs on the CPU without autograd.
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
    if chosen == "numba":
        from . import _numba

        if not _numba.available():
            raise ValueError(f"{source}='numba' needs the numba package, which is not installed: "
                             f"pip install numba (or pick path='fused')")
        if device.type != "cpu":
            raise ValueError(f"{source}='numba' is the CPU kernel, got tensors on {device}: "
                             f"use path='triton' or 'fused' there, or move them with .to('cpu')")
        if autograd:
            raise ValueError(f"{source}='numba' computes products without autograd, but autograd is "
                             f"recording this one (an input or parameter requires grad): use path='fused' "
                             f"or 'auto', or run it under torch.no_grad()")
        return "numba"
    if chosen == "auto":
        if device.type == "cuda" and _has_triton():
            return "triton"
        if not autograd:
            from . import _numba

            big_real = not complex_ and rows is not None and rows >= NUMBA_REAL_MIN_ROWS and n < NUMBA_REAL_FROM_N
            kernel = device.type == "cpu" and n <= NUMBA_MAX_N and not big_real and _numba.available()
            return "numba" if kernel else "fused"
        few = rows is not None and rows < FUSED_MIN_ROWS
        return "fused" if n >= FUSED_MIN_N and not few else "reference"
    return chosen
