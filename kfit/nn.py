"""A K-matrix as a trainable ``torch.nn`` layer: :class:`KLinear`.

``KLinear(K)`` maps ``(..., n) -> (..., n)`` like ``nn.Linear(n, n)``, computing ``y = K x
(+ bias)`` through the K-matrix's fast product (differentiable). Its twiddles and diagonals
are ``nn.Parameter``; permutations are index buffers (not trained)::

    import kfit, kfit.nn, torch
    layer = kfit.nn.KLinear(kfit.known.dct2(256), bias=True)
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Linear(256, 10).double())
    layer.save("dct.klinear")                       # kfit.export(layer, path, format="torch")
    layer = kfit.nn.KLinear.load("dct.klinear")
    layer = kfit.nn.KLinear.from_catalog("dct2-256-...")

Complex factors (DFT, DCT via a complex FFT, ...)
    Their parameters are stored as *real views*: a complex twiddle tensor of shape ``s``
    is a real parameter of shape ``(*s, 2)`` (real and imaginary parts,
    ``torch.view_as_real``) and is viewed as complex in ``forward``. So every parameter is
    real, and ``.double()``, ``.float()`` and optimizers (including L-BFGS) act on real
    and imaginary parts as independent real numbers; the gradient is the usual one of a
    real loss with respect to them. A dtype sets the *precision* only: ``.to(torch.complex128)``
    gives float64 parameters (not complex ones), and which factors are complex is fixed by
    the K-matrix the layer was built from. Parameters count complex scalars twice, as
    kfit's ``n_params`` does: ``sum(p.numel() for p in layer.parameters())`` equals
    ``K.n_params`` (+ the bias).

Dtypes
    The layer computes in the precision of its parameters (float32 or float64; float16 is
    not supported). Inputs must have that precision (a real input gives a complex output
    when ``K`` is complex, e.g. a DFT; a ``real_output`` K-matrix such as the DCT-II gives a
    real output). The bias has the dtype of ``K`` (complex for a complex ``K``), starts at
    zero -- so a fresh layer computes exactly ``K`` -- and is added after ``K``.

This module imports only torch (already imported by kfit); ``import kfit`` does not import it.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from ._butterfly import Butterfly
from ._kmatrix import KMatrix
from ._linear import LinearOp
from ._permutation import Diagonal, Permutation

__all__ = ["KLinear"]

_PRECISIONS = (torch.float32, torch.float64)


class KLinear(nn.Module):
    """A drop-in replacement for ``nn.Linear(n, n)`` computing ``y = K x (+ bias)``.

    Parameters
    ----------
    kmatrix : KMatrix, Butterfly, Permutation or Diagonal
        The factorization (unbatched). Its tensors are copied: training the layer does not
        change ``kmatrix``.
    bias : bool, default False
        Add a learnable bias of shape ``(n,)``, initialised to zero.

    Attributes
    ----------
    in_features, out_features, n : int
        The size ``n``.
    bias : nn.Parameter or None
        Shape ``(n,)`` for a real ``K``; ``(n, 2)`` (real view of a complex bias) for a
        complex ``K``.

    Notes
    -----
    Input ``(..., n)``, output ``(..., n)``, matching ``nn.Linear``; ``y = x @ W.T + b``
    with ``W = K.to_dense()``. Parameters are named after the chain: ``f{i}_twiddle``,
    ``f{i}_values`` (nested K-matrices: ``f{i}_{j}_...``); buffers ``f{i}_perm``. Complex
    factors are stored as real views (see the module documentation).
    """

    def __init__(self, kmatrix, bias: bool = False):
        super().__init__()
        if isinstance(kmatrix, KLinear):
            kmatrix = kmatrix.to_kmatrix()
        if not isinstance(kmatrix, LinearOp):
            raise TypeError(
                f"kmatrix must be a kfit.KMatrix (or a Butterfly, Permutation or Diagonal), got "
                f"{type(kmatrix).__name__}; build one with kfit.known.*, solvers.fit(M).kmatrix or kfit.load(path)"
            )
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {type(bias).__name__}")
        K = KMatrix.wrap(kmatrix)
        if len(K.batch_shape):
            raise ValueError(
                f"kmatrix has batch shape {tuple(K.batch_shape)}; a layer holds one K-matrix: pass one member, e.g. K[0]"
            )
        self._perm_cache: dict = {}
        self._spec = self._register(K, "f")
        self.n = self.in_features = self.out_features = K.n
        self._bias_complex = K.output_is_complex
        if bias:
            prec = K._precision or torch.float64
            shape = (K.n, 2) if self._bias_complex else (K.n,)
            self.bias = nn.Parameter(torch.zeros(shape, dtype=prec, device=K.device))
        else:
            self.register_parameter("bias", None)

    # -- structure <-> parameters -----------------------------------------------------------
    def _register(self, op, prefix):
        def param(name, t):
            t = t.detach().clone()
            if t.is_complex():
                t = torch.view_as_real(t).clone()
            self.register_parameter(name, nn.Parameter(t.contiguous()))

        if isinstance(op, Butterfly):
            param(f"{prefix}_twiddle", op.twiddle)
            return {"type": "Butterfly", "name": f"{prefix}_twiddle", "increasing": op.increasing, "complex": op.is_complex}
        if isinstance(op, Diagonal):
            param(f"{prefix}_values", op.values)
            return {"type": "Diagonal", "name": f"{prefix}_values", "complex": op.is_complex}
        if isinstance(op, Permutation):
            self.register_buffer(f"{prefix}_perm", op.perm.detach().clone())
            return {"type": "Permutation", "name": f"{prefix}_perm"}
        if isinstance(op, KMatrix):
            sep = "" if prefix == "f" else "_"
            return {
                "type": "KMatrix",
                "expansion": op.expansion,
                "real_output": op.real_output,
                "factors": [self._register(f, f"{prefix}{sep}{i}") for i, f in enumerate(op.factors)],
            }
        raise TypeError(f"cannot make a layer from a factor of type {type(op).__name__}")

    def _tensor(self, node, detach):
        p = getattr(self, node["name"])
        if p.dtype not in _PRECISIONS:
            raise TypeError(
                f"KLinear parameter {node['name']} has dtype {p.dtype}; KLinear computes in float32 or float64 "
                "(complex factors are stored as real pairs): use .float() or .double()"
            )
        if detach:
            p = p.detach().clone()
        if not p.is_contiguous():
            p = p.contiguous()
        return torch.view_as_complex(p) if node["complex"] else p

    def _precision(self):
        for p in self.parameters():
            return p.dtype
        return torch.float64

    def _perm(self, node, precision):
        buf = getattr(self, node["name"])
        hit = self._perm_cache.get(node["name"])
        if hit is not None and hit[0] is buf and hit[1] == precision:
            return hit[2]
        P = Permutation(buf, dtype=precision, device=buf.device)  # validated once, then cached
        self._perm_cache[node["name"]] = (buf, precision, P)
        return P

    def _build(self, node, detach, precision):
        kind = node["type"]
        if kind == "Butterfly":
            return Butterfly(self._tensor(node, detach), increasing=node["increasing"])
        if kind == "Diagonal":
            return Diagonal(self._tensor(node, detach))
        if kind == "Permutation":
            P = self._perm(node, precision)
            return Permutation(P.perm.clone(), dtype=precision) if detach else P
        return KMatrix(
            [self._build(f, detach, precision) for f in node["factors"]],
            expansion=node["expansion"],
            real_output=node["real_output"],
        )

    def to_kmatrix(self, *, detach: bool = True) -> KMatrix:
        """The layer's current K-matrix (without the bias).

        ``detach=True``: an independent copy (safe to save, export or keep). ``False``: the
        live K-matrix whose tensors are views of the parameters (differentiable), as used
        by :meth:`forward`.
        """
        return self._build(self._spec, detach, self._precision())

    def bias_tensor(self) -> torch.Tensor | None:
        """The bias as a detached copy with the dtype of ``K`` (complex for a complex K), or None."""
        if self.bias is None:
            return None
        b = self.bias.detach().clone()
        return torch.view_as_complex(b.contiguous()) if self._bias_complex else b

    # -- nn.Module ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``K x (+ bias)`` for ``x`` of shape ``(..., n)``; returns ``(..., n)``."""
        y = self._build(self._spec, False, self._precision())(x)
        if self.bias is not None:
            b = self.bias
            if self._bias_complex:
                b = torch.view_as_complex(b if b.is_contiguous() else b.contiguous())
            y = y + b
        return y

    def _apply(self, fn, *args, **kwargs):
        # A dtype sets the precision only: parameters stay real pairs (a complex cast of a real
        # parameter keeps its real part, which is exact) and permutations stay integer indices.
        def keep(t):
            r = fn(t)
            if not isinstance(r, torch.Tensor):
                return r
            if not (t.is_floating_point() or t.is_complex()) and r.dtype != t.dtype:
                return t.to(r.device)
            if r.is_complex() and not t.is_complex():
                return r.real.contiguous()
            return r

        return super()._apply(keep, *args, **kwargs)

    def extra_repr(self) -> str:
        K = self.to_kmatrix()
        return (
            f"n={self.n}, structure='{K.structure()}', bias={self.bias is not None}, "
            f"dtype={self._precision()}".replace("torch.", "")
        )

    # -- files --------------------------------------------------------------------------------
    def save(self, path, *, metadata: dict | None = None):
        """Write the layer (K-matrix and bias) to ``path``, atomically, in the "torch" export
        format (safetensors + JSON, no pickle); returns the path. Read it with :meth:`load`."""
        from ._export import export

        return export(self, path, "torch", metadata=metadata)

    @classmethod
    def load(cls, path, *, device=None) -> "KLinear":
        """Read a layer written by :meth:`save` (or ``kfit.export(..., format="torch")``).

        A plain kfit file (``kfit.save``) is read too, as a layer without a bias. Never
        unpickles.
        """
        from . import _io

        header, tensors, path = _io._read(path)
        K = _io._decode(header["op"], "f", tensors, path)
        module = header.get("module") or {}
        if module and module.get("type") != "KLinear":
            raise ValueError(f"{path} holds a {module.get('type')!r} module, not a KLinear")
        has_bias = bool(module.get("bias", False))
        layer = cls(K, bias=has_bias)
        if has_bias:
            t = tensors.get("klinear.bias")
            if t is None:
                raise ValueError(f"{path}: the header announces a bias but the tensor 'klinear.bias' is missing")
            if tuple(t.shape) != tuple(layer.bias.shape):
                raise ValueError(
                    f"{path}: tensor 'klinear.bias' has shape {tuple(t.shape)}, expected {tuple(layer.bias.shape)}"
                )
            with torch.no_grad():
                layer.bias.copy_(t)
        return layer.to(device) if device is not None else layer

    @classmethod
    def from_catalog(cls, entry: str, root=None, *, bias: bool = False, device=None) -> "KLinear":
        """A layer initialised with a recorded factorization: ``kfit.catalog.load(entry, root=root)``."""
        catalog = importlib.import_module("kfit.catalog")
        layer = cls(catalog.load(entry, root=root), bias=bias)
        return layer.to(device) if device is not None else layer
