r"""Exporting factorizations to files other tools read: kfit, npz, MATLAB and torch.

:func:`export` writes one factorization (a :class:`kfit.KMatrix`, a single factor, or a
:class:`kfit.nn.KLinear` layer) to a file. Every write is atomic (a temporary file beside
the target, renamed into place), and no format needs pickle to be read.

Formats
-------
``"kfit"`` (suffix ``.kfit`` or ``.safetensors``; alias ``"safetensors"``)
    kfit's own lossless format (:func:`kfit.save`); read back with :func:`kfit.load`.
``"npz"`` (suffix ``.npz``)
    The factorization as sparse matrices for numpy + scipy users without kfit (layout below).
``"mat"`` (suffix ``.mat``)
    The same content as the npz, as a MATLAB v5 file (``scipy.io.savemat``); sparse factors
    are MATLAB sparse matrices.
``"torch"`` (suffix ``.klinear``)
    A layer file for :meth:`kfit.nn.KLinear.load`: a kfit file (so :func:`kfit.load` reads
    the linear map from it too) with the layer's bias, if any, and a ``"module"`` marker in
    its JSON header. A safetensors file, not a pickle: ``torch.load`` does not read it.

The sparse layout (npz and mat)
-------------------------------
A K-matrix is a chain of factors, possibly nested, with an expansion (a corner) and a real
part at each level (:class:`kfit.KMatrix`). The sparse formats flatten it into a *program*:
instructions applied, top to bottom, to a block of column vectors ``X`` of shape
``(n, m)``. The result is ``Y = K @ X`` (plus the bias, if the file holds one):

=============  ============================================================================
``mul fNN``    ``X = F @ X`` with the sparse matrix ``F`` of factor ``fNN`` (a butterfly
               level with two non-zeros per row, or a diagonal).
``perm fNN``   ``X = X[p]`` with ``p = fNN_perm`` (0-based): the permutation matrix ``P``
               with ``P[i, p[i]] = 1``, i.e. ``(P x)[i] = x[p[i]]``.
``pad N``      ``X = [X; 0]``: append zero rows up to ``N`` (an expansion: the K-matrix is
               the top-left corner of a larger product).
``crop n``     ``X = X[:n]``: keep the first ``n`` rows (closes a ``pad``).
``re_push``    Opens a real-part section ``Re(A)``: the matrix between ``re_push`` and its
               ``re_pop`` is the *real matrix* ``Re(A)``. A complex ``X`` is split into
               ``[Re X, Im X]`` (twice the columns), a real ``X`` is kept.
``re_pop``     Closes it: ``X = Re(X)``, and a split block is joined back,
               ``X = Re(X[:, :m]) + 1j * Re(X[:, m:])``. (On real input this is just ``Re``;
               on complex input it applies ``Re(A)`` linearly, as kfit does.)
``bias``       ``X = X + b[:, None]`` with ``b = bias`` (layers with a bias only).
=============  ============================================================================

Factors are numbered ``f00, f01, ...`` in *order of application* (``f00`` acts first). The
keys of the npz file (``numpy.savez``, no object arrays: ``np.load(path,
allow_pickle=False)`` reads it):

* ``format`` (``"kfit-sparse"``), ``version`` (1), ``n`` (the size), ``dtype`` (of the
  matrix ``K``: ``"complex128"``, ``"float64"``, ...), ``program`` (the instructions, one
  per line), ``formula`` (the product in matrix notation, ``*`` the matrix product, e.g.
  ``Re(f04 * f03 * f02 * f01 * P(f00))``), ``readme`` (this layout and the
  order of application for this file), ``metadata`` (a JSON string);
* per sparse factor: ``fNN_data``, ``fNN_indices``, ``fNN_indptr``, ``fNN_shape`` (CSR:
  ``scipy.sparse.csr_matrix((data, indices, indptr), shape=shape)``);
* per permutation: ``fNN_perm`` (int64 indices, 0-based);
* ``bias`` (shape ``(n,)``) when the layer has one.

The mat file holds the same keys, except that each sparse factor is one MATLAB sparse
variable ``fNN`` (stored in double precision, as MATLAB requires; ``scipy.io.loadmat``
returns it as ``scipy.sparse.csc_matrix``), scalars and vectors come back from ``loadmat``
as 2-D arrays, and the permutations stay 0-based (MATLAB: ``X = X(fNN_perm + 1, :)``).

Reading without kfit
--------------------
:func:`read_sparse` reads both files back. Without kfit, numpy and scipy suffice; this
function computes ``K @ x`` from an npz export (the tests run this exact snippet)::

    # --- kfit npz reader (numpy + scipy only) ---
    import numpy as np
    import scipy.sparse as sp

    def kfit_apply(path, x):
        # y = K @ x for x of shape (n,) or (n, m) (columns), K read from a kfit .npz export
        f = np.load(path, allow_pickle=False)
        x = np.asarray(x)
        X = x.reshape(x.shape[0], -1)
        stack = []
        for step in str(f["program"]).splitlines():
            op, _, arg = step.partition(" ")
            if op == "mul":
                F = sp.csr_matrix((f[arg + "_data"], f[arg + "_indices"], f[arg + "_indptr"]),
                                  shape=tuple(f[arg + "_shape"]))
                X = F @ X
            elif op == "perm":
                X = X[f[arg + "_perm"]]
            elif op == "pad":
                X = np.concatenate([X, np.zeros((int(arg) - X.shape[0], X.shape[1]), X.dtype)])
            elif op == "crop":
                X = X[: int(arg)]
            elif op == "re_push":
                stack.append(X.shape[1] if np.iscomplexobj(X) else None)
                if stack[-1] is not None:
                    X = np.concatenate([X.real, X.imag], axis=1)
            elif op == "re_pop":
                m = stack.pop()
                X = X.real if m is None else X[:, :m].real + 1j * X[:, m:].real
            elif op == "bias":
                X = X + f["bias"][:, None]
            else:
                raise ValueError(f"unknown step {step!r}")
        return X.reshape(X.shape[0], *x.shape[1:])
    # --- end of reader ---

For a chain without nesting the program is simply ``[re_push] [pad N] (mul|perm)...
[crop n] [re_pop]``, i.e. ``y = Re?( (F_last ... F_01 F_00 [x; 0])[:n] )``.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from . import _io

#: The export formats and what they write.
FORMATS = {
    "kfit": "kfit's own lossless safetensors + JSON format, read by kfit.load (suffix .kfit or .safetensors)",
    "npz": "numpy .npz of scipy.sparse CSR factors and a program, readable with numpy + scipy only",
    "mat": "MATLAB v5 .mat with the same content, sparse factors as MATLAB sparse matrices",
    "torch": "a KLinear layer file (safetensors, no pickle) for kfit.nn.KLinear.load",
}
_ALIASES = {"safetensors": "kfit"}
_SUFFIXES = {".kfit": "kfit", ".safetensors": "kfit", ".npz": "npz", ".mat": "mat", ".klinear": "torch"}

SPARSE_FORMAT = "kfit-sparse"
SPARSE_VERSION = 1
_STEPS = ("mul", "perm", "pad", "crop", "re_push", "re_pop", "bias")


def _reader_snippet() -> str:
    doc = __doc__ or ""
    start = doc.index("    # --- kfit npz reader")
    end = doc.index("    # --- end of reader ---") + len("    # --- end of reader ---")
    return "\n".join(line[4:] for line in doc[start:end].splitlines()) + "\n"


# -- what is being exported ---------------------------------------------------------------
def _unpack(op):
    """``(K, bias)``: the operator to write (a LinearOp) and the layer's bias (or None)."""
    from ._linear import LinearOp

    if isinstance(op, LinearOp):
        K, bias = op, None
    elif hasattr(op, "to_kmatrix") and hasattr(op, "bias_tensor"):  # kfit.nn.KLinear
        K, bias = op.to_kmatrix(), op.bias_tensor()
    else:
        raise TypeError(
            f"op must be a kfit.KMatrix, Butterfly, Permutation, Diagonal or kfit.nn.KLinear, "
            f"got {type(op).__module__}.{type(op).__name__}; wrap a dense matrix by fitting it first "
            "(solvers.fit(M).kmatrix)"
        )
    if len(K.batch_shape):
        raise ValueError(
            f"op has batch shape {tuple(K.batch_shape)}: a file holds one factorization; "
            "export one member, e.g. op[0]"
        )
    return K, bias


