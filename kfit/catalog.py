"""The catalog: recovered factorizations recorded as data, one entry per (target, n, structure).

Layout of a catalog directory (the repository's ``catalog/`` by default; ``root=`` or
``$KFIT_CATALOG`` select another)::

    catalog/
      entries/<name>.json                    the manifest (see below)
      entries/<name>.<sha12>.safetensors     the factorization (kfit.save format, no pickle)
      index.json, INDEX.md                   generated from the manifests
      .lock                                  serialises writers (two builds at once are safe)

An entry is named ``<target>-<n>-<structure slug>``, e.g. ``dft-64-bc-p`` for ``Bℂ · P``.
The manifest records the target (name, parameters), n, dtype, the structure (formula,
the chain with permutations as index arrays, depth, expansion, real part), the relative
error and how it was measured, parameters and FLOPs beside the dense and FFT baselines,
the solver with its settings and status, seed, wall time, device, library versions, the
speed of the product against a dense matmul on the machine that built it, and the
sha256 of the tensor file. The tensor file's name carries its hash, and the manifest is
renamed into place last, so an entry is replaced atomically: a reader sees the old entry
or the new one, never a manifest pointing at a torn file.

Public API
----------
root()                      the default catalog directory
names(root=None)            entry names
manifest(name, root=None)   the manifest dict (unknown names: error with close matches)
describe(manifest)          a readable summary of a manifest (``kfit catalog show``)
tensor_path(name, root=None)    the entry's tensor file
load(name, root=None)       the KMatrix, after checking the sha256
rows(root=None)             the index rows (dicts), as in index.json
verify(root=None, only=None)    re-check every entry; a list of :class:`Check`
build(targets=..., ns=..., root=None, ...)  solve and record missing entries
write_index(root=None)      regenerate index.json and INDEX.md
"""
from __future__ import annotations

import contextlib
import datetime
import difflib
import hashlib
import json
import math
import os
import pathlib
import platform
import re
import tempfile
import time
from dataclasses import dataclass

import torch

__all__ = [
    "CATALOG_TARGETS", "root", "names", "manifest", "describe", "tensor_path", "load", "rows", "verify", "build",
    "write_index", "entry_name", "record", "Check",
]

MANIFEST_VERSION = 1

#: The targets the committed catalog covers (each with its registry defaults: seed 0).
CATALOG_TARGETS = ("dft", "idft", "hadamard", "dct2", "dst2", "dct4", "hartley", "circulant", "toeplitz", "permutation")

#: Targets whose FFT baseline (5 n log2 n) is meaningful.
_FOURIER_LIKE = {"dft", "idft", "hadamard", "dct1", "dct2", "dct3", "dct4", "dst1", "dst2", "dst3", "dst4",
                 "hartley", "circulant", "toeplitz"}


# -- locating entries --------------------------------------------------------------------
def root() -> pathlib.Path:
    """The default catalog: ``$KFIT_CATALOG`` if set, else the repository's ``catalog/``."""
    env = os.environ.get("KFIT_CATALOG")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[1] / "catalog"


def _root(r) -> pathlib.Path:
    return pathlib.Path(r) if r is not None else root()


def _entries_dir(r) -> pathlib.Path:
    return _root(r) / "entries"


def names(root=None) -> list[str]:
    """Names of the entries in the catalog at ``root`` (sorted by target, n, structure)."""
    d = _entries_dir(root)
    if not d.is_dir():
        return []
    found = [p.stem for p in d.glob("*.json")]
    return sorted(found, key=_sort_key)


def _sort_key(name: str):
    parts = name.split("-")
    n = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return (parts[0], n, name)


def _unknown(name, root) -> ValueError:
    known = names(root)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    if not known:
        return ValueError(f"no catalog entry {name!r}: the catalog at {_root(root)} is empty (build it with `kfit catalog build`)")
    return ValueError(f"no catalog entry {name!r} in {_root(root)}{hint} (`kfit catalog list` shows all {len(known)})")


