"""Registry of named target matrices.

Every target is a dense ``n x n`` matrix ``M`` defined so that ``M @ x`` is the named
transform of a vector ``x`` under scipy's conventions with ``norm="ortho"``; for example

>>> import numpy as np, scipy.fft
>>> from kfit import targets
>>> M = targets.get("dct2", 8)
>>> x = np.arange(8.0)
>>> np.allclose(M.numpy() @ x, scipy.fft.dct(x, type=2, norm="ortho"))
True

Real targets are returned as ``torch.float64``, complex ones as ``torch.complex128``,
always on the CPU, always freshly allocated (mutating the result does not affect later
calls). Random targets are deterministic: they draw from
``numpy.random.default_rng(seed)``.

Public API
----------
get(name, n, **params)          the dense target as a torch tensor
names()                         every registered name (aliases included), sorted
describe(name)                  a one-line description
info(name)                      a :class:`TargetInfo`
register(name, *, complex, params, doc, ...)
                                decorator adding a target (used for the built-ins too)
bit_reversal(n)                 the bit-reversal index vector (numpy int64)

Angles of trigonometric targets are reduced exactly in integer arithmetic and looked up
in a table of the distinct angles, so the matrices are accurate to an ulp or two for
every ``n``.
"""
from __future__ import annotations

import difflib
import inspect
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "TargetInfo",
    "get",
    "names",
    "describe",
    "info",
    "register",
    "bit_reversal",
]


# --------------------------------------------------------------------------------------
# Registry machinery
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetInfo:
    """Static description of a registered target.

    Attributes
    ----------
    name : str
        The registered name (lower case).
    is_complex : bool
        True if :func:`get` returns ``complex128``, False for ``float64``.
    params : dict
        The accepted keyword parameters and their defaults (a copy: editing it has no
        effect on the registry).
    doc : str
        One-line summary (defining formula and normalisation).
    power_of_two_only : bool
        True if the target only exists for ``n = 2^m``.
    """

    name: str
    is_complex: bool
    params: dict = field(default_factory=dict)
    doc: str = ""
    power_of_two_only: bool = False


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Any]
    is_complex: bool
    params: dict
    doc: str
    power_of_two_only: bool
    min_n: int
    exclusive: tuple  # groups of parameter names that may not be given together
    alias_of: str | None


_REGISTRY: dict[str, _Entry] = {}


def _summary(text: str | None) -> str:
    """First paragraph of a docstring, joined into one line."""
    if not text:
        return ""
    lines = inspect.cleandoc(text).splitlines()
    out = []
    for line in lines:
        if not line.strip():
            if out:
                break
            continue
        out.append(line.strip())
    return " ".join(out)