def _resolve_format(path: pathlib.Path, format) -> str:
    names = ", ".join(repr(f) for f in FORMATS)
    if format is None:
        fmt = _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(
                f"format=None: cannot infer the format from the suffix of path={str(path)!r} "
                f"(suffix {path.suffix!r}); use a suffix {', '.join(_SUFFIXES)} or pass format= one of {names}"
                " (a KLinear layer file: suffix .klinear or format='torch')"
            )
        return fmt
    if not isinstance(format, str):
        raise TypeError(f"format must be a str, one of {names}, or None to infer it from the suffix; got {type(format).__name__}")
    fmt = _ALIASES.get(format.lower(), format.lower())
    if fmt not in FORMATS:
        raise ValueError(
            f"format={format!r} is not a known export format; choose one of {names} "
            f"(or 'safetensors', an alias of 'kfit'), or None to infer it from the suffix"
        )
    return fmt


# -- the sparse program -------------------------------------------------------------------
def _numpy(t):
    return t.detach().cpu().resolve_conj().numpy()


def _compile(K) -> tuple[list, list, str]:
    """Flatten ``K`` into (steps, factors, formula).

    ``steps`` are the program's instructions in order of application; ``factors`` is a
    list of ``(name, kind, payload, description)`` with kind ``"mul"`` (a CSR matrix) or
    ``"perm"`` (an int64 index array), in the same order.
    """
    import scipy.sparse as sp

    from ._butterfly import Butterfly
    from ._kmatrix import KMatrix
    from ._permutation import Diagonal, Permutation

    steps: list = []
    factors: list = []
    count = [0]

    def fresh():
        count[0] += 1
        return f"f{count[0] - 1:02d}"

    def emit(op, where) -> list:
        """Append op's steps; return its terms in *application* order (for the formula)."""
        if isinstance(op, Permutation):
            name = fresh()
            factors.append((name, "perm", _numpy(op.perm).astype(np.int64), f"permutation, {where}"))
            steps.append(f"perm {name}")
            return [f"P({name})"]
        if isinstance(op, Diagonal):
            name = fresh()
            v = _numpy(op.values)
            i = np.arange(op.n)
            F = sp.csr_matrix((v, i, np.arange(op.n + 1)), shape=(op.n, op.n))  # keeps zeros
            factors.append((name, "mul", F, f"diagonal, {where}"))
            steps.append(f"mul {name}")
            return [name]
        if isinstance(op, Butterfly):
            plain = Butterfly(op.twiddle.detach().resolve_conj(), increasing=op.increasing)
            levels = plain.factors()[::-1]  # matrix-product order -> application order
            strides = op.strides
            kind = "B (increasing strides)" if op.increasing else "B* (decreasing strides)"
            terms = []
            for lv, F in enumerate(levels):
                name = fresh()
                F = F.tocsr()
                F.sort_indices()
                factors.append((name, "mul", F, f"butterfly level {lv} (stride {strides[lv]}) of {where}, a {kind}"))
                steps.append(f"mul {name}")
                terms.append(name)
            return terms
        if isinstance(op, KMatrix):
            if op.real_output:
                steps.append("re_push")
            if op.expansion > 1:
                steps.append(f"pad {op.N}")
            terms = []
            for i in reversed(range(len(op.factors))):
                sub = f"{where}.factors[{i}]"
                terms.extend(emit(op.factors[i], sub))  # a plain nested chain is inlined (exact)
            if op.expansion > 1:
                steps.append(f"crop {op.n}")
            if op.real_output:
                steps.append("re_pop")
            if op.expansion > 1 or op.real_output:
                body = " * ".join(reversed(terms))
                if op.expansion > 1:
                    body = f"corner{op.n}({body})"
                if op.real_output:
                    body = f"Re({body})"
                terms = [body]
            return terms
        raise TypeError(f"cannot export a factor of type {type(op).__name__}")

    terms = emit(KMatrix.wrap(K), "K")
    return steps, factors, " * ".join(reversed(terms))