def manifest(name: str, root=None) -> dict:
    """The manifest of entry ``name`` as a dict."""
    path = _entries_dir(root) / f"{name}.json"
    if not path.is_file():
        raise _unknown(name, root)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"catalog manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(m, dict) or m.get("format") != "kfit-catalog-entry":
        raise ValueError(f"catalog manifest {path} is not a kfit catalog manifest (no 'format': 'kfit-catalog-entry')")
    return m


def tensor_path(name: str, root=None, *, m: dict | None = None) -> pathlib.Path:
    m = m if m is not None else manifest(name, root)
    try:
        return _entries_dir(root) / m["tensor_file"]["name"]
    except (KeyError, TypeError):
        raise ValueError(f"catalog manifest of {name!r} lacks tensor_file.name") from None


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(name: str, root=None, *, device=None):
    """The recorded factorization of entry ``name`` as a :class:`kfit.KMatrix`.

    The tensor file's sha256 is checked against the manifest first; a missing, truncated
    or altered file raises ``ValueError`` naming the file. Never unpickles.
    """
    from ._io import load as load_file

    m = manifest(name, root)
    path = tensor_path(name, root, m=m)
    if not path.is_file():
        raise ValueError(f"catalog entry {name!r}: its tensor file {path} is missing (rebuild with `kfit catalog build`)")
    digest = _sha256(path)
    if digest != m["tensor_file"].get("sha256"):
        raise ValueError(
            f"catalog entry {name!r}: tensor file {path} fails its sha256 check "
            f"(manifest {m['tensor_file'].get('sha256')}, file {digest}); the file is truncated or altered -- "
            "rebuild the entry with `kfit catalog build`"
        )
    return load_file(path, device=device)


# -- names and structure descriptions ----------------------------------------------------
def slug(structure: str) -> str:
    """A file-name-safe slug of a structure formula: ``'Re(Dℂ · Bℂ · P)'`` -> ``'re-dc-bc-p'``."""
    s = structure.replace("ℂ", "c").replace("*", "s").replace("·", "-")
    s = re.sub(r"[()\[\]^]", "-", s)
    s = re.sub(r"[^A-Za-z0-9-]+", "", s).lower()
    return re.sub(r"-+", "-", s).strip("-")


def entry_name(target: str, n: int, structure: str) -> str:
    return f"{target}-{n}-{slug(structure)}"


def _chain(op) -> list:
    from ._butterfly import Butterfly
    from ._kmatrix import KMatrix
    from ._permutation import Diagonal, Permutation

    out = []
    for f in op.factors:
        if isinstance(f, Butterfly):
            out.append({"type": "Butterfly", "increasing": f.increasing, "dtype": str(f.dtype).replace("torch.", ""),
                        "levels": f.log_n})
        elif isinstance(f, Permutation):
            out.append({"type": "Permutation", "perm": f.perm.tolist()})
        elif isinstance(f, Diagonal):
            out.append({"type": "Diagonal", "dtype": str(f.values.dtype).replace("torch.", "")})
        elif isinstance(f, KMatrix):
            out.append({"type": "KMatrix", "structure": f.structure(), "expansion": f.expansion,
                        "real_output": f.real_output, "factors": _chain(f)})
    return out


def _structure(K) -> dict:
    n_bf = len(K.butterflies)
    return {
        "formula": K.structure(),
        "chain": _chain(K),
        "butterflies": n_bf,
        "depth": math.ceil(n_bf / 2),  # w in (B B*)^w
        "expansion": K.expansion,
        "real_output": K.real_output,
    }


def _versions() -> dict:
    import numpy
    import scipy

    from . import __version__

    return {"kfit": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "python": platform.python_version()}


