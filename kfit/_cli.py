"""The ``kfit`` command line."""
from __future__ import annotations

import argparse
import sys


def _cmd_demo(args) -> int:
    import torch

    from . import costs, known, targets
    from ._bench import _timer, machine_line
    from ._error import relative_error

    n = args.n
    K = known.dft(n)
    M = targets.get("dft", n)
    err = relative_error(K, M)
    print(f"DFT of size {n} as a K-matrix (Cooley–Tukey, built in closed form): {K.structure()}")
    print(f"  error vs scipy.fft.fft(I, norm='ortho'): {err}, dtype {K.dtype}")
    print(f"  {costs.format_summary(K)}")
    g = torch.Generator().manual_seed(0)
    K32 = known.dft(n, dtype=torch.complex64)
    x = torch.randn(args.batch, n, dtype=torch.complex64, generator=g)
    W = M.to(torch.complex64)
    t_k = _timer(lambda: K32(x), 0.3)
    t_d = _timer(lambda: x @ W.T, 0.3)
    t_f = _timer(lambda: torch.fft.fft(x, norm="ortho"), 0.3)
    print(f"  product on a ({args.batch}, {n}) complex64 batch, {machine_line()}:")
    print(f"    K-matrix {t_k:8.3f} ms   dense matmul {t_d:8.3f} ms ({t_d / t_k:.1f}x)   torch.fft {t_f:8.3f} ms ({t_f / t_k:.2f}x)")
    return 0 if err.value <= 1e-12 else 1


def _cmd_bench(args) -> int:
    from . import _bench

    if args.what == "product":
        ns = tuple(args.n) if args.n else (256, 1024, 4096)
        _bench.bench_product(ns=ns, batch=args.batch, device=args.device, min_run_time=args.min_time)
        return 0
    raise SystemExit(f"kfit bench: unknown benchmark {args.what!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kfit", description="Recover fast algorithms (butterfly / K-matrix factorizations) of matrices.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="build the DFT as a K-matrix, check it, print its costs and speed")
    d.add_argument("-n", type=int, default=1024, help="size (a power of two; default 1024)")
    d.add_argument("--batch", type=int, default=1024, help="vectors per product in the timing (default 1024)")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("bench", help="benchmarks, printed beside their baselines")
    b.add_argument("what", choices=["product"], help="which benchmark")
    b.add_argument("-n", type=int, nargs="*", help="sizes (default 256 1024 4096)")
    b.add_argument("--batch", type=int, default=1024)
    b.add_argument("--device", default="cpu")
    b.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per measurement")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        # Input errors carry their own explanation; no traceback for the user.
        print(f"kfit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