def _readme(K, steps, factors, formula, bias, fmt) -> str:
    n = K.n
    lines = [
        f"kfit sparse export ({SPARSE_FORMAT} version {SPARSE_VERSION}, {'numpy .npz' if fmt == 'npz' else 'MATLAB v5 .mat'}).",
        f"A linear map y = K x of size n = {n}; K has dtype {str(K.dtype).replace('torch.', '')}"
        + (", plus a bias: y = K x + bias." if bias is not None else "."),
        "",
        "Formula (* is the matrix product; the rightmost factor acts first on x):",
        f"  K = {formula}",
        "where fNN is the sparse matrix of factor fNN, P(fNN) the permutation matrix with"
        " P[i, p[i]] = 1 for p = fNN_perm (0-based), so (P x)[i] = x[p[i]];"
        " cornerN(A) = A[:N, :N] (y = (A [x; 0])[:N]); Re(A) the real part of the matrix A"
        " (applied to a complex x as Re(A) Re(x) + 1j Re(A) Im(x)).",
        "",
        "Order of application: run the steps of `program` top to bottom on X, the input as"
        f" columns (shape ({n}, m)); the result is Y = K X" + (" + bias." if bias is not None else "."),
        "  mul fNN   X = F @ X, F the sparse factor fNN"
        + (" (CSR: fNN_data, fNN_indices, fNN_indptr, fNN_shape)" if fmt == "npz" else " (MATLAB sparse variable fNN)"),
        "  perm fNN  X = X[fNN_perm]" + ("" if fmt == "npz" else " (MATLAB: X = X(fNN_perm + 1, :))"),
        "  pad N     append zero rows up to N rows (expansion: embed x as [x; 0])",
        "  crop n    keep the first n rows",
        "  re_push   open Re(A): if X is complex, split it into [Re X, Im X] (twice the columns)",
        "  re_pop    close it: X = Re(X); a split block is joined back, X = Re(X[:, :m]) + 1j Re(X[:, m:])",
        "  bias      X = X + bias (as a column)",
        "",
        f"This file's program ({len(steps)} steps): " + "; ".join(steps),
        "",
        "Factors (in order of application; K.factors[i] is where each comes from in kfit's KMatrix,"
        " whose factors are listed in matrix-product order):",
    ]
    for name, kind, payload, desc in factors:
        what = f"{payload.nnz} non-zeros" if kind == "mul" else f"{payload.size} indices"
        lines.append(f"  {name}: {desc}, {what}")
    if fmt == "npz":
        lines += ["", "A reader with numpy + scipy only (y = kfit_apply(path, x)):", "", _reader_snippet()]
    return "\n".join(lines) + "\n"