def _device_line(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _speed(K, M, device, batch: int = 256) -> dict:
    """Product of K on a (batch, n) float64 batch against the dense matmul, same machine."""
    from ._bench import _sync, _timer

    n = M.shape[0]
    dev = torch.device(device)
    Kd, Md = K.to(dev), M.to(dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n, dtype=torch.float64, generator=g).to(dev)
    if M.is_complex():
        x = x.to(M.dtype)

    def timed(fn):
        def run():
            fn()
            _sync(dev)
        return _timer(run, 0.05)

    with torch.no_grad():
        t_k = timed(lambda: Kd(x))
        t_d = timed(lambda: x @ Md.T)
    return {"batch": batch, "dtype": str(x.dtype).replace("torch.", ""), "product_ms": t_k, "dense_ms": t_d,
            "speedup_vs_dense": t_d / t_k, "machine": _device_line(device)}


# -- writing -----------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(r):
    """An exclusive lock on ``<root>/.lock`` (POSIX flock; a no-op where unavailable)."""
    _root(r).mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(_root(r) / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    from ._io import atomic_write

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def _subsample(trace, limit: int = 300) -> list:
    trace = [list(t) for t in trace]
    if len(trace) <= limit:
        return trace
    step = len(trace) / limit
    keep = sorted({int(i * step) for i in range(limit)} | {len(trace) - 1})
    return [trace[i] for i in keep]


def record(result, target: str, n: int, params: dict | None = None, *, root=None, device="cpu",
           settings: dict | None = None, reference: bool = False, measure_speed: bool = True) -> str:
    """Write ``result`` (a :class:`solvers.Result` for ``targets.get(target, n, **params)``)
    as a catalog entry, replacing one of the same name atomically; returns the entry name.

    The error is re-measured here against a freshly built target (dense, float64), so the
    manifest never just copies the solver's own claim.
    """
    from . import costs, targets
    from ._error import relative_error
    from ._io import save

    params = dict(params or {})
    K = result.kmatrix
    if K is None:
        raise ValueError(f"result for {target} n={n} holds no factorization (status {result.status!r}); nothing to record")
    M = targets.get(target, n, **params)
    err = relative_error(K, M)
    name = entry_name(target, n, K.structure())
    c = costs.summary(K)
    if target not in _FOURIER_LIKE:
        c["fft_flops"] = None
        c["flops_ratio_vs_fft"] = None
    m = {
        "format": "kfit-catalog-entry",
        "version": MANIFEST_VERSION,
        "name": name,
        "target": {"name": target, "params": params, "is_complex": bool(M.is_complex())},
        "n": n,
        "dtype": str(K.dtype).replace("torch.", ""),
        "structure": _structure(K),
        "error": {"value": err.value, "method": err.method, "measured_against": f"kfit.targets.get({target!r}, {n}, **params)",
                  "solver_reported": result.error, "tol": result.tol},
        "costs": c,
        "solver": {"name": result.solver, "status": result.status, "message": result.message,
                   "settings": settings or {}, "seconds": result.seconds},
        "seed": (settings or {}).get("seed"),
        "reference": reference,
        "trace": _subsample(result.trace),
        "device": _device_line(device),
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if measure_speed:
        m["speed"] = _speed(K, M, device)
    d = _entries_dir(root)
    with _locked(root):
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=d)
        os.close(fd)
        try:
            save(K, tmp, metadata={"catalog_entry": name, "target": target, "n": n})
            digest = _sha256(pathlib.Path(tmp))
            tfile = f"{name}.{digest[:12]}.safetensors"
            os.replace(tmp, d / tfile)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        m["tensor_file"] = {"name": tfile, "sha256": digest, "bytes": (d / tfile).stat().st_size}
        old = d / f"{name}.json"
        old_tensor = _stored_tensor(old)
        _atomic_write_text(old, json.dumps(m, indent=1) + "\n")
        if old_tensor and old_tensor != tfile:
            with contextlib.suppress(FileNotFoundError):
                (d / old_tensor).unlink()
        _write_index_locked(root)
    return name


def _stored_tensor(manifest_path: pathlib.Path) -> str | None:
    """The tensor file an existing manifest names; None when the manifest is missing or
    unreadable (its tensor file, if any, is then left alone)."""
    with contextlib.suppress(Exception):
        return json.loads(manifest_path.read_text())["tensor_file"]["name"]
    return None


def _remove_entry(name: str, root) -> None:
    """Delete an entry (its manifest, then its tensor file) and rewrite the index."""
    d = _entries_dir(root)
    manifest = d / f"{name}.json"
    with _locked(root):
        tensor = _stored_tensor(manifest)
        manifest.unlink(missing_ok=True)
        if tensor:
            (d / tensor).unlink(missing_ok=True)
        _write_index_locked(root)


def describe(m: dict) -> str:
    """A few lines on a manifest, for ``kfit catalog show``."""
    c, e, s, sv = m["costs"], m["error"], m["structure"], m["solver"]
    params = ", ".join(f"{k}={v}" for k, v in m["target"]["params"].items()) or "registry defaults"
    lines = [
        f"entry      {m['name']}{'  (closed-form reference)' if m.get('reference') else ''}",
        f"target     {m['target']['name']} (n = {m['n']}; {params})",
        f"structure  {s['formula']}  ({s['butterflies']} butterflies, depth {s['depth']}, expansion {s['expansion']}, dtype {m['dtype']})",
        f"error      {e['value']:.3e} (relative Frobenius, {e['method']}, against {e['measured_against']}; tol {e['tol']:g})",
        f"solver     {sv['name']}: {sv['status']} in {sv['seconds']:.2f} s -- {sv['message']}",
        f"costs      params {c['n_params']:,} (dense {c['dense_params']:,}); FLOPs {c['flops']:,} (dense {c['dense_flops']:,}"
        + (f", FFT {c['fft_flops']:,.0f})" if c.get("fft_flops") else ")"),
    ]
    if m.get("speed"):
        sp = m["speed"]
        lines.append(f"speed      {sp['product_ms']:.3f} ms vs dense {sp['dense_ms']:.3f} ms ({sp['speedup_vs_dense']:.2f}x; "
                     f"batch {sp['batch']} {sp['dtype']} on {sp['machine']})")
    lines.append(f"file       {m['tensor_file']['name']} ({m['tensor_file']['bytes']:,} bytes, sha256 {m['tensor_file']['sha256'][:16]}...)")
    lines.append(f"built      {m['created']} on {m['device']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    if m.get("trace"):
        lines.append(f"trace      {len(m['trace'])} points (kfit plot {m['name']} -o FILE.png)")
    return "\n".join(lines)


# -- the index ---------------------------------------------------------------------------
def _row(m: dict) -> dict:
    c = m.get("costs", {})
    sp = m.get("speed") or {}
    return {
        "entry": m["name"],
        "target": m["target"]["name"],
        "n": m["n"],
        "structure": m["structure"]["formula"],
        "dtype": m["dtype"],
        "error": m["error"]["value"],
        "error_method": m["error"]["method"],
        "status": m["solver"]["status"],
        "solver": m["solver"]["name"],
        "seconds": m["solver"]["seconds"],
        "n_params": c.get("n_params"),
        "flops": c.get("flops"),
        "dense_params": c.get("dense_params"),
        "dense_flops": c.get("dense_flops"),
        "fft_flops": c.get("fft_flops"),
        "complex": c.get("complex"),
        "compression": (c["dense_params"] / c["n_params"]) if c.get("n_params") else None,
        "flops_vs_dense": (c["dense_flops"] / c["flops"]) if c.get("flops") else None,
        "speedup_vs_dense": sp.get("speedup_vs_dense"),
        "reference": bool(m.get("reference", False)),
    }


def rows(root=None) -> list[dict]:
    """One row per entry (read from the manifests), as written to ``index.json``."""
    out = []
    for name in names(root):
        try:
            out.append(_row(manifest(name, root)))
        except (ValueError, KeyError, TypeError):
            continue  # a broken manifest is reported by verify, not by the index
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _index_markdown(rs: list[dict], failures: list[dict]) -> str:
    lines = [
        "# kfit catalog",
        "",
        "Generated by `kfit catalog build` from the manifests in `entries/` -- do not edit by hand.",
        "Error: relative Frobenius error ||K - M||_F / ||M||_F, re-measured (dense, float64) against a freshly",
        "built target when the entry was recorded; `kfit catalog verify` measures it again. Compression =",
        "dense parameters / K-matrix parameters; FLOPs = dense FLOPs / K-matrix FLOPs (one mat-vec, DESIGN.md",
        "conventions); speed-up = dense matmul time / K-matrix product time (batch 256, float64, on the machine",
        "that built the entry).",
        "",
        "| entry | target | n | structure | error | solver | params | FLOPs | compression | FLOPs vs dense | speed-up |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rs:
        lines.append(
            f"| {r['entry']} | {r['target']}{' (reference)' if r['reference'] else ''} | {r['n']} | `{r['structure']}` "
            f"| {r['error']:.1e} | {r['solver']} | {r['n_params']:,} | {r['flops']:,} | {_fmt(r['compression'], '.1f')}x "
            f"| {_fmt(r['flops_vs_dense'], '.2f')}x | {_fmt(r['speedup_vs_dense'], '.2f')}x |"
        )
    if failures:
        lines += ["", "## Attempted, not recovered", "",
                  "The solver's best result stayed above the tolerance within the budget; no entry was recorded.", "",
                  "| target | n | best error | status | budget (s) | when |", "|---|---:|---:|---|---:|---|"]
        for f in failures:
            lines.append(f"| {f['target']} | {f['n']} | {_fmt(f.get('error'), '.1e')} | {f['status']} | "
                         f"{_fmt(f.get('time_budget'), '.0f')} | {f.get('when', '')} |")
    return "\n".join(lines) + "\n"


def _failures(r) -> list[dict]:
    p = _root(r) / "attempts.json"
    if not p.is_file():
        return []
    try:
        data = json.loads(p.read_text())
        return data.get("not_recovered", []) if isinstance(data, dict) else []
    except json.JSONDecodeError:
        return []


def _write_index_locked(r) -> None:
    rs = rows(r)
    fails = [f for f in _failures(r) if not any(x["target"] == f["target"] and x["n"] == f["n"] for x in rs)]
    _atomic_write_text(_root(r) / "index.json", json.dumps({"version": MANIFEST_VERSION, "entries": rs}, indent=1) + "\n")
    _atomic_write_text(_root(r) / "INDEX.md", _index_markdown(rs, fails))


def write_index(root=None) -> None:
    """Regenerate ``index.json`` and ``INDEX.md`` from the manifests."""
    with _locked(root):
        _write_index_locked(root)


def _note_failure(r, target, n, result, time_budget) -> None:
    with _locked(r):
        p = _root(r) / "attempts.json"
        data = {"not_recovered": _failures(r)}
        data["not_recovered"] = [f for f in data["not_recovered"] if not (f["target"] == target and f["n"] == n)]
        data["not_recovered"].append({
            "target": target, "n": n, "error": result.error if result is not None else None,
            "status": result.status if result is not None else "skipped",
            "structure": result.kmatrix.structure() if result is not None and result.kmatrix is not None else None,
            "time_budget": time_budget, "when": datetime.date.today().isoformat(),
        })
        data["not_recovered"].sort(key=lambda f: (f["target"], f["n"]))
        _atomic_write_text(p, json.dumps(data, indent=1) + "\n")
        _write_index_locked(r)


def _clear_failure(r, target, n) -> None:
    with _locked(r):  # read and rewrite under one lock: another writer may be adding a failure
        fails = _failures(r)
        keep = [f for f in fails if not (f["target"] == target and f["n"] == n)]
        if len(keep) != len(fails):
            _atomic_write_text(_root(r) / "attempts.json", json.dumps({"not_recovered": keep}, indent=1) + "\n")


# -- verification ------------------------------------------------------------------------
@dataclass
class Check:
    """The outcome of re-checking one entry."""

    name: str
    ok: bool
    error: float | None
    recorded: float | None
    problem: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.name:<40} error {self.error:.2e} (recorded {self.recorded:.2e})"
        return f"FAIL  {self.name:<40} {self.problem}"


def _check(name, r) -> Check:
    from . import targets
    from ._error import relative_error

    try:
        m = manifest(name, r)
        K = load(name, r)
    except (ValueError, FileNotFoundError) as exc:
        return Check(name, False, None, None, str(exc))
    recorded = m["error"]["value"]
    if K.structure() != m["structure"]["formula"] or K.n != m["n"]:
        return Check(name, False, None, recorded,
                     f"the tensor file holds {K.structure()} n={K.n}, the manifest says {m['structure']['formula']} n={m['n']}")
    try:
        M = targets.get(m["target"]["name"], m["n"], **m["target"].get("params", {}))
    except (ValueError, TypeError, KeyError) as exc:
        return Check(name, False, None, recorded, f"cannot rebuild the target: {exc}")
    err = relative_error(K, M).value
    tol = m["error"].get("tol")
    # Recomputing can differ from the recorded value by rounding (another BLAS, thread
    # count); a real change is far larger than that.
    if not (err <= max(2 * recorded, recorded + 1e-14)):
        return Check(name, False, err, recorded, f"error {err:.3e} against a fresh target, recorded {recorded:.3e}")
    if m["solver"]["status"] in ("exact", "converged") and tol is not None and err > tol:
        return Check(name, False, err, recorded, f"error {err:.3e} exceeds the entry's tolerance {tol:g}")
    return Check(name, True, err, recorded)


def verify(root=None, only=None) -> list[Check]:
    """Reload every entry (or those named), check its sha256, rebuild the dense matrix and
    re-measure the error against a freshly built target; one :class:`Check` per entry."""
    todo = list(only) if only else names(root)
    for nm in todo:
        if not (_entries_dir(root) / f"{nm}.json").is_file():
            raise _unknown(nm, root)
    return [_check(nm, root) for nm in todo]


# -- building ----------------------------------------------------------------------------
def _existing(target, n, r) -> str | None:
    for nm in names(r):
        if nm.startswith(f"{target}-{n}-"):
            return nm
    return None


def build(targets=CATALOG_TARGETS, ns=tuple(2 ** k for k in range(3, 11)), *, root=None, device="cpu",
          time_budget: float = 300.0, restarts: int = 8, seed: int = 0, force: bool = False,
          keep_going: bool = False, progress: bool = True, out=print) -> dict:
    """Solve and record every (target, n) not yet in the catalog with a valid entry.

    Each target runs ``solvers.fit`` (the automatic search) on the dense matrix, n
    ascending; once a target is not recovered at some n, its larger sizes are skipped
    (noted as such) unless ``keep_going``. ``force`` solves again entries that exist and
    verify; when the new result has another structure (another entry name), it replaces
    the old entry, so the catalog keeps one entry per (target, n). Returns counts of what
    was done.
    """
    import solvers

    from . import targets as T

    for t in targets:
        T.info(t)  # unknown names: the registry's error with close matches
    counts = {"recorded": 0, "skipped_valid": 0, "not_recovered": 0, "skipped_after_failure": 0}
    settings = {"solver": "fit (auto)", "time_budget": time_budget, "restarts": restarts, "seed": seed}
    jobs = [(t, n) for t in targets for n in ns]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="catalog build", unit="entry")
    failed: set = set()
    try:
        for t, n in jobs:
            if bar is not None:
                bar.set_postfix_str(f"{t} n={n}")
            existing = _existing(t, n, root)
            if existing and not force and _check(existing, root).ok:
                counts["skipped_valid"] += 1
            elif t in failed and not keep_going:
                counts["skipped_after_failure"] += 1
            else:
                M = T.get(t, n)
                t0 = time.perf_counter()
                # progress: the fit's own bars (best error so far) appear under the entry bar
                res = solvers.fit(M, time_budget=time_budget, restarts=restarts, seed=seed, device=device, progress=progress)
                if res.success:
                    name = record(res, t, n, {}, root=root, device=device, settings=settings)
                    _clear_failure(root, t, n)
                    counts["recorded"] += 1
                    out(f"recorded {name}: error {res.error:.2e}, {time.perf_counter() - t0:.1f} s")
                    if existing and existing != name:
                        # --force found another (usually smaller) structure: one entry per (target, n)
                        _remove_entry(existing, root)
                        out(f"  replacing {existing}")
                else:
                    failed.add(t)
                    counts["not_recovered"] += 1
                    _note_failure(root, t, n, res, time_budget)
                    out(f"not recovered {t} n={n}: best error {res.error:.2e} ({res.status}) in {time.perf_counter() - t0:.1f} s")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    write_index(root)
    return counts
