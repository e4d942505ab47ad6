"""Saving and loading factorizations: one safetensors file, structure in its JSON header.

A ``.kfit`` file is a plain safetensors file (no pickle anywhere): tensors named
``f{i}.twiddle`` / ``f{i}.values`` / ``f{i}.perm`` (complex tensors stored as their real
view, ``(..., 2)``), and the header metadata key ``"kfit"`` holding the structure as JSON:
the chain in matrix-product order, each factor's type, stride order and dtype, the
expansion, the real-part flag, plus any user metadata. Writes are atomic: the file is
written beside the target and renamed into place, so a crash never leaves a torn file.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile

import torch

FORMAT_VERSION = 1


def _encode(op, prefix: str, tensors: dict) -> dict:
    from ._butterfly import Butterfly
    from ._kmatrix import KMatrix
    from ._permutation import Diagonal, Permutation

    def put(name, t):
        # A contiguous copy per entry: safetensors refuses tensors sharing memory (a factor
        # used twice) and non-contiguous ones (a transposed butterfly's twiddles).
        t = t.detach().cpu().resolve_conj().clone(memory_format=torch.contiguous_format)
        tensors[f"{prefix}.{name}"] = torch.view_as_real(t).clone() if t.is_complex() else t
        return str(t.dtype).replace("torch.", "")

    if isinstance(op, Butterfly):
        return {"type": "Butterfly", "increasing": op.increasing, "dtype": put("twiddle", op.twiddle)}
    if isinstance(op, Permutation):
        put("perm", op.perm)
        return {"type": "Permutation", "dtype": str(op.dtype).replace("torch.", "")}
    if isinstance(op, Diagonal):
        return {"type": "Diagonal", "dtype": put("values", op.values)}
    if isinstance(op, KMatrix):
        return {
            "type": "KMatrix",
            "expansion": op.expansion,
            "real_output": op.real_output,
            "factors": [_encode(f, f"{prefix}.{i}", tensors) for i, f in enumerate(op.factors)],
        }
    raise TypeError(f"cannot save a {type(op).__name__}; expected a KMatrix, Butterfly, Permutation or Diagonal")


def _decode(spec: dict, prefix: str, tensors: dict, path):
    from ._butterfly import Butterfly
    from ._kmatrix import KMatrix
    from ._permutation import Diagonal, Permutation

    def get(name, dtype):
        key = f"{prefix}.{name}"
        if key not in tensors:
            raise ValueError(f"{path}: tensor {key!r} named in the header is missing from the file")
        # clone(): safetensors hands out views of the file buffer, aligned only to 8 bytes;
        # complex128 kernels need 16 (a misaligned view crashed to_dense).
        t = tensors[key].clone()
        if dtype in ("complex64", "complex128"):
            t = torch.view_as_complex(t)
        if str(t.dtype).replace("torch.", "") != dtype:
            raise ValueError(f"{path}: tensor {key!r} has dtype {t.dtype}, header says {dtype}")
        return t

    kind = spec.get("type")
    try:
        if kind == "Butterfly":
            return Butterfly(get("twiddle", spec["dtype"]), increasing=bool(spec["increasing"]))
        if kind == "Permutation":
            return Permutation(get("perm", "int64"), dtype=getattr(torch, spec["dtype"]))
        if kind == "Diagonal":
            return Diagonal(get("values", spec["dtype"]))
        if kind == "KMatrix":
            fs = [_decode(f, f"{prefix}.{i}", tensors, path) for i, f in enumerate(spec["factors"])]
            return KMatrix(fs, expansion=int(spec["expansion"]), real_output=bool(spec["real_output"]))
    except KeyError as exc:
        raise ValueError(f"{path}: malformed kfit header, {kind} entry lacks {exc}") from None
    raise ValueError(f"{path}: unknown factor type {kind!r} in the kfit header")


def save(op, path, *, metadata: dict | None = None) -> pathlib.Path:
    """Write ``op`` (a KMatrix or a single factor) to ``path`` atomically; returns the path.

    ``metadata`` (JSON-serialisable) is stored in the header and returned by
    :func:`load_metadata`.
    """
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    tensors: dict = {}
    header = {"format": "kfit", "version": FORMAT_VERSION, "op": _encode(op, "f", tensors), "metadata": metadata or {}}
    try:
        text = json.dumps(header)
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"kfit": text}), name="path")


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and not thread-safe)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0)
    os.umask(old)
    return old


def atomic_write(path, write, *, name: str = "path") -> pathlib.Path:
    """Create or replace the file ``path`` atomically; returns ``path`` as a ``pathlib.Path``.

    ``write(tmp)`` is called with the name (a ``str``) of a fresh, empty temporary file in
    the same directory as ``path`` and must fill it (open it itself, or pass the name to a
    library writer). The temporary file is then flushed to disk (``fsync``), given the
    permissions a newly created file would have (``0o666`` minus the umask), and renamed
    over ``path`` with ``os.replace``. If ``write`` raises -- or the process is interrupted
    -- the temporary file is removed and ``path`` is untouched: readers see the old file or
    none, never a torn one.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create or replace. Its directory must exist and be writable.
    write : callable ``(str) -> None``
        Fills the temporary file. Library writers that append a suffix to a *name* (such as
        ``numpy.savez``) must be given an open file object instead.
    name : str
        The argument name used in error messages.

    Raises
    ------
    FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError
        With a message naming ``path``, before anything is written.
    """
    path = pathlib.Path(path)
    parent = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"{name}={str(path)!r} is a directory; pass a file name inside it, e.g. {str(path / 'out')!r}")
    if not parent.exists():
        raise FileNotFoundError(f"cannot write {name}={str(path)!r}: directory {str(parent)!r} does not exist; create it first")
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {name}={str(path)!r}: {str(parent)!r} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except PermissionError as exc:
        raise PermissionError(
            f"cannot write {name}={str(path)!r}: directory {str(parent)!r} is not writable ({exc.strerror}); "
            "choose another location"
        ) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _read(path):
    from safetensors import SafetensorError, safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such kfit file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable kfit (safetensors) file: {exc}") from None
    if "kfit" not in meta:
        raise ValueError(f"{path} is a safetensors file without a kfit header (metadata key 'kfit')")
    try:
        header = json.loads(meta["kfit"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the kfit header is not valid JSON ({exc})") from None
    if header.get("format") != "kfit" or not isinstance(header.get("op"), dict):
        raise ValueError(f"{path}: the header does not describe a kfit factorization")
    return header, tensors, path


def load(path, *, device=None):
    """Read a factorization written by :func:`save` (never unpickles)."""
    header, tensors, path = _read(path)
    op = _decode(header["op"], "f", tensors, path)
    return op.to(device) if device is not None else op


def load_metadata(path) -> dict:
    header, _, _ = _read(path)
    return header.get("metadata", {})