def _sparse_content(K, bias, metadata, fmt) -> dict:
    steps, factors, formula = _compile(K)
    if bias is not None:
        steps.append("bias")
    try:
        meta = json.dumps(metadata or {})
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    out = {
        "format": np.array(SPARSE_FORMAT),
        "version": np.array(SPARSE_VERSION, dtype=np.int64),
        "n": np.array(K.n, dtype=np.int64),
        "dtype": np.array(str(K.dtype).replace("torch.", "")),
        "program": np.array("\n".join(steps)),
        "formula": np.array(formula),
        "readme": np.array(_readme(K, steps, factors, formula, bias, fmt)),
        "metadata": np.array(meta),
    }
    for name, kind, payload, _ in factors:
        if kind == "perm":
            out[f"{name}_perm"] = payload
        elif fmt == "npz":
            out[f"{name}_data"] = payload.data
            out[f"{name}_indices"] = payload.indices.astype(np.int64)
            out[f"{name}_indptr"] = payload.indptr.astype(np.int64)
            out[f"{name}_shape"] = np.array(payload.shape, dtype=np.int64)
        else:  # MATLAB sparse matrices are double (or complex double) only
            F = payload.copy()
            F.data = F.data.astype(np.complex128 if np.iscomplexobj(F.data) else np.float64)
            out[name] = F.tocsc()
    if bias is not None:
        b = _numpy(bias)
        out["bias"] = b.astype(np.complex128 if np.iscomplexobj(b) else np.float64) if fmt == "mat" else b
    return out


# -- writers ------------------------------------------------------------------------------
def _write_npz(path, content):
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **content)

    return _io.atomic_write(path, write, name="path")


def _write_mat(path, content):
    import scipy.io

    def write(tmp):
        with open(tmp, "wb") as f:
            scipy.io.savemat(f, content, format="5", do_compression=True, oned_as="column")

    return _io.atomic_write(path, write, name="path")


def _write_torch(path, K, bias, metadata):
    import torch
    from safetensors.torch import save_file

    from ._kmatrix import KMatrix

    tensors: dict = {}
    header = {
        "format": "kfit",
        "version": _io.FORMAT_VERSION,
        "op": _io._encode(KMatrix.wrap(K), "f", tensors),
        "metadata": metadata or {},
        "module": {"type": "KLinear", "version": 1, "bias": bias is not None},
    }
    if bias is not None:
        b = bias.detach().cpu().clone()
        header["module"]["bias_dtype"] = str(b.dtype).replace("torch.", "")
        tensors["klinear.bias"] = torch.view_as_real(b).clone() if b.is_complex() else b
    try:
        text = json.dumps(header)
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    return _io.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"kfit": text}), name="path")


