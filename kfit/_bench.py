"""Benchmarks (``kfit bench ...``): measured side by side with their baselines, in one run.

Numbers are medians of ``torch.utils.benchmark.Timer.blocked_autorange`` (the CPU product
table: the best of a few interleaved rounds of them) and depend on the machine; nothing
here is asserted by the tests.
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


#: Default sizes of ``kfit bench product``: CPU, and CUDA (the issue's grid, with the kernel).
PRODUCT_NS_CPU, PRODUCT_BATCH_CPU = (256, 1024, 4096), 1024
PRODUCT_NS_CUDA, PRODUCT_BATCHES_CUDA = (256, 1024, 4096, 16384), (1, 256, 4096, 65536)
#: Interleaved timing rounds of the CPU table (the best round of each column is reported).
PRODUCT_ROUNDS = 3
#: Dense baselines (matmul, nn.Linear) above this many real FLOPs per call are skipped ("-"):
#: at batch 65536 and n = 16384 one complex matmul is ~1e14 FLOPs, seconds per call.
DENSE_FLOP_LIMIT = 2e13


def _triton_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def bench_product(ns=None, batch=None, device="cpu", min_run_time: float = 0.3, out=print, *,
                  batches=None, triton: bool | None = None):
    """Time one product on a (batch, n) input: the paths of the butterfly product beside
    a dense matmul and torch.fft.fft for the complex DFT.

    Without the Triton kernel (the default on CPU): reference path, fused path, dense
    matmul, torch.fft; ratios to the fused path; ``ns`` = (256, 1024, 4096), ``batch`` = 1024.
    With it (the default on CUDA when triton is installed; ``triton=True`` forces it, e.g.
    on the CPU under TRITON_INTERPRET=1): the kernel, fused, reference, dense, torch.fft and
    a plain copy of the same bytes (the bandwidth limit), the kernel's GB/s and % of the
    copy bandwidth, ratios to the kernel; then forward+backward against ``nn.Linear``.
    ``ns`` = 256 ... 16384 and ``batches`` = 1 ... 65536 by default there.
    """
    dev = torch.device(device)
    if triton is None:
        triton = dev.type == "cuda" and _triton_importable()
    if batches is None:
        batches = (batch,) if batch is not None else (PRODUCT_BATCHES_CUDA if triton else (PRODUCT_BATCH_CPU,))
    if ns is None:
        ns = PRODUCT_NS_CUDA if triton else PRODUCT_NS_CPU
    if triton:
        return _bench_product_triton(tuple(ns), tuple(batches), dev, min_run_time, out)
    rows = []
    for b in batches:
        rows += _bench_product_plain(tuple(ns), b, dev, min_run_time, out)
    return rows


def _timed(device, min_run_time):
    def timed(f):
        def run():
            f()
            _sync(device)

        return _timer(run, min_run_time)

    return timed


def _bench_product_plain(ns, batch, device, min_run_time, out):
    from . import _numba, known
    from ._butterfly import Butterfly
    from ._products import resolve_path

    kernel = torch.device(device).type == "cpu" and _numba.available()
    out(f"kfit bench product -- batch {batch}; {machine_line(device)}")
    out(f"ms per product: the best of {PRODUCT_ROUNDS} rounds that time every column in turn (each a median); "
        "ratio = baseline ms / auto ms (>1: the K-matrix is faster); auto = the path path='auto' runs, last column")
    header = (f"{'n':>6} {'kind':<22} {'reference':>10} {'fused':>10} {'numba':>10} {'dense':>10} {'torch.fft':>10} "
              f"{'dense/auto':>12} {'fft/auto':>10} {'auto':>6}")
    out(header)
    rows = []
    g = torch.Generator().manual_seed(0)
    timed = _timed(device, min_run_time)
    nan = float("nan")

    def ms(v):
        return f"{'-':>10}" if v != v else f"{v:10.3f}"

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
            fast = resolve_path("auto", n, device, rows=batch, complex_=dtype.is_complex)

            columns = {"reference": lambda: op(x, path="reference"), "fused": lambda: op(x, path="fused"),
                       "dense": lambda: x @ W.T}
            if kernel:
                columns["numba"] = lambda: op(x, path="numba")
            if dtype.is_complex:
                columns["fft"] = lambda: torch.fft.fft(x, norm="ortho")
            # Interleaved rounds: a slow spell of a shared machine hits one round of every
            # column alike instead of one column's only measurement.
            best = {k: timed(f) for k, f in columns.items()}
            for _ in range(PRODUCT_ROUNDS - 1):
                for k, f in columns.items():
                    best[k] = min(best[k], timed(f))
            row = dict(n=n, kind=kind, reference=best["reference"], fused=best["fused"], numba=best.get("numba", nan),
                       dense=best["dense"], fft=best.get("fft", nan), fast=fast)
            rows.append(row)
            t_fast = row[fast]
            fft_ratio = f"{row['fft'] / t_fast:10.2f}" if dtype.is_complex else f"{'-':>10}"
            out(
                f"{n:>6} {kind:<22} {ms(row['reference'])} {ms(row['fused'])} {ms(row['numba'])} {ms(row['dense'])} "
                f"{ms(row['fft'])} {row['dense'] / t_fast:12.2f} {fft_ratio} {fast:>6}"
            )
    return rows


def _bench_product_triton(ns, batches, device, min_run_time, out):
    """The CUDA table: the fused Triton kernel against every other path and the limits."""
    from . import known
    from ._butterfly import Butterfly

    nan = float("nan")
    timed = _timed(device, min_run_time)

    def attempt(f, skip=False):
        """ms, or nan when skipped (too large) or out of memory."""
        if skip:
            return nan
        try:
            return timed(f)
        except torch.cuda.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return nan

    def ms(v, w=9):
        return f"{'-':>{w}}" if v != v else f"{v:{w}.3f}"

    def ratio(a, b, w=8):
        return f"{'-':>{w}}" if a != a or b != b else f"{a / b:{w}.2f}"

    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    out(f"kfit bench product -- batches {', '.join(map(str, batches))}; {machine_line(device)}")
    out("ms per product (median). copy = dst.copy_(x) of the same bytes (read x, write y): the bandwidth limit;")
    out("GB/s and %copy for the kernel (bytes of x + y / time); ratios = baseline ms / kernel ms (>1: kernel faster)")
    out(f"dense = x @ W.T ({'TF32 allowed' if tf32 else 'full fp32, no TF32'}), skipped ('-') above {DENSE_FLOP_LIMIT:.0e} FLOPs; "
        "'-' also marks out of memory")
    out(f"{'n':>6} {'batch':>6} {'kind':<18} {'triton':>9} {'fused':>9} {'reference':>9} {'dense':>9} {'torch.fft':>9} "
        f"{'copy':>9} {'GB/s':>7} {'%copy':>6} {'dense/k':>8} {'fft/k':>8}")
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in ns:
        for kind in ("real butterfly f32", "cplx butterfly c64", "complex DFT c64"):
            dtype = torch.float32 if kind.startswith("real") else torch.complex64
            if kind.startswith("complex DFT"):
                op = known.dft(n, dtype=dtype, device=device)
            else:
                op = Butterfly.random(n, dtype=dtype, generator=g).to(device)
            cf = 4 if dtype.is_complex else 1  # real FLOPs per scalar multiply-add
            W = None
            for batch in batches:
                try:
                    x = torch.randn(batch, n, dtype=dtype, generator=g).to(device)
                    dst = torch.empty_like(x)
                except torch.cuda.OutOfMemoryError:
                    out(f"{n:>6} {batch:>6} {kind:<18} out of memory for the input")
                    continue
                big = 2 * batch * n * n * cf > DENSE_FLOP_LIMIT
                if W is None and not big:
                    W = torch.randn(n, n, dtype=dtype, generator=g).to(device)
                t_k = attempt(lambda: op(x, path="triton"))
                t_fused = attempt(lambda: op(x, path="fused"))
                t_ref = attempt(lambda: op(x, path="reference"))
                t_dense = attempt(lambda: x @ W.T, skip=big)
                t_fft = attempt(lambda: torch.fft.fft(x, norm="ortho"), skip=not kind.startswith("complex DFT"))
                t_copy = attempt(lambda: dst.copy_(x))
                gbs = 2 * x.numel() * x.element_size() / (t_k * 1e-3) / 1e9
                pct = 100 * t_copy / t_k
                out(f"{n:>6} {batch:>6} {kind:<18} {ms(t_k)} {ms(t_fused)} {ms(t_ref)} {ms(t_dense)} {ms(t_fft)} "
                    f"{ms(t_copy)} {gbs:7.1f} {pct:6.1f} {ratio(t_dense, t_k)} {ratio(t_fft, t_k)}")
                rows.append(dict(n=n, batch=batch, kind=kind, triton=t_k, fused=t_fused, reference=t_ref,
                                 dense=t_dense, fft=t_fft, copy=t_copy, gbs=gbs, pct_copy=pct))
                x = dst = None  # free before the next (larger) batch is allocated
    rows += _bench_backward(ns, batches, device, timed, attempt, ms, ratio, out)
    return rows


def _bench_backward(ns, batches, device, timed, attempt, ms, ratio, out):
    """Forward + backward (grads for x and the parameters) against nn.Linear (no bias)."""
    from ._butterfly import Butterfly

    out("")
    out("forward + backward (x and parameters require grad), ms; linear = torch.nn.Linear(n, n, bias=False)")
    out(f"{'n':>6} {'batch':>6} {'kind':<18} {'triton':>9} {'fused':>9} {'linear':>9} {'linear/k':>8} {'fused/k':>8}")
    rows = []
    g = torch.Generator().manual_seed(1)
    for n in ns:
        for kind in ("real butterfly f32", "cplx butterfly c64"):
            dtype = torch.float32 if kind.startswith("real") else torch.complex64
            tw = Butterfly.random(n, dtype=dtype, generator=g).twiddle.to(device).requires_grad_()
            B = Butterfly(tw)
            cf = 4 if dtype.is_complex else 1
            lin = None
            for batch in batches:
                try:
                    x = torch.randn(batch, n, dtype=dtype, generator=g).to(device).requires_grad_()
                    gy = torch.randn(batch, n, dtype=dtype, generator=g).to(device)
                except torch.cuda.OutOfMemoryError:
                    out(f"{n:>6} {batch:>6} {kind:<18} out of memory for the input")
                    continue
                big = 3 * 2 * batch * n * n * cf > DENSE_FLOP_LIMIT
                if lin is None and not big:
                    lin = torch.nn.Linear(n, n, bias=False, dtype=dtype, device=device)

                def step(f):
                    def run():
                        x.grad = None
                        f(x).backward(gy)

                    return run

                t_k = attempt(step(lambda v: B(v, path="triton")))
                t_fused = attempt(step(lambda v: B(v, path="fused")))
                t_lin = attempt(step(lambda v: lin(v)), skip=big)
                out(f"{n:>6} {batch:>6} {kind:<18} {ms(t_k)} {ms(t_fused)} {ms(t_lin)} {ratio(t_lin, t_k)} {ratio(t_fused, t_k)}")
                rows.append(dict(n=n, batch=batch, kind=kind, backward=True, triton=t_k, fused=t_fused, linear=t_lin))
                x = gy = None
    return rows


def bench_identify(ns=(256, 1024, 4096), repeats: int = 3, out=print):
    """Time ``solvers.identify`` on the DFT under random row and column permutations,
    beside one dense matmul of the same size (complex128) for scale."""
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


def bench_fit(ns=(8, 16, 32, 64, 128, 256), targets=FIT_TARGETS, time_budget=600.0, restarts=8, device="cpu",
              closed_form=True, projection=True, splitting=True, out=print):
    """Run the automatic search (``solvers.fit``: closed-form and spectral identification,
    then fits from random starts -- alternating projections for a real target, recursive
    splitting into ``B · B*``, gradient fits; ``closed_form=False``: the fits alone;
    ``projection=False, splitting=False`` as well: the gradient fits alone) on the issue's
    targets; print status, error, structure, parameters, wall time and the solver that
    answered, per case."""
    import solvers

    from . import targets as registry

    steps = "auto" if closed_form else "auto, fits from random starts only: no closed forms"
    if not projection:
        steps += ", no alternating projections"
    if not splitting:
        steps += ", no splitting"
    out(f"kfit bench fit -- solvers.fit ({steps}), budget {time_budget:g} s per case, {restarts} starts; {machine_line(device)}")
    out(f"{'target':<10} {'n':>5} {'status':<13} {'error':>9} {'seconds':>8} {'params':>8} {'dense':>7}  structure (solver)")
    rows = []
    for name in targets:
        for n in ns:
            M = registry.get(name, n)
            r = solvers.fit(M, time_budget=time_budget, restarts=restarts, device=device, closed_form=closed_form,
                            projection=projection, splitting=splitting)
            K = r.kmatrix
            structure = K.structure() if K is not None else "-"
            dense = n * n * (2 if M.is_complex() else 1)
            params = K.n_params if K is not None else 0
            out(f"{name:<10} {n:>5} {r.status:<13} {r.error:9.1e} {r.seconds:8.1f} {params:>8} {dense:>7}  {structure} ({r.solver})")
            rows.append(dict(target=name, n=n, status=r.status, error=r.error, seconds=r.seconds, structure=structure, solver=r.solver))
    return rows
