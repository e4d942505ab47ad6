"""Benchmarks (``kfit bench ...``): measured side by side with their baselines, in one run.

Numbers are medians of ``torch.utils.benchmark.Timer.blocked_autorange`` and depend on
the machine; nothing here is asserted by the tests.
"""
from __future__ import annotations

import platform

import torch


def _timer(fn, min_run_time: float) -> float:
    from torch.utils.benchmark import Timer

    fn()  # warm up (allocations, lazy init)
    # Timer defaults to one thread; measure with the threads torch will really use.
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine_line(device="cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"torch {torch.__version__} on {dev.type}: {name}"


def bench_product(ns=(256, 1024, 4096), batch: int = 1024, device="cpu", min_run_time: float = 0.3, out=print):
    """Time one product on a (batch, n) input: reference path, fused path, dense matmul,
    and torch.fft.fft for the complex DFT; prints ms and the ratios to the fused path."""
    from . import known
    from ._butterfly import Butterfly

    out(f"kfit bench product -- batch {batch}; {machine_line(device)}")
    out("ms per product (median); ratio = baseline ms / fused ms (>1: the K-matrix is faster)")
    header = f"{'n':>6} {'kind':<22} {'reference':>10} {'fused':>10} {'dense':>10} {'torch.fft':>10} {'dense/fused':>12} {'fft/fused':>10}"
    out(header)
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in ns:
        for kind in ("real butterfly f32", "complex DFT c64"):
            if kind.startswith("real"):
                op = Butterfly.random(n, dtype=torch.float32, generator=g).to(device)
                dtype = torch.float32
            else:
                op = known.dft(n, dtype=torch.complex64, device=device)
                dtype = torch.complex64
            x = torch.randn(batch, n, dtype=dtype, generator=g).to(device)
            W = torch.randn(n, n, dtype=dtype, generator=g).to(device)

            def timed(f):
                def run():
                    f()
                    _sync(device)

                return _timer(run, min_run_time)

            t_ref = timed(lambda: op(x, path="reference"))
            t_fused = timed(lambda: op(x, path="fused"))
            t_dense = timed(lambda: x @ W.T)
            t_fft = timed(lambda: torch.fft.fft(x, norm="ortho")) if dtype.is_complex else float("nan")
            row = dict(n=n, kind=kind, reference=t_ref, fused=t_fused, dense=t_dense, fft=t_fft)
            rows.append(row)
            fft_ratio = f"{t_fft / t_fused:10.2f}" if dtype.is_complex else f"{'-':>10}"
            fft_ms = f"{t_fft:10.3f}" if dtype.is_complex else f"{'-':>10}"
            out(
                f"{n:>6} {kind:<22} {t_ref:10.3f} {t_fused:10.3f} {t_dense:10.3f} {fft_ms} "
                f"{t_dense / t_fused:12.2f} {fft_ratio}"
            )
    return rows


def bench_identify(ns=(256, 1024, 4096), repeats: int = 3, out=print):
    """Time ``solvers.identify`` on the DFT under random row and column permutations,
    beside one dense matmul of the same size (complex128) for scale."""
    import time

    import solvers

    from . import targets

    out(f"kfit bench identify -- DFT with random row and column permutations; {machine_line()}")
    out("seconds, best of %d: structure = recovery of P_out, B, P_in; total = + dense float64 error check" % repeats)
    out(f"{'n':>6} {'structure':>10} {'total':>10} {'error':>10} {'matmul':>10} {'total/matmul':>13} {'growth':>8}")
    rows, prev = [], None
    g = torch.Generator().manual_seed(0)
    for n in ns:
        M = targets.get("dft", n)
        X = M[torch.randperm(n, generator=g)][:, torch.randperm(n, generator=g)]
        best = None
        for _ in range(repeats):
            r = solvers.identify(X)
            cur = (r.info["seconds_structure"], r.seconds)
            best = cur if best is None or cur[1] < best[1] else best
        t_mm = min(_wall(lambda: X @ M) for _ in range(max(1, repeats if n <= 2048 else 1)))
        growth = f"{best[1] / prev[1]:8.1f}" if prev else f"{'-':>8}"
        out(f"{n:>6} {best[0]:10.3f} {best[1]:10.3f} {r.error:10.1e} {t_mm:10.3f} {best[1] / t_mm:13.3f} {growth}")
        rows.append(dict(n=n, structure=best[0], total=best[1], error=r.error, status=r.status, matmul=t_mm))
        prev = best
    out("growth = total(n) / total(previous n); O(n^2) means 16 for a 4x larger n, O(n^3) 64")
    return rows


def _wall(fn) -> float:
    import time

    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


FIT_TARGETS = ("dft", "idft", "hadamard", "dct2", "dst2", "dct4", "hartley", "circulant", "toeplitz")


def bench_fit(ns=(8, 16, 32, 64, 128, 256), targets=FIT_TARGETS, time_budget=600.0, restarts=8, device="cpu", out=print):
    """Run the automatic search (``solvers.fit``) on the issue's targets from random
    initialisation; print status, error, structure, parameters and wall time per case."""
    import solvers

    from . import targets as registry

    out(f"kfit bench fit -- solvers.fit (auto), budget {time_budget:g} s per case, {restarts} starts; {machine_line(device)}")
    out(f"{'target':<10} {'n':>5} {'status':<13} {'error':>9} {'seconds':>8} {'params':>8} {'dense':>7}  structure (solver)")
    rows = []
    for name in targets:
        for n in ns:
            M = registry.get(name, n)
            r = solvers.fit(M, time_budget=time_budget, restarts=restarts, device=device)
            K = r.kmatrix
            structure = K.structure() if K is not None else "-"
            dense = n * n * (2 if M.is_complex() else 1)
            params = K.n_params if K is not None else 0
            out(f"{name:<10} {n:>5} {r.status:<13} {r.error:9.1e} {r.seconds:8.1f} {params:>8} {dense:>7}  {structure} ({r.solver})")
            rows.append(dict(target=name, n=n, status=r.status, error=r.error, seconds=r.seconds, structure=structure, solver=r.solver))
    return rows
