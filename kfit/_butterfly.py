"""The butterfly matrix: log2(n) sparse factors stored as one twiddle tensor."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from . import _products
from ._linear import LinearOp, resolve_to
from ._validate import check_finite, check_float_dtype, check_power_of_two


class Butterfly(LinearOp):
    r"""A butterfly matrix ``B = B_{L-1} \cdots B_1 B_0`` of size ``n = 2^L``.

    Parameters
    ----------
    twiddle : torch.Tensor, shape ``(*batch, L, n/2, 2, 2)``
        The 2x2 blocks of every level, levels in *application order* (``twiddle[..., 0]``
        acts first on a vector). Real (float32/float64) or complex (complex64/complex128).
        The tensor is used as given (not copied), so it may require grad.
    increasing : bool, default True
        Stride order. ``True``: level ``l`` has stride ``2**l`` (1, 2, ..., n/2; the
        butterfly ``B`` of DESIGN.md). ``False``: stride ``n / 2**(l+1)`` (n/2, ..., 1; the
        structure of the adjoint ``B*``).

    Notes
    -----
    Level ``l`` with stride ``s`` is block-diagonal with ``n/(2s)`` blocks
    ``[[D1, D2], [D3, D4]]`` (``D_i`` diagonal of size ``s``): its pair ``p`` couples
    indices ``i = (p // s)*2s + p % s`` and ``i + s`` through ``t = twiddle[..., l, p]``::

        y[i]     = t[0, 0] x[i] + t[0, 1] x[i + s]
        y[i + s] = t[1, 0] x[i] + t[1, 1] x[i + s]

    Parameters: ``2 n L`` real scalars (``4 n L`` complex). A real mat-vec costs
    ``3 n L`` FLOPs (4 multiplies + 2 adds per block); complex-on-complex ``14 n L``.
    """

    def __init__(self, twiddle: torch.Tensor, *, increasing: bool = True):
        if not isinstance(twiddle, torch.Tensor):
            raise TypeError(
                f"twiddle must be a torch.Tensor of shape (*batch, log2(n), n/2, 2, 2), "
                f"got {type(twiddle).__name__}"
            )
        check_float_dtype(twiddle.dtype, "twiddle.dtype")
        if twiddle.ndim < 4 or tuple(twiddle.shape[-2:]) != (2, 2):
            raise ValueError(
                f"twiddle must have shape (*batch, log2(n), n/2, 2, 2), got {tuple(twiddle.shape)}"
            )
        L, half = twiddle.shape[-4], twiddle.shape[-3]
        n = check_power_of_two(2 * half, "n (= 2 * twiddle.shape[-3])")
        if L != n.bit_length() - 1:
            raise ValueError(
                f"twiddle has {L} levels (shape[-4]) but n = 2 * shape[-3] = {n} needs "
                f"log2(n) = {n.bit_length() - 1}: got shape {tuple(twiddle.shape)}"
            )
        self.twiddle = twiddle
        self.increasing = bool(increasing)
        self.n = n
        self.batch_shape = twiddle.shape[:-4]

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def identity(cls, n: int, *, batch=(), dtype=torch.float64, device=None, increasing=True):
        """The identity matrix as a butterfly (every block the 2x2 identity)."""
        n = check_power_of_two(n)
        check_float_dtype(dtype)
        L = n.bit_length() - 1
        eye = torch.eye(2, dtype=dtype, device=device)
        return cls(eye.expand(*batch, L, n // 2, 2, 2).clone(), increasing=increasing)

    @classmethod
    def random(
        cls,
        n: int,
        *,
        batch=(),
        dtype=torch.float64,
        device=None,
        increasing: bool = True,
        init: str = "orthogonal",
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ):
        """A random butterfly.

        ``init="orthogonal"``: every block a random rotation/reflection (unitary for complex
        dtypes), so the product is orthogonal/unitary and well scaled at any depth.
        ``init="normal"``: i.i.d. normal entries scaled by 1/sqrt(2) (complex: circular).
        """
        n = check_power_of_two(n)
        check_float_dtype(dtype)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        L = n.bit_length() - 1
        shape = (*batch, L, n // 2)
        real = torch.float64
        if init == "orthogonal":
            theta = torch.rand(shape, generator=generator, dtype=real) * 2 * math.pi
            c, s = torch.cos(theta), torch.sin(theta)
            tw = torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)
            if dtype.is_complex:
                # U = diag(e^{i a}, e^{i b}) R(theta) diag(e^{i c}, 1): a random unitary 2x2.
                ph = torch.rand((*shape, 3), generator=generator, dtype=real) * 2 * math.pi
                left = torch.exp(1j * ph[..., :2])
                right = torch.stack((torch.exp(1j * ph[..., 2]), torch.ones_like(ph[..., 2])), -1)
                tw = left[..., :, None] * tw.to(torch.complex128) * right[..., None, :]
        elif init == "normal":
            tw = torch.randn((*shape, 2, 2), generator=generator, dtype=real) / math.sqrt(2)
            if dtype.is_complex:
                tw = (tw + 1j * torch.randn((*shape, 2, 2), generator=generator, dtype=real) / math.sqrt(2)) / math.sqrt(2)
        else:
            raise ValueError(f"init must be 'orthogonal' or 'normal', got {init!r}")
        return cls(tw.to(dtype=dtype, device=device), increasing=increasing)

    # -- properties ------------------------------------------------------------------------
    @property
    def dtype(self):
        return self.twiddle.dtype

    @property
    def device(self):
        return self.twiddle.device

    @property
    def log_n(self) -> int:
        return self.twiddle.shape[-4]

    @property
    def strides(self) -> list[int]:
        """Stride of each level, in application order."""
        return [_products.stride(self.n, lv, self.increasing) for lv in range(self.log_n)]

    @property
    def n_params(self) -> int:
        """Stored real scalars per member: 2 n log2(n) (doubled for complex)."""
        return 2 * self.n * self.log_n * (2 if self.is_complex else 1)

    def _flops(self, in_complex: bool):
        blocks = self.n // 2
        real_real, mixed, complex_complex = 4 + 2, 4 * 2 + 2 * 2, 4 * 6 + 2 * 2
        if not self.is_complex:
            return self.log_n * blocks * (mixed if in_complex else real_real), in_complex
        if in_complex:
            return self.log_n * blocks * complex_complex, True
        # A real vector becomes complex after the first level.
        return blocks * (mixed + (self.log_n - 1) * complex_complex), True

    def _repr_extra(self):
        return f", {'increasing' if self.increasing else 'decreasing'} stride"

    # -- products --------------------------------------------------------------------------
    def _apply3(self, x, path, alloc=None, perm=None):
        """``perm``: a Permutation applied to x first (``B (P x)``): the numba kernel folds
        it into its first level, every other path applies it first (into a scratch buffer)."""
        tw = self.twiddle.reshape(-1, *self.twiddle.shape[-4:])
        if x.is_complex() and not tw.is_complex():
            tw = tw.to(x.dtype)
        tracked = _products._tracked(x, tw)
        chosen = _products.resolve_path(path, self.n, x.device, rows=x.shape[0] * x.shape[1], autograd=tracked,
                                        complex_=x.is_complex())
        T = max(x.shape[0], tw.shape[0])
        out = None if alloc is None else alloc((T, *x.shape[1:]), x.dtype)
        if chosen == "numba":
            from . import _numba

            return _numba.apply(x, self._plan(tw, "numba"), None if perm is None else perm.perm, out)
        if perm is not None:
            # a reused buffer only when autograd saves nothing (it may save P x for the twiddles)
            ws = None if tracked else _products.workspace(self)
            x = perm._apply3(x, path, None if ws is None else functools.partial(_products.scratch, ws, "perm", like=x))
        if chosen == "triton":
            from ._triton import butterfly_triton  # imports triton: only on this path

            return butterfly_triton(x, tw, self.increasing)
        if chosen == "fused":
            # Autograd: two matmuls, few saved tensors. Off the CPU too: the pass plan's
            # gain was measured on CPUs (it skips a transpose that GPUs do cheaply).
            if tracked or x.device.type != "cpu":
                return _products.apply_fused_blocks(x, self._plan(tw, "two"), self.increasing)
            return _products.apply_pass_plan(x, self._plan(tw, "pass"), self.increasing, _products.workspace(self), out)
        return _products.butterfly_reference(x, tw, self.increasing)

    def _plan(self, tw, kind: str):
        """The blocks of the fused path (``kind``: "two" matmuls under autograd, "pass" plan
        otherwise) or the numba kernel's twiddle planes ("numba"), cached while the twiddles
        are unchanged.

        The cache holds a copy of the twiddles it was built from and is reused only when
        they are still equal (O(n log n) to check, against O(batch n sqrt n) for the
        product), so in-place edits -- even through ``.data`` -- are always seen. Not
        cached when autograd needs the blocks (twiddles requiring grad, grad enabled).
        """
        if kind == "numba":
            from ._numba import plan as build
        else:
            build = _products.fused_blocks if kind == "two" else _products.pass_plan
        if torch.is_grad_enabled() and self.twiddle.requires_grad:
            return build(tw, self.increasing)
        cache = self.__dict__.setdefault("_plan_cache", {})
        cached = cache.get(kind)
        if cached is not None and cached[0].dtype == tw.dtype and cached[0].device == tw.device and torch.equal(cached[0], tw):
            return cached[1]
        tw = tw.detach()
        cache[kind] = (tw.clone(), build(tw, self.increasing))
        return cache[kind][1]

    def to_dense(self, *, path: str | None = None) -> torch.Tensor:
        """The dense matrix ``(*batch, n, n)``, built by recursive doubling in ~2 n^2 work.

        ``path`` given: through the product with the identity instead (for tests).
        """
        if path is not None:
            return super().to_dense(path=path)
        tw = self.twiddle.reshape(-1, self.log_n, self.n // 2, 2, 2)
        return _products.butterfly_dense(tw, self.increasing).reshape(*self.batch_shape, self.n, self.n)

    # -- algebra ---------------------------------------------------------------------------
    def transpose(self) -> "Butterfly":
        """``B^T``: levels reversed, each block transposed, stride order flipped."""
        return Butterfly(self.twiddle.flip(-4).transpose(-1, -2), increasing=not self.increasing)

    def adjoint(self) -> "Butterfly":
        """``B^H`` (conjugate transpose); equals ``transpose()`` for real twiddles."""
        t = self.transpose()
        return Butterfly(t.twiddle.conj().resolve_conj(), increasing=t.increasing) if self.is_complex else t

    def inverse(self) -> "Butterfly":
        """``B^{-1}``: levels reversed, each 2x2 block inverted, stride order flipped.

        The inverse of a butterfly is a butterfly of the opposite stride order (a ``B``
        inverts to a ``B*``). Raises ValueError naming the first singular block.
        """
        t = self.twiddle.flip(-4)
        det = t[..., 0, 0] * t[..., 1, 1] - t[..., 0, 1] * t[..., 1, 0]
        scale = t.abs().amax((-1, -2))
        bad = ~(det.abs() > 1e-14 * scale.square())
        if bool(bad.any()):
            where = torch.nonzero(bad)[0].tolist()
            level, pair = self.log_n - 1 - where[-2], where[-1]
            raise ValueError(
                f"this Butterfly is singular: the 2x2 block of level {level} (stride "
                f"{self.strides[level]}), pair {pair} has determinant {complex(det[tuple(where)]):.3g}; "
                "only a butterfly whose blocks are all invertible has an inverse"
            )
        inv = torch.stack(
            (torch.stack((t[..., 1, 1], -t[..., 0, 1]), -1), torch.stack((-t[..., 1, 0], t[..., 0, 0]), -1)), -2
        ) / det[..., None, None]
        return Butterfly(inv, increasing=not self.increasing)

    def to(self, *args, **kwargs) -> "Butterfly":
        """Move/cast the twiddles (``torch.Tensor.to`` arguments; a dtype sets the precision,
        a complex butterfly stays complex)."""
        dtype, device = resolve_to(args, kwargs, self.dtype, self.device)
        return Butterfly(self.twiddle.to(device=device, dtype=dtype), increasing=self.increasing)

    def detach(self) -> "Butterfly":
        return Butterfly(self.twiddle.detach(), increasing=self.increasing)

    def __getitem__(self, index) -> "Butterfly":
        """Select members of the batch: ``B[i]`` is the i-th butterfly."""
        if not len(self.batch_shape):
            raise IndexError("this Butterfly has no batch dimension to index")
        tw = self.twiddle[index]
        if tw.ndim < 4 or tw.shape[-4:] != self.twiddle.shape[-4:]:
            raise IndexError(f"index {index!r} must select along the batch dimensions {tuple(self.batch_shape)} only")
        return Butterfly(tw, increasing=self.increasing)

    def check_finite(self) -> "Butterfly":
        check_finite(self.twiddle, "twiddle")
        return self

    def level_dense(self, level: int) -> torch.Tensor:
        """The dense ``(n, n)`` matrix of one level (unbatched butterflies only)."""
        self._require_unbatched("level_dense")
        n, s = self.n, self.strides[level]
        tw = self.twiddle[level]
        p = torch.arange(n // 2, device=self.device)
        i = (p // s) * 2 * s + p % s
        out = torch.zeros(n, n, dtype=self.dtype, device=self.device)
        out[i, i] = tw[:, 0, 0]
        out[i, i + s] = tw[:, 0, 1]
        out[i + s, i] = tw[:, 1, 0]
        out[i + s, i + s] = tw[:, 1, 1]
        return out

    def factors(self):
        """The levels as ``scipy.sparse.csr_matrix`` (2 non-zeros per row), in matrix-product
        order: ``factors()[0] @ factors()[1] @ ... == B`` (the last one acts first)."""
        import scipy.sparse as sp

        self._require_unbatched("factors")
        n = self.n
        tw = self.twiddle.detach().cpu().numpy()
        p = np.arange(n // 2)
        out = []
        for level in reversed(range(self.log_n)):
            s = self.strides[level]
            i = (p // s) * 2 * s + p % s
            rows = np.concatenate([i, i, i + s, i + s])
            cols = np.concatenate([i, i + s, i, i + s])
            t = tw[level]
            vals = np.concatenate([t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1]])
            out.append(sp.csr_matrix((vals, (rows, cols)), shape=(n, n)))
        return out

    def _require_unbatched(self, what):
        if len(self.batch_shape):
            raise ValueError(
                f"{what}() needs a single butterfly, this one has batch shape "
                f"{tuple(self.batch_shape)}; select one member first, e.g. B[0].{what}()"
            )
