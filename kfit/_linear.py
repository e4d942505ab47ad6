"""The common base of every structured type: shapes, dtypes, the product contract.

Shapes.  An operator of size ``n`` with batch shape ``batch`` behaves like a stack of
``(*batch, n, n)`` matrices under ``torch.matmul`` against a stack of *row* vectors:

* ``x`` of shape ``(n,)`` or ``(m, n)`` is shared by every member of the batch; the
  result has shape ``(*batch, n)`` or ``(*batch, m, n)``.
* ``x`` of shape ``(*batch, m, n)`` gives each member its own ``m`` vectors (leading
  dimensions of size 1 broadcast).
* An unbatched operator (``batch == ()``) accepts any ``(..., n)``.

Dtypes.  The result's dtype is the promotion of the operator's and the input's dtype:
a real input is promoted to complex for a complex operator, but precisions must agree
(mixing float32 and float64 is an error, not a silent up- or down-cast).
"""
from __future__ import annotations

import math

import torch

from ._validate import complex_dtype_of, real_dtype_of


def resolve_to(args, kwargs, current: torch.dtype, device):
    """Parse ``.to(...)`` arguments into (dtype, device), keeping complexness.

    A dtype sets the *precision*: a complex operator asked for float32 becomes complex64
    (casting it to a real dtype would silently drop the imaginary parts), and a real one
    asked for complex64 becomes complex64.
    """
    probe = torch.empty(0, dtype=current, device=device).to(*args, **kwargs)
    dtype = probe.dtype
    if not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(f"dtype must be a floating-point or complex dtype, got {dtype}")
    if current.is_complex:
        dtype = complex_dtype_of(real_dtype_of(dtype))
    return dtype, probe.device


