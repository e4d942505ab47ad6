"""The ``kfit`` command line."""
from __future__ import annotations

import argparse
import os
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


def _describe_perm(P) -> str:
    import torch

    from ._permutation import Permutation

    if P == Permutation.identity(P.n):
        return "identity"
    if P == Permutation.bit_reversal(P.n):  # an involution: its inverse is itself
        return "bit reversal"
    moved = int((P.perm != torch.arange(P.n)).sum())
    return f"general ({moved} of {P.n} indices moved)"


def _cmd_fit(args) -> int:
    import json

    import solvers

    from ._matrix_input import as_matrix
    from ._permutation import Permutation

    from pathlib import Path

    from . import targets

    is_file = Path(str(args.target)).suffix in (".npy", ".npz") or Path(str(args.target)).exists()
    if not is_file and str(args.target).lower() in targets.names() and args.n is None:
        raise ValueError(f"TARGET {args.target!r} is a registry target: give its size with -n N (a power of two), e.g. kfit fit {args.target} -n 64")
    params = {"seed": args.seed} if args.seed is not None else {}
    if params and not is_file:
        M = targets.get(args.target, args.n, **params)
    else:
        M = as_matrix(args.target, "TARGET", n=args.n)
    overrides = {k: v for k, v in (("tol", args.tol),) if v is not None}
    progress = not args.json and sys.stderr.isatty()
    restarts = 8 if args.restarts is None else args.restarts
    for flag, given in (("--no-closed-form", args.no_closed_form), ("--no-projection", args.no_projection),
                        ("--no-splitting", args.no_splitting)):
        if given and (args.solver != "auto" or args.resume):
            raise ValueError(
                f"{flag} chooses the steps of --solver auto, but "
                + ("--resume continues a gradient fit" if args.resume else f"--solver is {args.solver!r}")
                + f": drop {flag}"
            )
    if args.resume:
        from ._io import load

        if args.solver not in ("auto", "gradient"):
            raise ValueError(
                f"--resume continues a gradient fit, but --solver is {args.solver!r}: drop --solver (or use gradient)"
            )
        structural = [flag for flag, given in (
            ("--chain", args.chain), ("--complex", args.complex), ("--real-output", args.real_output),
            ("--expansion", args.expansion is not None), ("--restarts", args.restarts is not None),
        ) if given]
        if structural:
            raise ValueError(
                f"--resume takes the structure and the start from {args.resume}, so {', '.join(structural)} "
                "would be ignored: drop them (or fit anew without --resume)"
            )
        result = solvers.refine(M, load(args.resume), time_budget=args.time_budget, progress=progress,
                                device=args.device, **overrides)
    elif args.solver == "identify":
        result = solvers.identify(M, **overrides)
    elif args.solver == "identify-real":
        result = solvers.identify_real(M, **overrides)
    elif args.solver == "projection":
        result = solvers.fit_projection(M, time_budget=args.time_budget, seed=args.fit_seed, progress=progress,
                                        **overrides)
    elif args.solver == "splitting":
        result = solvers.fit_splitting(M, time_budget=args.time_budget, seed=args.fit_seed, progress=progress,
                                       **overrides)
    elif args.solver == "permutation":
        result = solvers.route_permutation(M)
    elif args.solver == "spectral":
        result = solvers.spectral(M, **overrides)
    elif args.solver == "gradient":
        chain = tuple(args.chain.split()) if args.chain else ("B", "B*")
        result = solvers.fit_gradient(
            M, chain=chain, complex=args.complex, real_output=args.real_output,
            expansion=1 if args.expansion is None else args.expansion, restarts=restarts,
            time_budget=args.time_budget, seed=args.fit_seed, progress=progress, device=args.device, **overrides,
        )
    elif args.solver == "auto":
        result = solvers.fit(M, restarts=restarts, time_budget=args.time_budget, seed=args.fit_seed, progress=progress,
                             device=args.device, closed_form=not args.no_closed_form,
                             projection=not args.no_projection, splitting=not args.no_splitting, **overrides)
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(f"unknown solver {args.solver!r}")
    K = result.kmatrix
    if args.save and K is not None:
        from ._io import save

        save(K, args.save, metadata={"target": str(args.target), "n": M.shape[0], **result.to_dict()})
    if args.json:
        out = result.to_dict()
        out["target"] = str(args.target)
        out.pop("info", None) if not args.verbose else None
        if args.save:
            out["saved_to"] = str(args.save)
        print(json.dumps(out, indent=None if not args.verbose else 2))
    else:
        print(f"target     {args.target} (n = {M.shape[0]}, {str(M.dtype).replace('torch.', '')})")
        print(result.summary())
        if K is not None:
            perms = [f for f in K.factors if isinstance(f, Permutation)]
            n_bf = len(K.butterflies)
            desc = []
            if isinstance(K.factors[0], Permutation):
                desc.append(f"row permutation P_out: {_describe_perm(K.factors[0])}")
            if isinstance(K.factors[-1], Permutation):
                desc.append(f"column permutation P_in: {_describe_perm(K.factors[-1])}")
            if not perms:
                desc.append("no permutations")
            print(f"factors    {n_bf} butterfly ({n_bf * K.butterflies[0].log_n} sparse levels); " + "; ".join(desc))
        if args.save and K is not None:
            print(f"saved      {args.save} (read back with kfit.load)")
    return 0 if result.status in ("exact", "converged") else 1


