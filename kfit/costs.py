"""Cost accounting: parameters and FLOPs, with the dense and FFT baselines (DESIGN.md).

Conventions
-----------
* Parameters = stored scalars; a complex scalar counts as 2 real. Permutation index
  vectors are reported separately (``n_indices``), not as parameters.
* FLOPs = real multiplies + real adds for one mat-vec on a vector of the matrix's own
  domain (real for a real matrix, complex for a complex one). A complex multiply costs 6,
  a complex add 2, a real-by-complex multiply 2.
* Dense baseline: ``2 n^2`` FLOPs for a real matrix (n^2 multiplies and n(n-1) adds,
  rounded up as is customary), ``8 n^2`` for a complex one; ``n^2`` / ``2 n^2`` parameters.
* FFT baseline: ``5 n log2(n)`` FLOPs (the classical radix-2 complex FFT count).
"""
from __future__ import annotations

import math


def dense_params(n: int, complex: bool = False) -> int:
    return n * n * (2 if complex else 1)


def dense_flops(n: int, complex: bool = False) -> int:
    return (8 if complex else 2) * n * n


def fft_flops(n: int) -> float:
    return 5 * n * math.log2(n)


def summary(op) -> dict:
    """Parameters and FLOPs of ``op`` beside the dense and FFT baselines, with ratios."""
    n, cplx = op.n, op.output_is_complex
    out = {
        "n": n,
        "complex": cplx,
        "n_params": op.n_params,
        "flops": op.flops,
        "dense_params": dense_params(n, cplx),
        "dense_flops": dense_flops(n, cplx),
        "fft_flops": fft_flops(n),
    }
    out["params_ratio_vs_dense"] = out["n_params"] / out["dense_params"]
    out["flops_ratio_vs_dense"] = out["flops"] / out["dense_flops"]
    out["flops_ratio_vs_fft"] = out["flops"] / out["fft_flops"]
    return out


def format_summary(op) -> str:
    s = summary(op)
    ratio = s["dense_flops"] / max(s["flops"], 1)
    vs_dense = f"x{ratio:.1f} fewer" if ratio >= 1 else f"x{1 / ratio:.1f} more"
    return (
        f"parameters {s['n_params']:,} (dense {s['dense_params']:,}, ratio {s['params_ratio_vs_dense']:.4f}); "
        f"FLOPs {s['flops']:,} (dense {s['dense_flops']:,}, {vs_dense}; "
        f"FFT 5n·log2n = {s['fft_flops']:,.0f}, ratio {s['flops_ratio_vs_fft']:.2f})"
    )
