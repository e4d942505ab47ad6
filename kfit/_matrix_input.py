"""Turn whatever the user hands us into a checked 2-D torch tensor.

:func:`as_matrix` is the single entry point every public function that takes a matrix
uses, so the accepted inputs and the error messages are the same everywhere.
"""
from __future__ import annotations

import difflib
import os
import pathlib

import numpy as np
import torch

from kfit._validate import check_finite

__all__ = ["as_matrix"]

_KEPT = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_FILE_SUFFIXES = (".npy", ".npz")
_ACCEPTED = (
    "a numpy array, a torch tensor, a nested list, a path to a .npy/.npz file, or a "
    "target name such as 'dft' (with n=...)"
)


def as_matrix(
    obj, name: str = "M", *, square: bool = True, n: int | None = None
) -> torch.Tensor:
    """Convert ``obj`` to a checked 2-D torch tensor.

    Parameters
    ----------
    obj : array-like, torch.Tensor, str or os.PathLike
        One of

        - a ``torch.Tensor`` (its device is kept);
        - a ``numpy.ndarray`` or a nested list/tuple of numbers;
        - a path (``str`` or ``pathlib.Path``) to a ``.npy`` file, or to a ``.npz`` file
          holding exactly one array. Files are read with ``allow_pickle=False``: pickled
          (object) arrays are refused, never unpickled;
        - a registry name such as ``"dft"`` or ``"dct2"`` (see
          :func:`kfit.targets.names`); then ``n`` is required and the result is
          ``kfit.targets.get(obj, n)``.
    name : str
        The argument's name, used in error messages.
    square : bool
        Require a square matrix (default True).
    n : int, optional
        Size for a registry name. For other inputs, if given, the matrix must be
        ``n x n``.

    Returns
    -------
    torch.Tensor
        2-D, non-empty, finite. Dtypes float32, float64, complex64 and complex128 are
        kept; integer, bool and other real dtypes become float64, other complex dtypes
        complex128. A torch input with a kept dtype is returned as is (same storage);
        numpy and file inputs are copied.

    Raises
    ------
    TypeError
        Unsupported input type or dtype (strings, objects).
    ValueError
        Not 2-D, empty, not square, non-finite, pickled file, several arrays in a
        ``.npz``, unknown name, missing ``n`` for a name.
    FileNotFoundError
        A ``.npy``/``.npz`` path that does not exist.
    """
    t = _to_tensor(obj, name, n)
    if t.layout != torch.strided:
        t = t.to_dense()
    t = _fix_dtype(t, name)
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D matrix, got a {t.ndim}-D array of shape "
            f"{tuple(t.shape)}; pass a single matrix (e.g. index a batch, or reshape)."
        )
    if t.numel() == 0:
        raise ValueError(
            f"{name} must be non-empty, got shape {tuple(t.shape)}."
        )
    if square and t.shape[0] != t.shape[1]:
        raise ValueError(
            f"{name} must be square, got shape {tuple(t.shape)}; pad it with zeros to "
            f"{max(t.shape)}x{max(t.shape)} or pass a square matrix."
        )
    if n is not None and tuple(t.shape) != (n, n):
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but n={n} was given; drop n or pass an "
            f"{n}x{n} matrix."
        )
    check_finite(t, name)
    return t


def _to_tensor(obj, name: str, n) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        return _from_numpy(obj, name, f"numpy array {name}")
    if isinstance(obj, str):
        return _from_string(obj, name, n)
    if isinstance(obj, os.PathLike):
        return _from_file(pathlib.Path(obj), name)
    if isinstance(obj, (list, tuple)):
        try:
            arr = np.asarray(obj)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{name}: could not convert the {type(obj).__name__} to an array "
                f"({exc}); pass a rectangular nested list of numbers."
            ) from None
        return _from_numpy(arr, name, f"{type(obj).__name__} {name}")
    if isinstance(obj, np.generic) or isinstance(obj, (int, float, complex, bool)):
        raise ValueError(
            f"{name} must be a 2-D matrix, got the scalar {obj!r} (shape ()); "
            f"pass {_ACCEPTED}."
        )
    raise TypeError(f"{name} must be {_ACCEPTED}; got {type(obj).__name__}.")