def _cmd_bench(args) -> int:
    from . import _bench

    if args.what == "product":
        # defaults by device: CPU n = 256 1024 4096, batch 1024; CUDA the grid with the kernel
        _bench.bench_product(ns=tuple(args.n) if args.n else None, batch=args.batch, device=args.device,
                             min_run_time=args.min_time, batches=tuple(args.batches) if args.batches else None)
        return 0
    if args.what == "fit":
        ns = tuple(args.n) if args.n else (8, 16, 32, 64, 128, 256)
        names = tuple(args.targets.split(",")) if args.targets else _bench.FIT_TARGETS
        _bench.bench_fit(ns=ns, targets=names, time_budget=args.time_budget, restarts=args.restarts, device=args.device,
                         closed_form=not args.no_closed_form, projection=not args.no_projection,
                         splitting=not args.no_splitting)
        return 0
    if args.what == "identify":
        ns = tuple(args.n) if args.n else (256, 1024, 4096)
        _bench.bench_identify(ns=ns, repeats=args.repeats)
        return 0
    raise SystemExit(f"kfit bench: unknown benchmark {args.what!r}")


def _cmd_catalog(args) -> int:
    import json

    from . import catalog

    root = args.root
    if args.action == "build":
        names = tuple(t.strip() for t in args.targets.split(",")) if args.targets else catalog.CATALOG_TARGETS
        if args.max_n < args.min_n:
            raise ValueError(f"--max-n ({args.max_n}) must be at least --min-n ({args.min_n})")
        ns = tuple(n for n in (2 ** k for k in range(1, 31)) if args.min_n <= n <= args.max_n)
        if not ns:
            raise ValueError(f"no power of two lies in [--min-n {args.min_n}, --max-n {args.max_n}]")
        counts = catalog.build(names, ns, root=root, device=args.device, time_budget=args.time_budget,
                               restarts=args.restarts, force=args.force, keep_going=args.keep_going,
                               progress=sys.stderr.isatty())
        print(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) + f"; catalog at {catalog._root(root)}")
        return 0
    if args.action == "list":
        rows = catalog.rows(root)
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        if not rows:
            print(f"the catalog at {catalog._root(root)} is empty (build it with `kfit catalog build`)")
            return 0
        print(f"{'entry':<34} {'n':>5} {'structure':<22} {'error':>9} {'params':>9} {'FLOPs':>10} {'compr.':>7} {'speed-up':>8}")
        for r in rows:
            sp = "-" if r["speedup_vs_dense"] is None else f"{r['speedup_vs_dense']:.2f}x"
            print(f"{r['entry']:<34} {r['n']:>5} {r['structure']:<22} {r['error']:9.1e} {r['n_params']:>9,} "
                  f"{r['flops']:>10,} {r['compression']:6.1f}x {sp:>8}")
        return 0
    if args.action == "show":
        if not args.entry:
            raise ValueError("kfit catalog show needs ENTRY (see `kfit catalog list`)")
        m = catalog.manifest(args.entry[0], root)
        if args.json:
            print(json.dumps(m, indent=1))
            return 0
        print(catalog.describe(m))
        return 0
    if args.action == "verify":
        checks = catalog.verify(root, args.entry or None)
        for c in checks:
            print(c.line())
        bad = [c for c in checks if not c.ok]
        print(f"{len(checks) - len(bad)} of {len(checks)} entries hold" + (f"; {len(bad)} FAIL" if bad else ""))
        if not checks:
            print(f"nothing to verify: the catalog at {catalog._root(root)} is empty")
            return 1
        return 1 if bad else 0
    raise ValueError(f"unknown catalog action {args.action!r}")


