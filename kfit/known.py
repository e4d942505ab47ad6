"""The classical fast algorithms, built exactly as K-matrices (ground truth for solvers).

Every constructor states the factorization it builds and the target it equals (scipy's
conventions, ``norm="ortho"``); the tests check each against its scipy/numpy target.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._butterfly import Butterfly
from ._kmatrix import KMatrix
from ._permutation import Diagonal, Permutation
from ._validate import check_finite, check_power_of_two, complex_dtype_of, real_dtype_of


def _dit_twiddles(n: int, sign: int, dtype) -> torch.Tensor:
    """Radix-2 decimation-in-time twiddles, increasing strides, each level scaled 1/sqrt(2).

    Level with stride s, pair (i, i+s) at offset j in its block:
    ``[[1, w^j], [1, -w^j]] / sqrt(2)`` with ``w = exp(sign * 2*pi*i / (2s))``.
    """
    L = n.bit_length() - 1
    half = n // 2
    p = torch.arange(half, dtype=torch.float64)
    levels = []
    for lv in range(L):
        s = 1 << lv
        j = torch.remainder(p, s)
        w = torch.exp(sign * 2j * math.pi * j / (2 * s))
        one = torch.ones_like(w)
        levels.append(torch.stack((torch.stack((one, w), -1), torch.stack((one, -w), -1)), -2))
    return (torch.stack(levels) / math.sqrt(2)).to(dtype)


def dft(n: int, *, inverse: bool = False, dtype=torch.complex128, device=None) -> KMatrix:
    r"""The unitary DFT as ``B · P_bitrev`` (Cooley–Tukey, decimation in time).

    Equals ``scipy.fft.fft(np.eye(n), norm="ortho", axis=0)``, i.e.
    :math:`F_{jk} = e^{-2\pi i jk/n}/\sqrt{n}` (``inverse=True``: ``ifft``, the conjugate).
    """
    n = check_power_of_two(n)
    dtype = complex_dtype_of(dtype)
    tw = _dit_twiddles(n, +1 if inverse else -1, dtype).to(device)
    return KMatrix([Butterfly(tw, increasing=True), Permutation.bit_reversal(n, dtype=real_dtype_of(dtype), device=device)])


def idft(n: int, **kw) -> KMatrix:
    """The unitary inverse DFT (``scipy.fft.ifft(..., norm="ortho")``) as ``B · P_bitrev``."""
    return dft(n, inverse=True, **kw)


def hadamard(n: int, *, dtype=torch.float64, device=None) -> KMatrix:
    r"""The normalised Sylvester–Walsh–Hadamard matrix ``H_n / sqrt(n)`` as one real
    butterfly ``B`` with every block ``[[1, 1], [1, -1]] / sqrt(2)``.

    Equals ``scipy.linalg.hadamard(n) / sqrt(n)``: :math:`H_{ij} = (-1)^{\mathrm{popcount}(i \& j)}/\sqrt{n}`.
    """
    n = check_power_of_two(n)
    L = n.bit_length() - 1
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2)
    tw = h.expand(L, n // 2, 2, 2).to(dtype=dtype, device=device).clone()
    return KMatrix([Butterfly(tw, increasing=True)])


def _circulant_factors(kernel: torch.Tensor, dtype) -> list:
    """``C = conj(B) · diag(fft(c)[bitrev]) · B^T`` with ``B`` the DIT butterfly (B · B*)."""
    n = kernel.shape[-1]
    B = Butterfly(_dit_twiddles(n, -1, torch.complex128), increasing=True)
    rev = Permutation.bit_reversal(n).perm
    d = torch.fft.fft(kernel.to(torch.complex128))[rev]
    left = Butterfly(B.twiddle.conj().resolve_conj(), increasing=True)
    return [left.to(dtype), Diagonal(d.to(dtype)), B.transpose().to(dtype)]


def _as_vector(v, name):
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {tuple(t.shape)}")
    if not (t.dtype.is_floating_point or t.dtype.is_complex):
        t = t.to(torch.float64)
    check_finite(t, name)
    return t.to(torch.complex128 if t.is_complex() else torch.float64).cpu()


def circulant(kernel, *, dtype=None, device=None) -> KMatrix:
    r"""Circular convolution with ``kernel`` as ``B · diag · B*`` (FFT, pointwise, inverse FFT).

    Equals ``scipy.linalg.circulant(kernel)``: :math:`C_{ij} = c_{(i-j) \bmod n}`, so
    ``C @ x = ifft(fft(c) * fft(x))``. The butterflies are complex; for a real kernel the
    K-matrix takes the real part of its output (exact, since ``C`` is real).
    """
    c = _as_vector(kernel, "kernel")
    check_power_of_two(c.numel(), "len(kernel)")
    dtype = complex_dtype_of(dtype or torch.float64)
    fs = [f.to(device) for f in _circulant_factors(c, dtype)]
    return KMatrix(fs, real_output=not c.is_complex())


def toeplitz(c, r=None, *, dtype=None, device=None) -> KMatrix:
    r"""A Toeplitz matrix as the corner of a circulant of twice the size (expansion 2).

    Equals ``scipy.linalg.toeplitz(c, r)`` (first column ``c``, first row ``r``;
    ``r = conj(c)`` when omitted, as scipy does): the circulant of size 2n with kernel
    ``[c_0, ..., c_{n-1}, 0, r_{n-1}, ..., r_1]`` has ``T`` as its top-left corner.
    """
    c = _as_vector(c, "c")
    r = c.conj() if r is None else _as_vector(r, "r")
    if r.numel() != c.numel():
        raise ValueError(f"c and r must have the same length, got {c.numel()} and {r.numel()}")
    check_power_of_two(c.numel(), "len(c)")
    cplx = c.is_complex() or r.is_complex()
    dt = torch.complex128 if cplx else torch.float64
    kernel = torch.cat([c.to(dt), torch.zeros(1, dtype=dt), r.to(dt).flip(0)[:-1]])
    dtype = complex_dtype_of(dtype or torch.float64)
    fs = [f.to(device) for f in _circulant_factors(kernel, dtype)]
    return KMatrix(fs, expansion=2, real_output=not cplx)


def _makhoul(n: int, dtype, device):
    """DCT-II (ortho) = Re(D · B · P): Makhoul's even/odd reordering, an FFT, a phase."""
    rev = Permutation.bit_reversal(n).perm
    k = torch.arange(n)
    v = torch.empty(n, dtype=torch.int64)
    v[: (n + 1) // 2] = 2 * k[: (n + 1) // 2]
    v[n - 1 - k[: n // 2]] = 2 * k[: n // 2] + 1
    q = v[rev]  # first reorder (v), then bit-reverse for the DIT butterfly
    f = torch.full((n,), math.sqrt(1 / (2 * n)), dtype=torch.float64)
    f[0] = math.sqrt(1 / (4 * n))
    # V = fft(v) = sqrt(n) * F_ortho v, and X_k = Re(2 f_k e^{-i pi k / 2n} V_k).
    d = 2 * f * math.sqrt(n) * torch.exp(-1j * math.pi * k.to(torch.float64) / (2 * n))
    B = Butterfly(_dit_twiddles(n, -1, dtype), increasing=True)
    return [Diagonal(d.to(dtype)), B, Permutation(q, dtype=real_dtype_of(dtype))], device


def dct2(n: int, *, dtype=torch.complex128, device=None) -> KMatrix:
    r"""The orthonormal DCT-II as ``Re(D · B · P)`` (Makhoul's algorithm via the FFT).

    Equals ``scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)``:
    :math:`y_k = 2 f_k \sum_m x_m \cos(\pi k (2m+1) / 2n)`, :math:`f_0 = \sqrt{1/4n}`,
    :math:`f_k = \sqrt{1/2n}`. ``P`` is the even/odd reordering followed by bit reversal,
    ``B`` the complex DIT butterfly, ``D`` the phases :math:`2 f_k \sqrt{n} e^{-i\pi k/2n}`.
    """
    n = check_power_of_two(n)
    fs, device = _makhoul(n, complex_dtype_of(dtype), device)
    return KMatrix([f.to(device) for f in fs], real_output=True)


def dst2(n: int, *, dtype=torch.complex128, device=None) -> KMatrix:
    r"""The orthonormal DST-II as ``Re(J · D · B · P · S)`` via the DCT-II.

    Equals ``scipy.fft.dst(np.eye(n), type=2, norm="ortho", axis=0)``. Uses
    :math:`\mathrm{DST}_k(x) = \mathrm{DCT}_{n-1-k}((-1)^m x_m)`: ``S = diag((-1)^m)``,
    ``J`` the reversal permutation.
    """
    n = check_power_of_two(n)
    dtype = complex_dtype_of(dtype)
    fs, device = _makhoul(n, dtype, device)
    J = Permutation(torch.arange(n - 1, -1, -1), dtype=real_dtype_of(dtype))
    S = Diagonal(((-1.0) ** torch.arange(n, dtype=torch.float64)).to(real_dtype_of(dtype)))
    return KMatrix([f.to(device) for f in [J, *fs, S]], real_output=True)


def permutation(perm, *, dtype=torch.float64, device=None) -> KMatrix:
    r"""Any permutation (``(P x)[i] = x[perm[i]]``) as ``B · B*``: a Beneš network with
    exact 0/1 twiddles, routed by the looping algorithm in O(n log n).

    ``B*`` (decreasing strides n/2 ... 1) acts first, then ``B`` (increasing strides
    1 ... n/2, its stride-1 level the identity): 2 log2(n) - 1 switch layers.
    """
    from ._benes import benes_twiddles

    perm = perm.perm if isinstance(perm, Permutation) else perm
    idx = perm.cpu().numpy() if isinstance(perm, torch.Tensor) else np.asarray(perm)
    tw_dec, tw_inc = benes_twiddles(idx)
    to = dict(dtype=dtype, device=device)
    return KMatrix(
        [Butterfly(torch.as_tensor(tw_inc).to(**to), increasing=True),
         Butterfly(torch.as_tensor(tw_dec).to(**to), increasing=False)]
    )