def export(op, path, format: str | None = None, *, metadata: dict | None = None) -> pathlib.Path:
    """Write a factorization to ``path`` in one of the :data:`FORMATS`; returns the path.

    Parameters
    ----------
    op : KMatrix, Butterfly, Permutation, Diagonal or kfit.nn.KLinear
        The factorization (unbatched: select a member of a batch with ``op[i]``). A
        ``KLinear`` is exported as its current K-matrix and bias.
    path : str or os.PathLike
        The file to create or replace (atomically). Its directory must exist.
    format : {"kfit", "safetensors", "npz", "mat", "torch"} or None
        None: inferred from the suffix (``.kfit``/``.safetensors`` -> ``"kfit"``,
        ``.npz`` -> ``"npz"``, ``.mat`` -> ``"mat"``, ``.klinear`` -> ``"torch"``).
    metadata : dict, optional
        JSON-serialisable; stored in the header (kfit, torch: :func:`kfit.load_metadata`)
        or as the JSON string ``metadata`` (npz, mat).

    Returns
    -------
    pathlib.Path

    Notes
    -----
    The npz/mat layout, the order of application and a numpy + scipy reader are in the
    module documentation (``help(kfit._export)``) and, for each file, in its ``readme``
    entry. :func:`read_sparse` (also ``kfit.export.read_sparse``) reads them back.
    A layer's bias is kept by the npz, mat and torch formats; the kfit format stores the
    linear map only and refuses a layer with a bias.
    """
    try:
        path = pathlib.Path(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike file name, got {type(path).__name__}") from None
    fmt = _resolve_format(path, format)
    K, bias = _unpack(op)
    if fmt == "kfit":
        if bias is not None:
            raise ValueError(
                "op is a KLinear with a bias, but the 'kfit' format stores the linear map only; "
                "use format='torch' (read by KLinear.load, and by kfit.load for the map), 'npz' or 'mat', "
                "or export op.to_kmatrix() to drop the bias"
            )
        return _io.save(K, path, metadata=metadata)
    if fmt == "torch":
        return _write_torch(path, K, bias, metadata)
    content = _sparse_content(K, bias, metadata, fmt)
    return _write_npz(path, content) if fmt == "npz" else _write_mat(path, content)


# -- reading the sparse formats back (numpy + scipy only) ----------------------------------
class SparseFactorization:
    """A factorization read from an npz or mat export by :func:`read_sparse`.

    Uses numpy and scipy only (no torch, no kfit structures).

    Attributes
    ----------
    n : int
        The size: ``K`` is ``n x n``.
    dtype : numpy.dtype
        The dtype of ``K`` (as exported; the mat format stores factors in double precision).
    program : tuple of str
        The instructions, in order of application (see the module documentation).
    names : list of str
        The factor names (``"f00"``, ...) in order of application.
    factors : list of scipy.sparse.csr_matrix
        The factors in order of application (``factors[0]`` acts first); permutations
        as permutation matrices ``P[i, p[i]] = 1``. When :attr:`is_chain` is true,
        ``K = factors[-1] @ ... @ factors[0]``; otherwise the program's pads, crops and
        real parts sit between them.
    bias : numpy.ndarray or None
        Shape ``(n,)``: a layer's bias, added after ``K``.
    formula, readme : str
        The product in matrix notation, and the file's own documentation.
    metadata : dict
    """

    def __init__(self, n, dtype, program, names, factors, perms, bias, formula, readme, metadata):
        self.n = n
        self.dtype = dtype
        self.program = tuple(program)
        self.names = list(names)
        self.factors = list(factors)
        self._perms = perms
        self._by_name = dict(zip(self.names, self.factors))
        self.bias = bias
        self.formula = formula
        self.readme = readme
        self.metadata = metadata

    @property
    def is_chain(self) -> bool:
        """True when the program is factors only: ``K = factors[-1] @ ... @ factors[0]``."""
        return all(s.split(" ")[0] in ("mul", "perm") for s in self.program)

    def __call__(self, x) -> np.ndarray:
        """``K @ x`` (plus the bias) for ``x`` of shape ``(n,)`` or ``(n, m)`` (columns)."""
        return self._run(x, with_bias=True)

    apply = __call__

    def to_dense(self) -> np.ndarray:
        """The dense matrix ``K`` (without the bias), shape ``(n, n)``."""
        eye = np.eye(self.n, dtype=np.empty(0, self.dtype).real.dtype)  # a complex K promotes them
        return self._run(eye, with_bias=False)

    def _run(self, x, with_bias):
        x = np.asarray(x)
        if x.ndim not in (1, 2) or x.shape[0] != self.n:
            raise ValueError(f"x must have shape ({self.n},) or ({self.n}, m) (columns), got {x.shape}")
        X = x.reshape(self.n, -1)
        stack = []
        for step in self.program:
            op, _, arg = step.partition(" ")
            if op == "mul":
                X = self._by_name[arg] @ X
            elif op == "perm":
                X = X[self._perms[arg]]
            elif op == "pad":
                X = np.concatenate([X, np.zeros((int(arg) - X.shape[0], X.shape[1]), X.dtype)])
            elif op == "crop":
                X = X[: int(arg)]
            elif op == "re_push":
                stack.append(X.shape[1] if np.iscomplexobj(X) else None)
                if stack[-1] is not None:
                    X = np.concatenate([X.real, X.imag], axis=1)
            elif op == "re_pop":
                m = stack.pop()
                X = X.real if m is None else X[:, :m].real + 1j * X[:, m:].real
            elif op == "bias" and with_bias:
                X = X + self.bias[:, None]
        return X.reshape(X.shape[0], *x.shape[1:])

    def __repr__(self):
        return f"SparseFactorization(n={self.n}, dtype={self.dtype}, factors={len(self.factors)}, formula='{self.formula}')"


def _sniff(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        head = f.read(128)
    if head.startswith(b"PK"):
        return "npz"
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return "mat"
    raise ValueError(
        f"{path} is neither an npz (zip) nor a MATLAB v5 file; read_sparse reads the files "
        "kfit.export writes with format 'npz' or 'mat' (read kfit/torch files with kfit.load)"
    )


def read_sparse(path) -> SparseFactorization:
    """Read an npz or mat export back (numpy + scipy only, never unpickles).

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`export` with format ``"npz"`` or ``"mat"`` (the format is
        recognised from the file's first bytes, not its name).

    Returns
    -------
    SparseFactorization
        ``.factors`` (scipy.sparse CSR, order of application), ``.program``, ``.formula``;
        call it on columns ``x`` of shape ``(n,)`` or ``(n, m)`` for ``K @ x``, or use
        ``.to_dense()``.
    """
    import scipy.io

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such file")
    fmt = _sniff(path)
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    else:
        data = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}

    def text(key):
        if key not in data:
            raise ValueError(f"{path}: the entry {key!r} is missing; this is not a kfit sparse export")
        v = np.asarray(data[key]).ravel()
        return str(v[0]) if v.size else ""

    def integer(key):
        text(key)  # present?
        return int(np.asarray(data[key]).ravel()[0])

    if text("format") != SPARSE_FORMAT:
        raise ValueError(f"{path}: entry 'format' is {text('format')!r}, expected {SPARSE_FORMAT!r}")
    if integer("version") > SPARSE_VERSION:
        raise ValueError(f"{path}: written by a newer kfit (version {integer('version')}); upgrade kfit to read it")
    n = integer("n")
    program = text("program").splitlines()
    names, factors, perms = [], [], {}
    try:
        _parse_program(program, data, fmt, names, factors, perms, path)
        bias = np.asarray(data["bias"]).ravel() if "bias" in program else None
    except KeyError as exc:
        raise ValueError(f"{path}: the entry {exc} named by the program is missing; the file is incomplete") from None
    return SparseFactorization(
        n=n,
        dtype=np.dtype(text("dtype")),
        program=program,
        names=names,
        factors=factors,
        perms=perms,
        bias=bias,
        formula=text("formula"),
        readme=text("readme"),
        metadata=json.loads(text("metadata") or "{}"),
    )


def _parse_program(program, data, fmt, names, factors, perms, path):
    import scipy.sparse as sp

    for step in program:
        op, _, arg = step.partition(" ")
        if op not in _STEPS:
            raise ValueError(f"{path}: unknown program step {step!r}")
        if op == "mul":
            if fmt == "npz":
                F = sp.csr_matrix(
                    (data[f"{arg}_data"], data[f"{arg}_indices"], data[f"{arg}_indptr"]),
                    shape=tuple(int(s) for s in data[f"{arg}_shape"]),
                )
            else:
                F = sp.csr_matrix(data[arg])
            names.append(arg)
            factors.append(F)
        elif op == "perm":
            p = np.asarray(data[f"{arg}_perm"]).ravel().astype(np.int64)
            perms[arg] = p
            names.append(arg)
            factors.append(sp.csr_matrix((np.ones(p.size), (np.arange(p.size), p)), shape=(p.size, p.size)))


export.read_sparse = read_sparse
export.FORMATS = FORMATS