def register(
    name: str,
    *,
    complex: bool,
    params: dict | None = None,
    doc: str | None = None,
    power_of_two_only: bool = False,
    min_n: int = 1,
    aliases: tuple = (),
    exclusive: tuple = (),
    overwrite: bool = False,
):
    """Decorator registering ``fn(n, **params) -> array`` as the target ``name``.

    Parameters
    ----------
    name : str
        Registry name (case-insensitive; stored lower case).
    complex : bool
        Whether the target is complex (returned as complex128) or real (float64).
    params : dict, optional
        Accepted keyword parameters with their defaults. :func:`get` rejects any other
        keyword, and calls ``fn(n, **{**params, **user_params})``.
    doc : str, optional
        One-line description; defaults to the first paragraph of ``fn.__doc__``.
    power_of_two_only : bool
        If True, :func:`get` rejects ``n`` that is not a power of two (1 included) with
        a message naming the next power of two.
    min_n : int
        Smallest accepted ``n``.
    aliases : tuple of str
        Extra names for the same target.
    exclusive : tuple of tuple of str
        Groups of parameters of which at most one may be passed explicitly.
    overwrite : bool
        Allow replacing an existing registration (otherwise ValueError).

    Returns
    -------
    callable
        The decorator; it returns ``fn`` unchanged.

    Notes
    -----
    ``fn`` may return a numpy array, a torch tensor, or anything ``numpy.asarray``
    accepts, of shape ``(n, n)``. A real target that returns complex values is an error.
    """
    params = dict(params or {})

    def deco(fn):
        summary = doc if doc is not None else _summary(fn.__doc__)
        summary = " ".join(str(summary).split())
        if not summary:
            raise ValueError(
                f"register({name!r}): give a one-line `doc` or a docstring for "
                f"{getattr(fn, '__name__', fn)!r}."
            )
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature
            sig = None
        if sig is not None:
            try:
                sig.bind(1, **params)
            except TypeError as exc:
                raise TypeError(
                    f"register({name!r}): the function must accept (n, "
                    f"{', '.join(f'{k}=...' for k in params)}); binding failed: {exc}"
                ) from None
        all_names = [name, *aliases]
        keys = []
        for nm in all_names:
            if not isinstance(nm, str) or not nm or any(ch.isspace() for ch in nm):
                raise ValueError(
                    f"register: target names must be non-empty strings without spaces, "
                    f"got {nm!r}"
                )
            key = nm.lower()
            if key in _REGISTRY and not overwrite:
                raise ValueError(
                    f"register: a target named {key!r} already exists; pass "
                    f"overwrite=True to replace it, or choose another name."
                )
            keys.append(key)
        for g in exclusive:
            unknown = [p for p in g if p not in params]
            if unknown:
                raise ValueError(
                    f"register({name!r}): exclusive parameters {unknown} are not in "
                    f"params {list(params)}"
                )
        for i, key in enumerate(keys):
            _REGISTRY[key] = _Entry(
                fn=fn,
                is_complex=bool(complex),
                params=params,
                doc=summary,
                power_of_two_only=bool(power_of_two_only),
                min_n=int(min_n),
                exclusive=tuple(tuple(g) for g in exclusive),
                alias_of=None if i == 0 else keys[0],
            )
        return fn

    return deco


def _lookup(name) -> tuple[str, _Entry]:
    if not isinstance(name, str):
        raise TypeError(
            f"target name must be a str, got {type(name).__name__} ({name!r}); "
            f"available targets: {', '.join(names())}"
        )
    key = name.strip().lower()
    entry = _REGISTRY.get(key)
    if entry is None:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown target {name!r}.{hint} Available targets: {', '.join(names())}. "
            f"Add your own with kfit.targets.register."
        )
    return key, entry


def names() -> list[str]:
    """All registered target names (aliases included), sorted."""
    return sorted(_REGISTRY)


def info(name: str) -> TargetInfo:
    """The :class:`TargetInfo` of a registered target (an alias keeps its own name)."""
    key, e = _lookup(name)
    return TargetInfo(
        name=key,
        is_complex=e.is_complex,
        params=dict(e.params),
        doc=e.doc,
        power_of_two_only=e.power_of_two_only,
    )


def describe(name: str) -> str:
    """One-line description: name, kind, parameters, constraints and formula."""
    key, e = _lookup(name)
    tags = ["complex" if e.is_complex else "real"]
    if e.params:
        tags.append("params: " + ", ".join(f"{k}={v!r}" for k, v in e.params.items()))
    if e.power_of_two_only:
        tags.append("n power of two")
    if e.min_n > 1:
        tags.append(f"n >= {e.min_n}")
    if e.alias_of:
        tags.append(f"alias of {e.alias_of}")
    return f"{key} ({'; '.join(tags)}): {e.doc}"