def _load_entry_or_file(what: str, root):
    """ENTRY arguments: a catalog entry name, or the path of a .kfit file."""
    from pathlib import Path

    from . import catalog
    from ._io import load

    if Path(what).suffix in (".kfit", ".safetensors") or Path(what).is_file():
        return load(what), None
    return catalog.load(what, root), catalog.manifest(what, root)


def _cmd_export(args) -> int:
    from pathlib import Path

    from ._export import _SUFFIXES, _resolve_format, export

    try:  # before loading anything; worded for the command line
        _resolve_format(Path(args.output), args.format)
    except ValueError:
        suffix = Path(args.output).suffix.lower()
        raise ValueError(
            f"-o {args.output}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
            f"use a suffix {', '.join(_SUFFIXES)} or pass --format (kfit, npz, mat or torch)"
        ) from None
    K, _ = _load_entry_or_file(args.entry, args.root)
    path = export(K, args.output, format=args.format)
    print(f"wrote {path} ({args.format or 'format from the suffix'}): {K.structure()}, n = {K.n}")
    return 0


def _cmd_plot(args) -> int:
    from . import catalog, plot

    if args.entry == "catalog":
        rows = catalog.rows(args.root)
        if not rows:
            raise ValueError(f"the catalog at {catalog._root(args.root)} is empty: nothing to plot (run `kfit catalog build`)")
        plot.plot_catalog(rows, path=args.output)
    else:
        K, m = _load_entry_or_file(args.entry, args.root)
        trace = [tuple(t) for t in m.get("trace", [])] if m else None
        title = f"{m['name']}: {m['structure']['formula']}, error {m['error']['value']:.1e}" if m else f"{args.entry}: {K.structure()}"
        plot.plot_factors(K, trace=trace or None, title=title, path=args.output)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kfit", description="Recover fast algorithms (butterfly / K-matrix factorizations) of matrices.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="build the DFT as a K-matrix, check it, print its costs and speed")
    d.add_argument("-n", type=int, default=1024, help="size (a power of two; default 1024)")
    d.add_argument("--batch", type=int, default=1024, help="vectors per product in the timing (default 1024)")
    d.set_defaults(func=_cmd_demo)

    f = sub.add_parser("fit", help="recover a fast algorithm (K-matrix) for a target matrix")
    f.add_argument("target", help="a registry name (kfit.targets.names()) or a .npy/.npz file")
    f.add_argument("-n", type=int, help="size, for a registry name")
    f.add_argument("--solver", default="auto",
                   choices=["auto", "identify", "identify-real", "spectral", "projection", "splitting", "gradient",
                            "permutation"],
                   help="auto (default): permutation, identification (of P·B·P, then of Re(P·B·P) for a real "
                        "target), spectral identification, Re(P·B·P) fitted by alternating projections (real "
                        "target), B·B* by recursive splitting, then gradient fits of growing structure")
    f.add_argument("--no-closed-form", action="store_true",
                   help="auto: skip the closed-form steps; only fits from random starts (projections, splitting, "
                        "gradient ladder)")
    f.add_argument("--no-projection", action="store_true",
                   help="auto: skip the alternating-projection fit")
    f.add_argument("--no-splitting", action="store_true",
                   help="auto: skip the recursive splitting into B·B* (with --no-closed-form --no-projection: the "
                        "gradient ladder alone)")
    f.add_argument("--chain", help="gradient: butterflies in matrix order, e.g. 'B B*' (default) or 'B B* B B*'")
    f.add_argument("--complex", action="store_true", help="gradient: complex twiddles")
    f.add_argument("--real-output", action="store_true", help="gradient: fit the real part (DCT/DST/Hartley)")
    f.add_argument("--expansion", type=int, help="gradient: expansion e (default 1)")
    f.add_argument("--restarts", type=int, help="random starts fitted at once (default 8)")
    f.add_argument("--device", default="cpu", help="auto, gradient, --resume: where the fits run (cpu, cuda); default cpu")
    f.add_argument("--time-budget", type=float, default=600.0, help="seconds for the search (default 600)")
    f.add_argument("--fit-seed", type=int, default=0, help="seed of the random starts (default 0)")
    f.add_argument("--seed", type=int, help="seed of a random target (randn, permutation, circulant, ...)")
    f.add_argument("--tol", type=float, help="error tolerance for status 'exact' (default 1e-12 f64, 1e-5 f32)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.add_argument("--verbose", action="store_true", help="with --json: include solver details")
    f.add_argument("--save", metavar="PATH", help="write the factorization (kfit.load reads it)")
    f.add_argument("--resume", metavar="PATH",
                   help="continue the second-order finish of a factorization saved with --save (solvers.refine), "
                        "for a fit whose time budget ran out while it was still converging")
    f.set_defaults(func=_cmd_fit)

    b = sub.add_parser("bench", help="benchmarks, printed beside their baselines")
    b.add_argument("what", choices=["product", "identify", "fit"], help="which benchmark")
    b.add_argument("--targets", help="fit: comma-separated target names (default: the issue's list)")
    b.add_argument("--time-budget", type=float, default=600.0, help="fit: seconds per case (default 600)")
    b.add_argument("--restarts", type=int, default=8, help="fit: random starts (default 8)")
    b.add_argument("--no-closed-form", action="store_true",
                   help="fit: only fits from random starts (skip the closed-form steps)")
    b.add_argument("--no-projection", action="store_true",
                   help="fit: skip the alternating projections")
    b.add_argument("--no-splitting", action="store_true",
                   help="fit: skip the recursive splitting into B·B* (with --no-closed-form --no-projection: the "
                        "gradient ladder alone)")
    b.add_argument("--repeats", type=int, default=3, help="identify: runs per size (best is kept)")
    b.add_argument("-n", type=int, nargs="*", help="sizes (default 256 1024 4096; product on cuda: 256 ... 16384)")
    b.add_argument("--batch", type=int, help="product: vectors per product (default 1024; on cuda see --batches)")
    b.add_argument("--batches", type=int, nargs="*", help="product: several batch sizes (default on cuda: 1 256 4096 65536)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per measurement")
    b.set_defaults(func=_cmd_bench)

    c = sub.add_parser("catalog", help="the catalog of recovered factorizations: build, list, show, verify")
    c.add_argument("action", choices=["build", "list", "show", "verify"])
    c.add_argument("entry", nargs="*", help="show: the entry; verify: entries to check (default all)")
    c.add_argument("--root", help="catalog directory (default $KFIT_CATALOG or the repository's catalog/)")
    c.add_argument("--targets", help="build: comma-separated targets (default: " + "dft,idft,hadamard,dct2,dst2,dct4,hartley,circulant,toeplitz,permutation)")
    c.add_argument("--min-n", type=int, default=8, help="build: smallest size (default 8)")
    c.add_argument("--max-n", type=int, default=1024, help="build: largest size (default 1024)")
    c.add_argument("--device", default="cpu", help="build: device of the solvers (cpu, cuda)")
    c.add_argument("--time-budget", type=float, default=300.0, help="build: seconds per entry (default 300)")
    c.add_argument("--restarts", type=int, default=8, help="build: random starts per gradient fit (default 8)")
    c.add_argument("--force", action="store_true", help="build: redo entries that exist and verify (a new structure replaces the old entry)")
    c.add_argument("--keep-going", action="store_true", help="build: try larger n after a target failed at a smaller one")
    c.add_argument("--json", action="store_true", help="list/show: JSON output")
    c.set_defaults(func=_cmd_catalog)

    e = sub.add_parser("export", help="export a catalog entry (or a .kfit file) for use elsewhere")
    e.add_argument("entry", help="a catalog entry name (kfit catalog list) or a .kfit file")
    e.add_argument("--format", choices=["kfit", "safetensors", "npz", "torch", "mat"],
                   help="kfit/safetensors (lossless, kfit.load), npz or mat (scipy.sparse factors), torch (KLinear); default: from the suffix")
    e.add_argument("-o", "--output", required=True, help="the file to write")
    e.add_argument("--root", help="catalog directory")
    e.set_defaults(func=_cmd_export)

    pl = sub.add_parser("plot", help="plot an entry's factors and trace, or the whole catalog ('catalog')")
    pl.add_argument("entry", help="a catalog entry, a .kfit file, or 'catalog'")
    pl.add_argument("-o", "--output", required=True, help="the image to write (.png, .pdf, .svg)")
    pl.add_argument("--root", help="catalog directory")
    pl.set_defaults(func=_cmd_plot)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `kfit fit ... --json | head`: the reader left early
        sys.stderr.close()
        return 0
    except (ValueError, TypeError, FileNotFoundError) as exc:
        if os.environ.get("KFIT_DEBUG"):
            raise
        # Input errors carry their own explanation; no traceback for the user.
        print(f"kfit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