def _from_numpy(arr: np.ndarray, name: str, what: str) -> torch.Tensor:
    if arr.dtype == object:
        raise TypeError(
            f"{name}: {what} has dtype object (ragged or non-numeric entries); pass a "
            f"numeric array."
        )
    kind = arr.dtype.kind
    if kind in "biu":
        arr = arr.astype(np.float64)
    elif kind == "f":
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    elif kind == "c":
        if arr.dtype not in (np.complex64, np.complex128):
            arr = arr.astype(np.complex128)
    else:
        raise TypeError(
            f"{name}: {what} must be numeric, got dtype {arr.dtype}; pass a float or "
            f"complex array."
        )
    # Own, contiguous, native byte order: torch.from_numpy needs the latter.
    arr = np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True)
    return torch.from_numpy(arr)


def _from_string(s: str, name: str, n) -> torch.Tensor:
    if s.lower().endswith(_FILE_SUFFIXES):
        return _from_file(pathlib.Path(s), name)
    from kfit import targets

    key = s.strip().lower()
    if key in targets.names():
        if n is None:
            raise ValueError(
                f"{name}={s!r} names a registry target, so its size is needed: pass "
                f"n=..., e.g. as_matrix({s!r}, n=64)."
            )
        return targets.get(key, n)
    if os.path.isfile(s):
        raise ValueError(
            f"{name}: file {s!r} has an unsupported format; expected a .npy file or a "
            f".npz file holding one array (save with numpy.save)."
        )
    close = difflib.get_close_matches(key, targets.names(), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"{name}={s!r} is neither an existing .npy/.npz file nor a registry target "
        f"name.{hint} Targets: {', '.join(targets.names())}."
    )


def _from_file(path: pathlib.Path, name: str) -> torch.Tensor:
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise ValueError(
            f"{name}: file {str(path)!r} has an unsupported format "
            f"{suffix or '(none)'!r}; expected .npy or .npz (save with numpy.save / "
            f"numpy.savez)."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: no such file {str(path)!r}; check the path (relative paths are "
            f"taken from the current directory {os.getcwd()!r})."
        )
    pickle_msg = (
        f"{name}: file {str(path)!r} holds a pickled (object) array, which is refused "
        f"for safety (it would run arbitrary code; allow_pickle=False). Re-save a "
        f"numeric array: numpy.save(path, numpy.asarray(M, dtype=float))."
    )
    keys: list[str] = []
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            what = f"array in {path.name}"
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                arr = z[keys[0]] if len(keys) == 1 else None
                what = f"array {keys[0]!r} in {path.name}" if keys else ""
    except ValueError as exc:
        text = str(exc)
        if "pickle" in text.lower() or "object arrays" in text.lower():
            raise ValueError(pickle_msg) from None
        raise ValueError(
            f"{name}: could not read {str(path)!r} as a numpy file ({text})."
        ) from None
    except (OSError, EOFError) as exc:
        raise ValueError(
            f"{name}: could not read {str(path)!r} as a numpy file ({exc})."
        ) from None
    if suffix == ".npz" and len(keys) != 1:
        raise ValueError(
            f"{name}: {str(path)!r} must hold exactly one array, it holds "
            f"{len(keys)} ({', '.join(keys) or 'none'}); save one array, or load the "
            f"one you want and pass it directly."
        )
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: {str(path)!r} does not hold a numpy array.")
    if arr.dtype == object or arr.dtype.hasobject:
        raise ValueError(pickle_msg)
    return _from_numpy(arr, name, what)


def _fix_dtype(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dtype in _KEPT:
        return t
    target = torch.complex128 if t.is_complex() else torch.float64
    try:
        return t.to(target)
    except (RuntimeError, TypeError) as exc:  # pragma: no cover - exotic dtypes
        raise TypeError(
            f"{name}: cannot convert dtype {t.dtype} to {target} ({exc}); pass a float "
            f"or complex tensor."
        ) from None