def _check_n(n, *, min_n: int = 1) -> int:
    msg = (
        f"n must be a positive int, got {type(n).__name__} {n!r}; "
        f"pass e.g. n={max(min_n, 8)}."
    )
    if isinstance(n, (bool, np.bool_)):
        raise TypeError(msg)
    try:
        n_int = operator.index(n)
    except TypeError:
        raise TypeError(msg) from None
    if n_int < min_n:
        what = "a positive int" if min_n == 1 else f"an int >= {min_n}"
        raise ValueError(f"n must be {what}, got {n_int}.")
    return n_int


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _check_pow2(n: int, name: str) -> None:
    if n & (n - 1):
        up = _next_pow2(n)
        down = up >> 1
        raise ValueError(
            f"target {name!r} needs n to be a power of two, got n={n}; use n={up} "
            f"(the next power of two) or n={down}."
        )


def get(name: str, n: int, **params) -> torch.Tensor:
    """The dense ``n x n`` target matrix ``name``.

    Parameters
    ----------
    name : str
        A registered name (see :func:`names`); case-insensitive.
    n : int
        The size, a positive int.
    **params
        Target-specific parameters (see :func:`info`); unknown ones are rejected.

    Returns
    -------
    torch.Tensor
        Shape ``(n, n)``, CPU, ``float64`` for real targets and ``complex128`` for
        complex ones, such that ``M @ x`` is the named transform of ``x``.

    Raises
    ------
    ValueError
        Unknown name (with close matches), invalid ``n`` or parameter value.
    TypeError
        Wrong type of ``n`` or of a parameter, unknown parameter name.
    """
    key, e = _lookup(name)
    n = _check_n(n, min_n=e.min_n)
    if e.power_of_two_only:
        _check_pow2(n, key)
    unknown = [k for k in params if k not in e.params]
    if unknown:
        accepted = ", ".join(f"{k} (default {v!r})" for k, v in e.params.items())
        raise TypeError(
            f"target {key!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"accepted parameters: {accepted or 'none'}."
        )
    for group in e.exclusive:
        given = [p for p in group if p in params and params[p] is not None]
        if len(given) > 1:
            raise ValueError(
                f"target {key!r}: pass at most one of {', '.join(group)}, got "
                f"{', '.join(given)}."
            )
    kwargs = {**e.params, **params}
    out = e.fn(n, **kwargs)
    return _finish(out, n, key, e.is_complex, fresh=e.fn in _BUILTIN_FNS)


def _finish(out, n: int, key: str, is_complex: bool, fresh: bool) -> torch.Tensor:
    """Check shape/dtype and convert; copy unless ``fresh`` (a built-in that returns a
    newly allocated array), so a user function's cached array is never shared."""
    if isinstance(out, torch.Tensor):
        arr = out.detach().cpu().resolve_conj().resolve_neg().numpy()
    else:
        arr = np.asarray(out)
    if arr.shape != (n, n):
        raise ValueError(
            f"target {key!r} returned shape {arr.shape}, expected ({n}, {n}); the "
            f"registered function is wrong."
        )
    if not is_complex and np.iscomplexobj(arr):
        raise TypeError(
            f"target {key!r} is registered as real but returned {arr.dtype}; "
            f"register it with complex=True."
        )
    dtype = np.complex128 if is_complex else np.float64
    if fresh:
        arr = np.asarray(arr, dtype=dtype, order="C")
    else:
        arr = np.array(arr, dtype=dtype, order="C", copy=True)
    return torch.from_numpy(arr)


# --------------------------------------------------------------------------------------
# Parameter helpers
# --------------------------------------------------------------------------------------