class LinearOp:
    """Base class: subclasses implement ``_apply3``, ``_flops``, ``n_params`` and shapes."""

    n: int
    batch_shape: torch.Size

    # -- to be provided by subclasses ------------------------------------------------
    def _apply3(self, x: torch.Tensor, path: str | None, alloc=None) -> torch.Tensor:  # pragma: no cover
        """(Tx, M, n) -> (T, M, n) on canonical, dtype-promoted input.

        ``alloc(shape, dtype)``, when given, supplies a reusable buffer the result may be
        written to instead of a fresh tensor (a K-matrix's intermediates; never used while
        autograd records)."""
        raise NotImplementedError

    def _flops(self, in_complex: bool) -> tuple[int, bool]:  # pragma: no cover
        """Real FLOPs of one mat-vec with a real/complex input; and whether the output is complex."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:  # pragma: no cover
        raise NotImplementedError

    @property
    def device(self) -> torch.device:  # pragma: no cover
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    @property
    def is_complex(self) -> bool:
        return self.dtype.is_complex

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the dense matrix, ``(*batch, n, n)``."""
        return (*self.batch_shape, self.n, self.n)

    @property
    def output_is_complex(self) -> bool:
        """Whether the dense matrix is complex (what ``to_dense`` returns)."""
        return self.is_complex

    @property
    def flops(self) -> int:
        """Real FLOPs (multiplies + adds) of one mat-vec on a vector of the matrix's own
        domain: real vectors for a real matrix, complex vectors for a complex one.

        Conventions (DESIGN.md): complex multiply = 6, complex add = 2, real-by-complex
        multiply = 2; permutations and the real part cost nothing.
        """
        return self._flops(self.output_is_complex)[0]

    @property
    def T(self):
        """The transpose (``transpose()``)."""
        return self.transpose()

    @property
    def H(self):
        """The conjugate transpose (``adjoint()``)."""
        return self.adjoint()

    def __matmul__(self, other):
        """Composition: every structured type composes with ``@`` into a KMatrix."""
        from ._kmatrix import compose

        return compose(self, other)

    def __rmatmul__(self, other):
        from ._kmatrix import compose

        return compose(other, self)

    def __call__(self, x, *, path: str | None = None) -> torch.Tensor:
        """Apply to a batch of row vectors ``x`` of shape ``(..., n)``; see the module doc.

        ``path`` picks the product implementation: "auto" (default: the Triton kernel on
        CUDA tensors when triton is installed; on the CPU without autograd the compiled
        numba kernel (the fused pass plan for large real batches below n = 4096, where it
        is as fast); while autograd records "fused", only for n >= 16 and 8+ vectors, else
        "reference"), "reference", "fused", "numba" (CPU, no autograd) or "triton" (CUDA
        tensors, or the CPU under ``TRITON_INTERPRET=1``); ``KFIT_PRODUCT_PATH``
        sets the default.
        """
        x3, out_shape = self._canonical_input(x)
        y = self._apply3(x3, path)
        return y.reshape(out_shape)

    def to_dense(self, *, path: str | None = None) -> torch.Tensor:
        """The dense matrix, shape ``(*batch, n, n)`` (``y = A @ x`` for column ``x``)."""
        eye = torch.eye(self.n, dtype=real_dtype_of(self.dtype), device=self.device)
        # Applying to the identity's rows gives rows A e_j, i.e. the transpose.
        return self(eye, path=path).transpose(-1, -2)

    def __repr__(self) -> str:
        b = f", batch={tuple(self.batch_shape)}" if len(self.batch_shape) else ""
        return f"{type(self).__name__}(n={self.n}{b}, dtype={self.dtype}{self._repr_extra()})"

    def _repr_extra(self) -> str:
        return ""

    # -- input handling --------------------------------------------------------------
    def _result_dtype(self, x_dtype: torch.dtype, name: str = "x") -> torch.dtype:
        if not (x_dtype.is_floating_point or x_dtype.is_complex):
            raise TypeError(
                f"{name} must be a floating-point or complex tensor, got dtype {x_dtype}; "
                f"convert it with {name}.to({real_dtype_of(self.dtype)})"
            )
        if real_dtype_of(x_dtype) != real_dtype_of(self.dtype):
            raise TypeError(
                f"{name} has dtype {x_dtype} but the {type(self).__name__} has dtype {self.dtype}: "
                f"precisions must agree. Convert one of them, e.g. {name}.to({self.dtype}) "
                f"or op.to({real_dtype_of(x_dtype)})"
            )
        return complex_dtype_of(x_dtype) if (self.is_complex or x_dtype.is_complex) else x_dtype

    def _canonical_input(self, x, name: str = "x"):
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (..., {self.n}), got {type(x).__name__}; "
                f"wrap it with torch.as_tensor({name}, dtype={self.dtype})"
            )
        if x.device != self.device:
            raise ValueError(
                f"{name} is on device {x.device} but the {type(self).__name__} is on {self.device}; "
                f"move one of them with .to(device)"
            )
        if x.ndim == 0 or x.shape[-1] != self.n:
            raise ValueError(
                f"{name} must have shape (..., {self.n}) (last dimension = n = {self.n}), "
                f"got shape {tuple(x.shape)}"
            )
        dtype = self._result_dtype(x.dtype, name)
        x = x.to(dtype)
        batch = tuple(self.batch_shape)
        n = self.n
        if not batch:
            lead = tuple(x.shape[:-1])
            return x.reshape(1, -1, n), (*lead, n)
        if x.ndim == 1:
            return x.reshape(1, 1, n), (*batch, n)
        if x.ndim == 2:
            return x.reshape(1, x.shape[0], n), (*batch, x.shape[0], n)
        xb = tuple(x.shape[:-2])
        if len(xb) != len(batch) or any(a not in (1, b) for a, b in zip(xb, batch)):
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}: for a {type(self).__name__} with batch shape "
                f"{batch}, pass vectors of shape (m, {n}) shared by all members, or "
                f"(*{batch}, m, {n}) with one set per member"
            )
        m = x.shape[-2]
        if all(a == 1 for a in xb):
            return x.reshape(1, m, n), (*batch, m, n)
        return x.expand(*batch, m, n).reshape(math.prod(batch), m, n), (*batch, m, n)
