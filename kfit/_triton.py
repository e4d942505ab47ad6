"""The fused Triton kernels of the butterfly product (forward and backward).

Imported only when the "triton" product path is used (``import kfit`` never imports
triton). Canonical shapes and the pair convention are those of :mod:`kfit._products`::

    x        : (Tx, M, n)            Tx in {1, T}
    twiddle  : (Tt, L, n/2, 2, 2)    Tt in {1, T}, L = log2(n), levels in application order
    result   : (T, M, n)

Design
------
*Passes and tiles.* The stride exponents ``0 .. L-1`` are cut into consecutive groups, one
kernel launch ("pass") per group (:func:`plan_passes`). When :data:`MIN_ROWS` rows fit in
a tile (:data:`FWD_TILE` scalars: n <= 2048 for float32, 1024 for complex64 / float64,
512 for complex128; half that when gradients will be needed, see below) there is
a single pass and every program applies *all* levels to ``BM`` whole rows kept on-chip:
one read of x, one write of y. Larger n take two (or more) passes. A group with strides ``S, 2S, ..., S*G/2``
acts independently on the ``G`` elements ``a*G*S + k*S + b`` (``k < G``) for each
``(a, b)``; its program holds the tile ``(BM rows) x (G) x (BB consecutive b)`` -- rows
of length ``G*BB`` read as ``G`` runs of ``BB`` contiguous elements, so that the strided
passes of large n still read whole cache lines. Any power of two n works.

*One level on-chip.* With the tile as ``(R, G*BB)``, the level of in-group stride ``H`` is
``reshape(R, G/2H, 2, H*BB)`` + ``permute`` + ``tl.split``: the two halves are the pair
partners. The 2x2 blocks are applied elementwise and ``tl.join`` + ``permute`` +
``reshape`` restore the order (the compiler turns these into register shuffles / shared
memory). All sizes are powers of two and compile-time constants; the levels are unrolled
with ``tl.static_range``.

*Layouts.* Complex tensors stay interleaved in memory (``torch.view_as_real``: no copy);
the kernel loads ``(..., 2)`` and splits real and imaginary parts in registers. Twiddles
are repacked (an O(L n) copy) to ``(Tt, L, 4, C, n/2)`` -- entry ``e = 2r + c`` of the 2x2
block, ``C`` = 1 (real) or 2 (real, imag) -- so each level's loads are contiguous.

*Backward.* ``grad_x = B^H grad_y`` (levels reversed, blocks conjugate-transposed).
When the twiddles need no gradient this is the forward kernel on the adjoint twiddles.
Otherwise the backward kernel runs the passes in reverse. Inside a pass it needs the
input of every level, last level first: it *recomputes* them in registers from the pass
input instead of storing them (memory traffic stays one read of the pass input and of
grad_y and one write of grad_x), in segments of ~sqrt(levels) (:func:`segment_length`:
about levels^1.5 level applications, e.g. 30 for 12 levels instead of 66). Each level
accumulates ``dt[r, c] = sum_rows g_r conj(a_c)`` and moves ``g`` one level down. The
twiddle gradients are summed over a tile's rows in registers, then added into a buffer
private to the program (no atomics: the result is deterministic); each program loops over
several row blocks, so the buffer holds only ``(T, P, L, 4, C, n/2)`` partial sums (``P``
programs per member, ~4 per SM in all), summed by torch at the end. With several passes
the forward (planned with the backward's smaller tile when gradients are needed) keeps the
inputs of the later passes, which it writes anyway.

Forward-mode AD (``jvp``) is supported through a per-level torch loop (not fused);
``torch.func`` transforms of this function are not.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

#: Whether the kernels below were built for the CPU interpreter: triton reads
#: TRITON_INTERPRET when ``@triton.jit`` runs, i.e. when this module is first imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

#: Tuning knobs (set without a GPU to measure them on: see the report of issue 6).
#: Scalars (a complex number counts 2; float64 counts 2) per program tile, forward and
#: backward (the backward keeps ~4 such tiles alive: input, recomputed activations, grad),
#: and scalars per thread, which sets num_warps. Larger tiles amortise the twiddle loads
#: over more rows (each level reads 2 twiddle scalars per tile column).
FWD_TILE = 8192
BWD_TILE = 4096
FWD_SCALARS_PER_THREAD = 32
BWD_SCALARS_PER_THREAD = 16
#: Rows a tile holds at least: a row longer than tile / MIN_ROWS elements is split into
#: passes. Every pair of a row has its own twiddles, so each level reads 2 twiddle scalars
#: per tile column: a tile of BM rows reads ~2 L / BM times its own size in twiddles (from
#: L1/L2, shared by all rows), which bounds the useful row length of a single pass.
MIN_ROWS = 4
#: Programs per SM that a launch aims for on CUDA: the forward shrinks its row blocks
#: (small batches), the backward sets how many programs loop over the row blocks.
PROGRAMS_PER_SM = 4

_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


# ======================================================================================
# kernels


@triton.jit
def _pairs(v, R: tl.constexpr, G: tl.constexpr, H: tl.constexpr, BB: tl.constexpr):
    """(R, G*BB) -> the partners (R, G/2H, H*BB) at in-group offsets k and k + H."""
    v = tl.reshape(v, (R, G // (2 * H), 2, H * BB))
    v = tl.permute(v, (0, 1, 3, 2))
    return tl.split(v)


@triton.jit
def _unpairs(v0, v1, R: tl.constexpr, G: tl.constexpr, H: tl.constexpr, BB: tl.constexpr):
    """Inverse of :func:`_pairs`."""
    v = tl.join(v0, v1)  # (R, G/2H, H*BB, 2)
    v = tl.permute(v, (0, 1, 3, 2))
    return tl.reshape(v, (R, G * BB))


@triton.jit
def _pair_index(pbase, S: tl.constexpr, G: tl.constexpr, H: tl.constexpr, BB: tl.constexpr):
    """Global pair indices p (1, G/2H, H*BB) of the tile's pairs at in-group stride H.

    The top element ``i = a*G*S + b0 + (kh*2H + kl)*S + b`` of a pair with global stride
    ``s = H*S`` has ``p = (i // 2s)*s + i % s = a*G*S/2 + b0 + kh*H*S + kl*S + b``.
    """
    kh = tl.arange(0, G // (2 * H))[:, None]
    q = tl.arange(0, H * BB)[None, :]
    p = pbase + kh * (H * S) + (q // BB) * S + q % BB
    return p[None, :, :]


@triton.jit
def _tw(tw_lv, p, E: tl.constexpr, C: tl.constexpr, TWC: tl.constexpr, HALF: tl.constexpr):
    return tl.load(tw_lv + (E * TWC + C) * HALF + p)


@triton.jit
def _tw4(tw_lv, p, C: tl.constexpr, TWC: tl.constexpr, HALF: tl.constexpr):
    """Component C (0: real, 1: imaginary) of the four entries t00, t01, t10, t11."""
    return (_tw(tw_lv, p, 0, C, TWC, HALF), _tw(tw_lv, p, 1, C, TWC, HALF),
            _tw(tw_lv, p, 2, C, TWC, HALF), _tw(tw_lv, p, 3, C, TWC, HALF))


@triton.jit
def _level_fwd(xr, xi, tw_lv, pbase, R: tl.constexpr, G: tl.constexpr, H: tl.constexpr, S: tl.constexpr,
               BB: tl.constexpr, HALF: tl.constexpr, CPLX: tl.constexpr, TWC: tl.constexpr):
    """One level on the tile: (x[i], x[i+s]) -> (t00 x[i] + t01 x[i+s], t10 x[i] + t11 x[i+s])."""
    p = _pair_index(pbase, S, G, H, BB)
    x0r, x1r = _pairs(xr, R, G, H, BB)
    t00r, t01r, t10r, t11r = _tw4(tw_lv, p, 0, TWC, HALF)
    if CPLX:
        x0i, x1i = _pairs(xi, R, G, H, BB)
        t00i, t01i, t10i, t11i = _tw4(tw_lv, p, 1, TWC, HALF)
        y0r = t00r * x0r - t00i * x0i + t01r * x1r - t01i * x1i
        y0i = t00r * x0i + t00i * x0r + t01r * x1i + t01i * x1r
        y1r = t10r * x0r - t10i * x0i + t11r * x1r - t11i * x1i
        y1i = t10r * x0i + t10i * x0r + t11r * x1i + t11i * x1r
        xi = _unpairs(y0i, y1i, R, G, H, BB)
    else:
        y0r = t00r * x0r + t01r * x1r
        y1r = t10r * x0r + t11r * x1r
    xr = _unpairs(y0r, y1r, R, G, H, BB)
    return xr, xi


@triton.jit
def _acc(part_lv, p, v, E: tl.constexpr, C: tl.constexpr, TWC: tl.constexpr, HALF: tl.constexpr):
    """part[E, C, p] += v: the buffer is private to the program, so no atomics."""
    ptr = part_lv + (E * TWC + C) * HALF + p
    tl.store(ptr, tl.load(ptr) + v[None, :, :])


@triton.jit
def _level_bwd(ar, ai, gr, gi, tw_lv, part_lv, pbase, R: tl.constexpr, G: tl.constexpr, H: tl.constexpr,
               S: tl.constexpr, BB: tl.constexpr, HALF: tl.constexpr, CPLX: tl.constexpr, TWC: tl.constexpr):
    """Backward of one level: input activation a, output gradient g -> input gradient.

    ``dt[r, c] += sum_rows g_r conj(a_c)``; ``g_in = T^H g`` (pair-wise).
    """
    p = _pair_index(pbase, S, G, H, BB)
    a0r, a1r = _pairs(ar, R, G, H, BB)
    g0r, g1r = _pairs(gr, R, G, H, BB)
    t00r, t01r, t10r, t11r = _tw4(tw_lv, p, 0, TWC, HALF)
    if CPLX:
        a0i, a1i = _pairs(ai, R, G, H, BB)
        g0i, g1i = _pairs(gi, R, G, H, BB)
        # g * conj(a) = (gr ar + gi ai) + i (gi ar - gr ai)
        _acc(part_lv, p, tl.sum(g0r * a0r + g0i * a0i, 0), 0, 0, TWC, HALF)
        _acc(part_lv, p, tl.sum(g0i * a0r - g0r * a0i, 0), 0, 1, TWC, HALF)
        _acc(part_lv, p, tl.sum(g0r * a1r + g0i * a1i, 0), 1, 0, TWC, HALF)
        _acc(part_lv, p, tl.sum(g0i * a1r - g0r * a1i, 0), 1, 1, TWC, HALF)
        _acc(part_lv, p, tl.sum(g1r * a0r + g1i * a0i, 0), 2, 0, TWC, HALF)
        _acc(part_lv, p, tl.sum(g1i * a0r - g1r * a0i, 0), 2, 1, TWC, HALF)
        _acc(part_lv, p, tl.sum(g1r * a1r + g1i * a1i, 0), 3, 0, TWC, HALF)
        _acc(part_lv, p, tl.sum(g1i * a1r - g1r * a1i, 0), 3, 1, TWC, HALF)
        t00i, t01i, t10i, t11i = _tw4(tw_lv, p, 1, TWC, HALF)
        # conj(t) g = (tr gr + ti gi) + i (tr gi - ti gr)
        n0r = t00r * g0r + t00i * g0i + t10r * g1r + t10i * g1i
        n0i = t00r * g0i - t00i * g0r + t10r * g1i - t10i * g1r
        n1r = t01r * g0r + t01i * g0i + t11r * g1r + t11i * g1i
        n1i = t01r * g0i - t01i * g0r + t11r * g1i - t11i * g1r
        gi = _unpairs(n0i, n1i, R, G, H, BB)
    else:
        _acc(part_lv, p, tl.sum(g0r * a0r, 0), 0, 0, TWC, HALF)
        _acc(part_lv, p, tl.sum(g0r * a1r, 0), 1, 0, TWC, HALF)
        _acc(part_lv, p, tl.sum(g1r * a0r, 0), 2, 0, TWC, HALF)
        _acc(part_lv, p, tl.sum(g1r * a1r, 0), 3, 0, TWC, HALF)
        n0r = t00r * g0r + t10r * g1r
        n1r = t01r * g0r + t11r * g1r
    gr = _unpairs(n0r, n1r, R, G, H, BB)
    return gr, gi


@triton.jit
def _tile_offsets(rb, a, b0, M, N: tl.constexpr, S: tl.constexpr, G: tl.constexpr, BB: tl.constexpr,
                  BM: tl.constexpr):
    """Element offsets (BM, G*BB) of a tile within one member's (M, N) block, and the row mask."""
    rows = rb * BM + tl.arange(0, BM)
    w = tl.arange(0, G * BB)
    col = a * (G * S) + b0 + (w // BB) * S + w % BB
    off = rows.to(tl.int64)[:, None] * N + col[None, :]
    return off, (rows < M)[:, None]


@triton.jit
def _load_tile(ptr, off, mask, CPLX: tl.constexpr):
    """(real, imag) of a tile; real tensors return (x, x) and ignore the second."""
    if CPLX:
        off2 = off[:, :, None] * 2 + tl.arange(0, 2)[None, None, :]
        v = tl.load(ptr + off2, mask=mask[:, :, None], other=0.0)
        vr, vi = tl.split(v)
    else:
        vr = tl.load(ptr + off, mask=mask, other=0.0)
        vi = vr
    return vr, vi


@triton.jit
def _store_tile(ptr, off, mask, vr, vi, CPLX: tl.constexpr):
    if CPLX:
        off2 = off[:, :, None] * 2 + tl.arange(0, 2)[None, None, :]
        tl.store(ptr + off2, tl.join(vr, vi), mask=mask[:, :, None])
    else:
        tl.store(ptr + off, vr, mask=mask)


@triton.jit
def _butterfly_fwd_kernel(
    x_ptr, tw_ptr, y_ptr, M, NRB, x_tstride, tw_tstride, y_tstride,
    N: tl.constexpr, LV0: tl.constexpr, NLV: tl.constexpr, INCREASING: tl.constexpr,
    S: tl.constexpr, G: tl.constexpr, BB: tl.constexpr, BM: tl.constexpr,
    CPLX: tl.constexpr, TWC: tl.constexpr,
):
    """One pass: levels LV0 .. LV0+NLV-1 (strides S .. S*G/2) on one (rows, a, b-run) tile.

    Program ids enumerate (member t, row block rb, group a, run b0) with (a, b0) fastest.
    Strides (x_tstride, ...) are in scalars of the real view; 0 broadcasts a member.
    """
    HALF: tl.constexpr = N // 2
    NBB: tl.constexpr = S // BB
    NAB: tl.constexpr = (N // (G * S)) * NBB
    pid = tl.program_id(0)
    ab = pid % NAB
    rest = pid // NAB
    rb = rest % NRB
    t = (rest // NRB).to(tl.int64)
    a = ab // NBB
    b0 = (ab % NBB) * BB
    off, mask = _tile_offsets(rb, a, b0, M, N, S, G, BB, BM)
    xr, xi = _load_tile(x_ptr + t * x_tstride, off, mask, CPLX)
    tw_t = tw_ptr + t * tw_tstride
    pbase = a * (G * S // 2) + b0
    for j in tl.static_range(NLV):
        xr, xi = _level_fwd(xr, xi, tw_t + (LV0 + j) * (4 * TWC * HALF), pbase, BM, G,
                            (1 << j) if INCREASING else (G >> (j + 1)), S, BB, HALF, CPLX, TWC)
    _store_tile(y_ptr + t * y_tstride, off, mask, xr, xi, CPLX)


@triton.jit
def _fwd_levels(xr, xi, tw_t, pbase, FIRST: tl.constexpr, COUNT: tl.constexpr, LV0: tl.constexpr,
                INCREASING: tl.constexpr, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr, BB: tl.constexpr,
                HALF: tl.constexpr, CPLX: tl.constexpr, TWC: tl.constexpr):
    """The pass's levels FIRST .. FIRST+COUNT-1 on the tile."""
    for i in tl.static_range(FIRST, FIRST + COUNT):
        xr, xi = _level_fwd(xr, xi, tw_t + (LV0 + i) * (4 * TWC * HALF), pbase, R, G,
                            (1 << i) if INCREASING else (G >> (i + 1)), S, BB, HALF, CPLX, TWC)
    return xr, xi


@triton.jit
def _bwd_segment(cr, ci, gr, gi, tw_t, part_t, pbase, FIRST: tl.constexpr, COUNT: tl.constexpr,
                 LV0: tl.constexpr, INCREASING: tl.constexpr, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
                 BB: tl.constexpr, HALF: tl.constexpr, CPLX: tl.constexpr, TWC: tl.constexpr):
    """Backward through the pass's levels FIRST .. FIRST+COUNT-1, c = their input: the
    input of each level is recomputed from c (last level first)."""
    for j in tl.static_range(COUNT - 1, -1, -1):
        dr, di = _fwd_levels(cr, ci, tw_t, pbase, FIRST, j, LV0, INCREASING, R, G, S, BB, HALF, CPLX, TWC)
        lv_off = (LV0 + FIRST + j) * (4 * TWC * HALF)
        gr, gi = _level_bwd(dr, di, gr, gi, tw_t + lv_off, part_t + lv_off, pbase, R, G,
                            (1 << (FIRST + j)) if INCREASING else (G >> (FIRST + j + 1)), S, BB, HALF, CPLX, TWC)
    return gr, gi


@triton.jit
def _butterfly_bwd_kernel(
    a_ptr, g_ptr, tw_ptr, gx_ptr, part_ptr, M, NRB, P, a_tstride, tw_tstride, g_tstride, part_tstride,
    N: tl.constexpr, L: tl.constexpr, LV0: tl.constexpr, NLV: tl.constexpr, INCREASING: tl.constexpr,
    S: tl.constexpr, G: tl.constexpr, BB: tl.constexpr, BM: tl.constexpr,
    CPLX: tl.constexpr, TWC: tl.constexpr, SEG: tl.constexpr,
):
    """Backward of one pass: a = the pass input, g = the gradient of its output.

    Writes the gradient of the pass input to gx and adds the twiddle gradients of the
    pass's levels into ``part[t, pr]`` (shape (L, 4, TWC, N/2)), where program pr of member t
    handles the row blocks pr, pr + P, pr + 2P, ...

    The levels are taken in segments of SEG, last segment first; a segment's input is
    recomputed from the pass input, and each level's input from the segment's: about
    NLV^1.5 level applications instead of NLV^2/2, with one extra tile alive.
    """
    HALF: tl.constexpr = N // 2
    NBB: tl.constexpr = S // BB
    NAB: tl.constexpr = (N // (G * S)) * NBB
    NSEG: tl.constexpr = (NLV + SEG - 1) // SEG
    pid = tl.program_id(0)
    ab = pid % NAB
    rest = pid // NAB
    pr = rest % P
    t = (rest // P).to(tl.int64)
    a = ab // NBB
    b0 = (ab % NBB) * BB
    pbase = a * (G * S // 2) + b0
    tw_t = tw_ptr + t * tw_tstride
    part_t = part_ptr + t * part_tstride + pr * (L * 4 * TWC * HALF)
    for rb in range(pr, NRB, P):
        off, mask = _tile_offsets(rb, a, b0, M, N, S, G, BB, BM)
        ar, ai = _load_tile(a_ptr + t * a_tstride, off, mask, CPLX)
        gr, gi = _load_tile(g_ptr + t * g_tstride, off, mask, CPLX)
        for sg in tl.static_range(NSEG - 1, -1, -1):
            cr, ci = _fwd_levels(ar, ai, tw_t, pbase, 0, sg * SEG, LV0, INCREASING, BM, G, S, BB, HALF, CPLX, TWC)
            gr, gi = _bwd_segment(cr, ci, gr, gi, tw_t, part_t, pbase, sg * SEG,
                                  (NLV - sg * SEG) if (NLV - sg * SEG) < SEG else SEG,
                                  LV0, INCREASING, BM, G, S, BB, HALF, CPLX, TWC)
        _store_tile(gx_ptr + t * g_tstride, off, mask, gr, gi, CPLX)
        # the next row block re-reads the partial sums: make this block's stores visible
        tl.debug_barrier()


# ======================================================================================
# host side


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _next_pow2(m: int) -> int:
    return 1 << max(0, (m - 1).bit_length())


def _scale(dtype: torch.dtype) -> int:
    """32-bit registers per element: complex and float64 count twice each."""
    return (2 if dtype.is_complex else 1) * (2 if dtype in (torch.float64, torch.complex128) else 1)


def _tile_budget(dtype: torch.dtype, budget: int) -> int:
    """Elements (not scalars) per tile for a budget in scalars."""
    return max(2, budget // _scale(dtype))


def plan_passes(n: int, elems: int) -> list[tuple[int, int, int]]:
    """Cut the stride exponents 0 .. L-1 into passes ``(e0, e1, BB)`` for tiles of ``elems``.

    One pass when a row fits (n <= elems). Otherwise balanced groups of at most
    ``log2(elems) - bb_bits`` levels, leaving room for runs of 2^bb_bits contiguous elements
    (up to 8: a whole 32-byte memory sector of float32) in the strided passes. Returned in
    increasing-stride order.
    """
    L, gmax = _log2(n), _log2(elems)
    if L <= gmax:
        return [(0, L, 1)]
    bb_bits = min(3, gmax // 2)
    per = max(1, gmax - bb_bits)
    P = -(-L // per)
    sizes = [L // P + (1 if i < L % P else 0) for i in range(P)]
    out, e0 = [], 0
    for sz in sizes:
        e1 = e0 + sz
        S, G = 1 << e0, 1 << sz
        out.append((e0, e1, min(S, max(1, elems // G))))
        e0 = e1
    return out


def _ordered(passes, L: int, increasing: bool):
    """Passes in application order, with their first level index LV0 and stride S, G."""
    seq = passes if increasing else passes[::-1]
    return [dict(LV0=e0 if increasing else L - e1, NLV=e1 - e0, S=1 << e0, G=1 << (e1 - e0), BB=bb) for e0, e1, bb in seq]


def segment_length(nlv: int) -> int:
    """Levels per backward segment minimising the recomputed level applications:
    sum over segments s of (s * SEG to reach it + k_s (k_s - 1) / 2 inside it)."""
    def cost(seg):
        starts = range(0, nlv, seg)
        return sum(st + (min(seg, nlv - st) * (min(seg, nlv - st) - 1)) // 2 for st in starts)

    return min(range(1, max(1, nlv) + 1), key=lambda seg: (cost(seg), -seg))


def _num_warps(tile_scalars: int, per_thread: int) -> int:
    return max(1, min(16, tile_scalars // (32 * per_thread)))


def _on(device: torch.device):
    """Launch on the tensors' GPU (triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _real_view(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def pack_twiddle(tw: torch.Tensor) -> torch.Tensor:
    """(Tt, L, n/2, 2, 2) -> contiguous real (Tt, L, 4, C, n/2), C = 2 for complex (re, im)."""
    Tt, L, half = tw.shape[:3]
    if tw.is_complex():
        v = torch.view_as_real(tw.resolve_conj())  # (Tt, L, h, 2, 2, 2)
        return v.permute(0, 1, 3, 4, 5, 2).reshape(Tt, L, 4, 2, half).contiguous()
    return tw.permute(0, 1, 3, 4, 2).reshape(Tt, L, 4, 1, half).contiguous()


def unpack_twiddle(packed: torch.Tensor, cplx: bool) -> torch.Tensor:
    """Inverse of :func:`pack_twiddle`."""
    Tt, L, _, C, half = packed.shape
    v = packed.reshape(Tt, L, 2, 2, C, half).permute(0, 1, 5, 2, 3, 4)
    if cplx:
        return torch.view_as_complex(v.contiguous())
    return v[..., 0].contiguous()


def _check(x: torch.Tensor, tw: torch.Tensor):
    if x.dtype not in _DTYPES or tw.dtype != x.dtype:
        raise TypeError(
            f"the triton butterfly product needs x and twiddle of one dtype among "
            f"{', '.join(map(str, _DTYPES))}; got x {x.dtype}, twiddle {tw.dtype}. "
            f"Convert with .to(...) (Butterfly(...)(x) does this for you)"
        )
    if x.ndim != 3 or tw.ndim != 5 or tuple(tw.shape[-2:]) != (2, 2) or x.shape[-1] != 2 * tw.shape[2]:
        raise ValueError(
            f"expected x of shape (Tx, M, n) and twiddle (Tt, log2(n), n/2, 2, 2); "
            f"got x {tuple(x.shape)}, twiddle {tuple(tw.shape)}"
        )
    Tx, Tt = x.shape[0], tw.shape[0]
    if Tx != Tt and 1 not in (Tx, Tt):
        raise ValueError(f"batch sizes of x ({Tx}) and twiddle ({Tt}) must agree or be 1")
    if x.device != tw.device:
        raise ValueError(f"x is on {x.device} but the twiddles are on {tw.device}; move one with .to(device)")
    if x.device.type == "cuda":
        if INTERPRET:
            raise ValueError(
                "kfit._triton was imported with TRITON_INTERPRET=1 (CPU interpreter) but got CUDA tensors; "
                "unset TRITON_INTERPRET in a fresh process to run the compiled kernels"
            )
    elif x.device.type == "cpu":
        if not INTERPRET:
            raise ValueError(
                "the triton butterfly kernel got CPU tensors but runs on CPU only under the interpreter: "
                "set TRITON_INTERPRET=1 before kfit first uses path='triton' (it is read when the kernels are "
                "defined), or move the tensors to CUDA, or use path='fused'"
            )
    else:
        raise ValueError(f"the triton butterfly kernel runs on CUDA tensors (or CPU under TRITON_INTERPRET=1), got {x.device}")


def _target_programs(device: torch.device) -> int:
    """Programs a launch aims for: a few per SM on CUDA; 1 in the interpreter (which runs
    programs one after the other, so fewer and larger is faster)."""
    if device.type != "cuda":
        return 1
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def _launch_shape(n: int, M: int, T: int, elems: int, ps: dict, programs: int = 1):
    """(BM rows per tile, NRB row blocks, NAB (group, run) tiles per row block, elements per tile).

    BM: as many rows as the tile holds, but small enough for ``programs`` programs in all
    when the batch allows (small batches then still spread over the SMs).
    """
    W = ps["G"] * ps["BB"]
    NAB = (n // (ps["G"] * ps["S"])) * (ps["S"] // ps["BB"])
    spread = max(1, (M * NAB * T) // max(1, programs))
    BM = max(1, min(elems // W, _next_pow2(M), 1 << (spread.bit_length() - 1)))
    return BM, -(-M // BM), NAB, BM * W


def _forward(x, tw_packed, increasing: bool, *, tile: int | None = None, keep: bool = False):
    """Run the forward passes: y (T, M, n), and the inputs of the passes after the first.

    ``keep`` (gradients will be needed): plan the passes for the backward tile, so that the
    backward passes start exactly where the forward ones did, and return their inputs.
    """
    T = max(x.shape[0], tw_packed.shape[0])
    Tx, M, n = x.shape
    Tt, L = tw_packed.shape[:2]
    cplx = x.is_complex()
    cf, twc = (2 if cplx else 1), tw_packed.shape[3]
    elems = _tile_budget(x.dtype, _budget(tile, backward=keep))
    mids = []
    cur, cur_T = x, Tx
    for k, ps in enumerate(_ordered(plan_passes(n, max(2, elems // MIN_ROWS)), L, increasing)):
        if k:
            mids.append(cur)
        out = torch.empty((T, M, n), dtype=x.dtype, device=x.device)
        BM, NRB, NAB, tile_elems = _launch_shape(n, M, T, elems, ps, _target_programs(x.device))
        _butterfly_fwd_kernel[(NAB * NRB * T,)](
            _real_view(cur), tw_packed, _real_view(out), M, NRB,
            0 if cur_T == 1 else M * n * cf, 0 if Tt == 1 else L * 4 * twc * (n // 2), M * n * cf,
            N=n, INCREASING=increasing, BM=BM, CPLX=cplx, TWC=twc,
            num_warps=_num_warps(tile_elems * _scale(x.dtype), FWD_SCALARS_PER_THREAD), **ps,
        )
        cur, cur_T = out, T
    return cur, (mids if keep else [])


def _budget(tile: int | None, backward: bool) -> int:
    if tile is None:
        return BWD_TILE if backward else FWD_TILE
    return max(2, tile // 2) if backward else tile


def _backward(x, mids, tw_packed, gy, increasing: bool, *, tile: int | None = None, programs: int | None = None):
    """Gradients: grad_x (T, M, n) and the packed grad_twiddle (T, L, 4, C, n/2).

    ``mids``: the inputs of the forward passes after the first (``_forward(keep=True)``).
    """
    T, M, n = gy.shape
    Tt, L = tw_packed.shape[:2]
    cplx = gy.is_complex()
    cf, twc = (2 if cplx else 1), tw_packed.shape[3]
    elems = _tile_budget(x.dtype, _budget(tile, backward=True))
    passes = _ordered(plan_passes(n, max(2, elems // MIN_ROWS)), L, increasing)
    inputs = [x, *mids]
    assert len(inputs) == len(passes), "the forward was not run with keep=True"
    P_target = programs or _target_programs(gy.device)
    shapes = [_launch_shape(n, M, T, elems, ps) for ps in passes]
    # P row programs per (member, tile column); one partial-sum slot per program
    Ps = [max(1, min(NRB, -(-P_target // (T * NAB)))) for _, NRB, NAB, _ in shapes]
    P = max(Ps)
    part = torch.zeros((T, P, L, 4, twc, n // 2), dtype=_real_view(gy).dtype, device=gy.device)
    g = gy
    for ps, a, (BM, NRB, NAB, tile_elems), Pk in list(zip(passes, inputs, shapes, Ps))[::-1]:
        gx = torch.empty((T, M, n), dtype=gy.dtype, device=gy.device)
        _butterfly_bwd_kernel[(NAB * Pk * T,)](
            _real_view(a), _real_view(g), tw_packed, _real_view(gx), part, M, NRB, Pk,
            0 if a.shape[0] == 1 else M * n * cf, 0 if Tt == 1 else L * 4 * twc * (n // 2), M * n * cf,
            P * L * 4 * twc * (n // 2),
            N=n, L=L, INCREASING=increasing, BM=BM, CPLX=cplx, TWC=twc, SEG=segment_length(ps["NLV"]),
            num_warps=_num_warps(tile_elems * _scale(x.dtype), BWD_SCALARS_PER_THREAD), **ps,
        )
        g = gx
    return g, part.sum(1)


def _reference_level(x, t, s):
    """One level in torch: x (Tx, M, n), t (Tt, n/2, 2, 2), stride s."""
    Tx, M, n = x.shape
    Tt = t.shape[0]
    nb = n // (2 * s)
    tv = t.reshape(Tt, 1, nb, s, 2, 2)
    xv = x.reshape(Tx, M, nb, 2, s)
    x0, x1 = xv[:, :, :, 0, :], xv[:, :, :, 1, :]
    y0 = tv[..., 0, 0] * x0 + tv[..., 0, 1] * x1
    y1 = tv[..., 1, 0] * x0 + tv[..., 1, 1] * x1
    return torch.stack((y0, y1), dim=3).reshape(max(Tx, Tt), M, n)


def adjoint_twiddle(tw: torch.Tensor) -> torch.Tensor:
    """Twiddles of ``B^H`` (with the opposite stride order): levels reversed, blocks
    conjugate-transposed."""
    t = tw.flip(1).transpose(-1, -2)
    return t.conj().resolve_conj() if t.is_complex() else t


class _ButterflyTriton(torch.autograd.Function):
    """y = B(twiddle) x with the fused kernels; gradients for x and twiddle."""

    @staticmethod
    def forward(ctx, x, tw, increasing, tile, programs):
        keep = any(ctx.needs_input_grad[:2])
        with _on(x.device):
            y, mids = _forward(x, pack_twiddle(tw), increasing, tile=tile, keep=keep)
        ctx.save_for_backward(x, tw, *mids)
        ctx.increasing, ctx.tile, ctx.programs = increasing, tile, programs
        ctx.save_for_forward(x, tw)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, tw, *mids = ctx.saved_tensors
        need_x, need_tw = ctx.needs_input_grad[:2]
        gy = gy.resolve_conj().contiguous()
        T = gy.shape[0]
        if not need_tw:
            # grad_x = B^H grad_y: the forward kernel on the adjoint twiddles
            with _on(gy.device):
                gx, _ = _forward(gy, pack_twiddle(adjoint_twiddle(tw)), not ctx.increasing, tile=ctx.tile)
            gtw = None
        else:
            with _on(gy.device):
                gx, part = _backward(x, mids, pack_twiddle(tw), gy, ctx.increasing, tile=ctx.tile,
                                     programs=ctx.programs)
            if tw.shape[0] == 1 and T > 1:
                part = part.sum(0, keepdim=True)
            gtw = unpack_twiddle(part, tw.is_complex())
        if need_x:
            if x.shape[0] == 1 and T > 1:
                gx = gx.sum(0, keepdim=True)
        else:
            gx = None
        return gx, gtw, None, None, None

    @staticmethod
    def jvp(ctx, dx, dtw, *_):
        """Forward mode, level by level in torch: (a, da) -> (t a, t da + dt a)."""
        from ._products import stride

        x, tw = ctx.saved_tensors  # in jvp: the tensors of save_for_forward
        n = x.shape[-1]
        T = max(x.shape[0], tw.shape[0])
        a, da = x, dx
        for level in range(tw.shape[1]):
            s = stride(n, level, ctx.increasing)
            t = tw[:, level]
            nd = None if da is None else _reference_level(da, t, s)
            if dtw is not None:
                extra = _reference_level(a, dtw[:, level], s)
                nd = extra if nd is None else nd + extra
            a = _reference_level(a, t, s)
            da = nd
        if da is None:
            return torch.zeros((T, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return da.expand(T, *da.shape[1:]).contiguous() if da.shape[0] != T else da


def butterfly_triton(x: torch.Tensor, twiddle: torch.Tensor, increasing: bool, *,
                     tile: int | None = None, programs: int | None = None) -> torch.Tensor:
    """The butterfly product with the fused kernels: x (Tx, M, n), twiddle (Tt, L, n/2, 2, 2)
    of the same dtype (float32/64, complex64/128) -> (T, M, n). Differentiable in x and
    twiddle (reverse and forward mode).

    ``tile`` (scalars per forward tile; the backward uses half) and ``programs`` (backward
    programs, all members together) override the defaults, e.g. so that small tests go
    through the multi-pass and multi-block code.
    """
    _check(x, twiddle)
    if tile is not None and (tile < 4 or tile & (tile - 1)):
        raise ValueError(f"tile must be a power of two >= 4, got {tile}")
    x = x.resolve_conj().contiguous()
    if x.shape[1] == 0:  # nothing to launch; the reference keeps the autograd graph
        from ._products import butterfly_reference

        return butterfly_reference(x, twiddle, increasing)
    return _ButterflyTriton.apply(x, twiddle, bool(increasing), tile, programs)