def _check_seed(seed, key: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(
            f"target {key!r}: seed must be a non-negative int, got "
            f"{type(seed).__name__} {seed!r}."
        )
    if seed < 0:
        raise ValueError(
            f"target {key!r}: seed must be a non-negative int, got {seed}."
        )
    return int(seed)


def _rng(seed, key: str) -> np.random.Generator:
    return np.random.default_rng(_check_seed(seed, key))


def _as_vector(v, n: int, pname: str, key: str, *, integer: bool = False) -> np.ndarray:
    """Convert an array-like parameter to a finite real 1-D numpy array of length n."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().resolve_conj().resolve_neg().numpy()
    try:
        arr = np.asarray(v)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"target {key!r}: {pname} must be a 1-D array-like of length {n}, got "
            f"{type(v).__name__} ({exc})."
        ) from None
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"target {key!r}: {pname} must be a 1-D array-like of length n={n}, got "
            f"shape {arr.shape}."
        )
    if integer:
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"target {key!r}: {pname} must hold integers, got dtype {arr.dtype}."
            )
        return arr.astype(np.int64)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
    ):
        raise TypeError(
            f"target {key!r}: {pname} must be numeric, got dtype {arr.dtype}."
        )
    if np.iscomplexobj(arr):
        raise TypeError(
            f"target {key!r}: {pname} must be real, got dtype {arr.dtype}; for a "
            f"complex target, register your own with "
            f"kfit.targets.register(..., complex=True)."
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"target {key!r}: {pname} contains {int((~np.isfinite(arr)).sum())} "
            f"non-finite value(s)."
        )
    return arr


def _check_type(t, key: str) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= 4:
        raise ValueError(
            f"target {key!r}: type must be one of 1, 2, 3, 4, got "
            f"{type(t).__name__} {t!r}."
        )
    return int(t)


# Exact angle reduction: angles are pi * m / d with integers m, d. The values are
# looked up in a table of the 2d distinct angles (reduced to (-pi, pi]), so each entry
# is accurate to an ulp whatever the size, and only O(d) transcendentals are evaluated.


def _angle_table(d: int) -> np.ndarray:
    r = np.arange(2 * d, dtype=np.int64)
    r = np.where(r > d, r - 2 * d, r)  # in (-d, d]
    return np.pi * r / d


def _cospi(m: np.ndarray, d: int) -> np.ndarray:
    """cos(pi * m / d) with m (int64 array) reduced exactly modulo 2d."""
    return np.cos(_angle_table(d))[np.mod(m, 2 * d)]


def _sinpi(m: np.ndarray, d: int) -> np.ndarray:
    """sin(pi * m / d) with m (int64 array) reduced exactly modulo 2d."""
    return np.sin(_angle_table(d))[np.mod(m, 2 * d)]


def _outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.multiply.outer(a.astype(np.int64), b.astype(np.int64))


def _idx(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def _jk_mod(n: int) -> np.ndarray:
    """The (n, n) int64 array ``(j * k) mod n``."""
    jk = _outer(_idx(n), _idx(n))
    np.mod(jk, n, out=jk)
    return jk


def _roots_of_unity(n: int, sign: int) -> np.ndarray:
    """``exp(sign * 2 pi i m / n)`` for m = 0..n-1, with exact angle reduction."""
    m = 2 * _idx(n)
    return _cospi(m, n) + sign * 1j * _sinpi(m, n)


# --------------------------------------------------------------------------------------
# Fourier family
# --------------------------------------------------------------------------------------


@register("dft", complex=True)
def _dft(n):
    """Unitary DFT: ``M[j, k] = exp(-2 pi i j k / n) / sqrt(n)`` (scipy.fft.fft,
    norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.fft(x, norm="ortho")``; ``M`` is symmetric and unitary.
    """
    return (_roots_of_unity(n, sign=-1) / math.sqrt(n))[_jk_mod(n)]


@register("idft", complex=True)
def _idft(n):
    """Unitary inverse DFT: ``M[j, k] = exp(+2 pi i j k / n) / sqrt(n)``
    (scipy.fft.ifft, norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.ifft(x, norm="ortho")``; ``M = conj(dft)``, the inverse of
    the DFT.
    """
    return (_roots_of_unity(n, sign=+1) / math.sqrt(n))[_jk_mod(n)]


@register("hartley", complex=False)
def _hartley(n):
    """Discrete Hartley transform: ``H[j, k] = (cos + sin)(2 pi j k / n) / sqrt(n)``.

    Notes
    -----
    ``H @ x == Re(F x) - Im(F x)`` with ``F`` the unitary DFT
    (scipy.fft.fft, norm="ortho").
    ``H`` is symmetric, orthogonal and an involution (``H @ H = I``).
    """
    w = _roots_of_unity(n, sign=+1)
    return ((w.real + w.imag) / math.sqrt(n))[_jk_mod(n)]


# --------------------------------------------------------------------------------------
# DCT / DST (scipy.fft.dct / dst, norm="ortho"); rows: output index k, columns: input j
# --------------------------------------------------------------------------------------


def _dct_matrix(n: int, t: int) -> np.ndarray:
    k = _idx(n)
    if t == 1:
        if n < 2:
            raise ValueError("target 'dct1' (DCT type 1) needs n >= 2, got n=1.")
        c = np.ones(n)
        c[0] = c[-1] = 1 / math.sqrt(2)
        return math.sqrt(2 / (n - 1)) * np.outer(c, c) * _cospi(_outer(k, k), n - 1)
    if t == 2:
        c = np.ones(n)
        c[0] = 1 / math.sqrt(2)
        return math.sqrt(2 / n) * c[:, None] * _cospi(_outer(k, 2 * k + 1), 2 * n)
    if t == 3:
        return _dct_matrix(n, 2).T.copy()
    # t == 4
    return math.sqrt(2 / n) * _cospi(_outer(2 * k + 1, 2 * k + 1), 4 * n)


def _dst_matrix(n: int, t: int) -> np.ndarray:
    k = _idx(n)
    if t == 1:
        return math.sqrt(2 / (n + 1)) * _sinpi(_outer(k + 1, k + 1), n + 1)
    if t == 2:
        d = np.ones(n)
        d[-1] = 1 / math.sqrt(2)
        return math.sqrt(2 / n) * d[:, None] * _sinpi(_outer(k + 1, 2 * k + 1), 2 * n)
    if t == 3:
        return _dst_matrix(n, 2).T.copy()
    return math.sqrt(2 / n) * _sinpi(_outer(2 * k + 1, 2 * k + 1), 4 * n)


@register("dct1", complex=False, min_n=2)
def _dct1(n):
    """Orthonormal DCT-I: ``M[k, j] = sqrt(2/(n-1)) c_k c_j cos(pi k j / (n-1))``, ``c_0
    = c_{n-1} = 1/sqrt(2)``, else 1 (scipy.fft.dct type=1, norm="ortho"; n >= 2).

    Notes
    -----
    ``M @ x == scipy.fft.dct(x, type=1, norm="ortho")``; symmetric and orthogonal.
    """
    return _dct_matrix(n, 1)


@register("dct2", complex=False)
def _dct2(n):
    """Orthonormal DCT-II: ``M[k, j] = sqrt(2/n) c_k cos(pi k (2j+1) / (2n))``, ``c_0 =
    1/sqrt(2)``, else 1 (scipy.fft.dct type=2, norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.dct(x, type=2, norm="ortho")``; orthogonal, inverse is DCT-III.
    """
    return _dct_matrix(n, 2)


@register("dct3", complex=False)
def _dct3(n):
    """Orthonormal DCT-III: ``M[k, j] = sqrt(2/n) c_j cos(pi j (2k+1) / (2n))``, ``c_0 =
    1/sqrt(2)``, else 1 (scipy.fft.dct type=3, norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.dct(x, type=3, norm="ortho")``; ``M = dct2(n).T``.
    """
    return _dct_matrix(n, 3)


@register("dct4", complex=False)
def _dct4(n):
    """Orthonormal DCT-IV: ``M[k, j] = sqrt(2/n) cos(pi (2k+1)(2j+1) / (4n))``
    (scipy.fft.dct type=4, norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.dct(x, type=4, norm="ortho")``; symmetric, orthogonal,
    involution.
    """
    return _dct_matrix(n, 4)


@register("dst1", complex=False)
def _dst1(n):
    """Orthonormal DST-I: ``M[k, j] = sqrt(2/(n+1)) sin(pi (k+1)(j+1) / (n+1))``
    (scipy.fft.dst type=1, norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.dst(x, type=1, norm="ortho")``; symmetric, orthogonal,
    involution.
    """
    return _dst_matrix(n, 1)


@register("dst2", complex=False)
def _dst2(n):
    """Orthonormal DST-II: ``M[k, j] = sqrt(2/n) d_k sin(pi (k+1)(2j+1) / (2n))``,
    ``d_{n-1} = 1/sqrt(2)``, else 1 (scipy.fft.dst type=2, norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.dst(x, type=2, norm="ortho")``; orthogonal, inverse is DST-III.
    """
    return _dst_matrix(n, 2)


@register("dst3", complex=False)
def _dst3(n):
    """Orthonormal DST-III: ``M[k, j] = sqrt(2/n) d_j sin(pi (j+1)(2k+1) / (2n))``,
    ``d_{n-1} = 1/sqrt(2)``, else 1 (scipy.fft.dst type=3, norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.dst(x, type=3, norm="ortho")``; ``M = dst2(n).T``.
    """
    return _dst_matrix(n, 3)


@register("dst4", complex=False)
def _dst4(n):
    """Orthonormal DST-IV: ``M[k, j] = sqrt(2/n) sin(pi (2k+1)(2j+1) / (4n))``
    (scipy.fft.dst type=4, norm="ortho").

    Notes
    -----
    ``M @ x == scipy.fft.dst(x, type=4, norm="ortho")``; symmetric, orthogonal,
    involution.
    """
    return _dst_matrix(n, 4)


@register("dct", complex=False, params={"type": 2})
def _dct(n, type=2):
    """Orthonormal DCT of the given ``type`` in 1..4 (default 2): same as ``dct{type}``
    (scipy.fft.dct(x, type=type, norm="ortho")).

    Parameters
    ----------
    n : int
        Size (``n >= 2`` for type 1).
    type : int
        DCT type, 1, 2, 3 or 4.
    """
    t = _check_type(type, "dct")
    return _dct_matrix(n, t)


@register("dst", complex=False, params={"type": 2})
def _dst(n, type=2):
    """Orthonormal DST of the given ``type`` in 1..4 (default 2): same as ``dst{type}``
    (scipy.fft.dst(x, type=type, norm="ortho")).

    Parameters
    ----------
    n : int
        Size.
    type : int
        DST type, 1, 2, 3 or 4.
    """
    t = _check_type(type, "dst")
    return _dst_matrix(n, t)


# --------------------------------------------------------------------------------------
# Hadamard, permutations
# --------------------------------------------------------------------------------------


def bit_reversal(n: int) -> np.ndarray:
    """The bit-reversal permutation of ``range(n)`` as an int64 array.

    Parameters
    ----------
    n : int
        A power of two (``n = 1`` gives ``[0]``).

    Returns
    -------
    numpy.ndarray of int64
        ``rev[i]`` = ``i`` with its ``log2(n)`` bits reversed. It is an involution.
    """
    n = _check_n(n)
    _check_pow2(n, "bitrev")
    m = n.bit_length() - 1
    i = np.arange(n, dtype=np.int64)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(m):
        rev |= ((i >> b) & 1) << (m - 1 - b)
    return rev


def _perm_matrix(perm: np.ndarray) -> np.ndarray:
    n = perm.shape[0]
    P = np.zeros((n, n))
    P[np.arange(n), perm] = 1.0
    return P


@register("hadamard", complex=False, power_of_two_only=True)
def _hadamard(n):
    """Normalised Walsh-Hadamard, Sylvester ordering: ``H[i, j] = (-1)^popcount(i & j) /
    sqrt(n)`` (scipy.linalg.hadamard(n) / sqrt(n); n a power of two).

    Notes
    -----
    Symmetric, orthogonal and an involution.
    """
    # Sylvester doubling H_{2m} = [[H_m, H_m], [H_m, -H_m]]: entry (i, j) gets a sign
    # flip for every bit set in both i and j, i.e. (-1)^popcount(i & j).
    H = np.full((1, 1), 1.0 / math.sqrt(n))
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return H


@register("permutation", complex=False, params={"perm": None, "seed": 0},
          exclusive=(("perm", "seed"),))
def _permutation(n, perm=None, seed=0):
    """Permutation matrix: ``P[i, perm[i]] = 1``, so ``(P @ x)[i] = x[perm[i]]``;
    ``perm`` given, or ``numpy.random.default_rng(seed).permutation(n)``.

    Parameters
    ----------
    n : int
        Size.
    perm : array-like of int, optional
        A permutation of ``range(n)``. Takes precedence over ``seed``.
    seed : int
        Seed for a random permutation when ``perm`` is None (default 0).
    """
    if perm is None:
        p = _rng(seed, "permutation").permutation(n).astype(np.int64)
    else:
        p = _as_vector(perm, n, "perm", "permutation", integer=True)
        if not np.array_equal(np.sort(p), np.arange(n)):
            bad = sorted(set(range(n)) - set(p.tolist()))[:5]
            raise ValueError(
                f"target 'permutation': perm must contain each of 0..{n - 1} exactly "
                f"once; missing e.g. {bad}."
            )
    return _perm_matrix(p)


@register("bitrev", complex=False, power_of_two_only=True)
def _bitrev(n):
    """Bit-reversal permutation: ``P[i, rev(i)] = 1``, so ``(P @ x)[i] = x[rev(i)]``
    with ``rev = bit_reversal(n)`` (n a power of two).

    Notes
    -----
    Symmetric involution; ``dft(n) @ bitrev(n)`` applies the DFT to the bit-reversed
    input, the decimation-in-time (Cooley-Tukey) order.
    """
    return _perm_matrix(bit_reversal(n))


# --------------------------------------------------------------------------------------
# Convolution-type
# --------------------------------------------------------------------------------------


@register("circulant", complex=False, params={"kernel": None, "seed": 0},
          aliases=("convolution",), exclusive=(("kernel", "seed"),))
def _circulant(n, kernel=None, seed=0):
    """Circulant matrix ``C[i, j] = kernel[(i - j) mod n]``
    (scipy.linalg.circulant(kernel)), so ``C @ x`` is the circular convolution ``kernel
    * x``; random standard-normal kernel from ``numpy.random.default_rng(seed)`` if none
    is given.

    Parameters
    ----------
    n : int
        Size.
    kernel : array-like, optional
        Real 1-D kernel of length ``n`` (first column of ``C``). Takes precedence.
    seed : int
        Seed for ``rng.standard_normal(n)`` when ``kernel`` is None (default 0).
    """
    if kernel is None:
        k = _rng(seed, "circulant").standard_normal(n)
    else:
        k = _as_vector(kernel, n, "kernel", "circulant")
    i = _idx(n)
    return k[np.mod(np.subtract.outer(i, i), n)]


@register("toeplitz", complex=False, params={"c": None, "r": None, "seed": 0})
def _toeplitz(n, c=None, r=None, seed=0):
    """Toeplitz matrix ``T[i, j] = c[i - j]`` for ``i >= j`` and ``r[j - i]`` for ``j >
    i`` (scipy.linalg.toeplitz(c, r); ``r[0]`` ignored); random standard-normal ``c``,
    ``r`` from ``numpy.random.default_rng(seed)`` if ``c`` is not given.

    Parameters
    ----------
    n : int
        Size.
    c : array-like, optional
        First column (length ``n``). If given without ``r``, ``r = c`` (symmetric), as
        in scipy.
    r : array-like, optional
        First row (length ``n``); needs ``c``.
    seed : int
        Seed used when ``c`` is None: ``c = rng.standard_normal(n)``, then
        ``r = rng.standard_normal(n)`` (default 0).
    """
    if c is None:
        if r is not None:
            raise ValueError(
                "target 'toeplitz': r (first row) was given without c (first column); "
                "pass both c and r, or c alone for a symmetric matrix."
            )
        rng = _rng(seed, "toeplitz")
        cv = rng.standard_normal(n)
        rv = rng.standard_normal(n)
    else:
        cv = _as_vector(c, n, "c", "toeplitz")
        rv = cv if r is None else _as_vector(r, n, "r", "toeplitz")
    i = _idx(n)
    d = np.subtract.outer(i, i)  # i - j
    return np.where(d >= 0, cv[np.abs(d)], rv[np.abs(d)])


# --------------------------------------------------------------------------------------
# Orthogonal polynomials, random
# --------------------------------------------------------------------------------------


def _legendre_rows(x: np.ndarray, m: int) -> np.ndarray:
    """Rows ``p_i(x) = sqrt((2i+1)/2) P_i(x)``, i < m: an (m, len(x)) array."""
    P = np.empty((m, x.shape[0]))
    P[0] = 1 / math.sqrt(2)
    if m > 1:
        P[1] = math.sqrt(3 / 2) * x
    for i in range(1, m - 1):
        b_i = i / math.sqrt(4 * i * i - 1)
        b_next = (i + 1) / math.sqrt(4 * (i + 1) ** 2 - 1)
        P[i + 1] = (x * P[i] - b_i * P[i - 1]) / b_next
    return P


@register("legendre", complex=False)
def _legendre(n):
    """Orthonormal discrete Legendre transform: ``M[i, j] = sqrt((2i+1)/2) P_i(x_j)
    sqrt(w_j)`` with ``(x_j, w_j)`` the n-point Gauss-Legendre nodes (ascending) and
    weights.

    Notes
    -----
    Gauss quadrature is exact for degree ``<= 2n - 1``, so ``M @ M.T = I``: ``M`` is
    orthogonal. Nodes from ``scipy.special.roots_legendre`` polished by one Newton step;
    normalised polynomials ``p_i = sqrt((2i+1)/2) P_i`` by the stable recurrence
    ``p_{i+1} = (x p_i - b_i p_{i-1}) / b_{i+1}``, ``b_i = i / sqrt(4 i^2 - 1)``;
    weights by the Christoffel formula ``w_j = 1 / sum_{i<n} p_i(x_j)^2`` (the Gauss
    weights, and accurate to an ulp, so orthogonality holds to ~1e-13 at n = 1000).
    """
    from scipy.special import roots_legendre

    x, _ = roots_legendre(n)
    x = np.sort(x)
    if n > 1:
        # one Newton step on P_n: P_n' = n (x P_n - P_{n-1}) / (x^2 - 1)
        P = _legendre_rows(x, n + 1)
        pn = P[n] / math.sqrt((2 * n + 1) / 2)
        pm = P[n - 1] / math.sqrt((2 * n - 1) / 2)
        x = x - pn * (x * x - 1) / (n * (x * pn - pm))
    P = _legendre_rows(x, n)
    w = 1.0 / np.einsum("ij,ij->j", P, P)
    return P * np.sqrt(w)[None, :]


@register("randn", complex=False, params={"seed": 0})
def _randn(n, seed=0):
    """Dense Gaussian matrix: ``M = numpy.random.default_rng(seed).standard_normal((n,
    n)) / sqrt(n)`` (no structure; the hard case).

    Parameters
    ----------
    n : int
        Size.
    seed : int
        Seed (default 0).
    """
    return _rng(seed, "randn").standard_normal((n, n)) / math.sqrt(n)


# Built-in target functions return freshly allocated arrays: get() need not copy them.
_BUILTIN_FNS = frozenset(e.fn for e in _REGISTRY.values())
