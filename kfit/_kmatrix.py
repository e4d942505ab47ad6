"""The K-matrix: a chain of butterflies, permutations and diagonals."""
from __future__ import annotations

import functools

import torch

from . import _products
from ._butterfly import Butterfly
from ._linear import LinearOp
from ._permutation import Diagonal, Permutation
from ._validate import check_power_of_two, complex_dtype_of, real_dtype_of

_FACTOR_TYPES = (Butterfly, Permutation, Diagonal)


class KMatrix(LinearOp):
    r"""A Kaleidoscope matrix: a product of structured factors.

    .. math::  K = \mathrm{Re}?\big( E^T \, F_0 F_1 \cdots F_{k-1} \, E \big)

    Parameters
    ----------
    factors : sequence of Butterfly, Permutation, Diagonal or KMatrix
        In *matrix-product order*: ``factors[0]`` is the leftmost (applied last),
        ``factors[-1]`` acts first on a vector -- ``KMatrix([B, P])`` is ``B @ P``.
        All factors have the working size ``N = expansion * n``.
    expansion : int, default 1
        ``e`` in the hierarchy (BB*)^w_e: ``K`` is the top-left ``n x n`` corner of the
        ``N x N`` product (``E`` embeds ``R^n`` into the first ``n`` coordinates of ``R^N``).
    real_output : bool, default False
        Take the real part of the product (DCT/DST from a complex FFT). The matrix is then
        ``Re(A)``; a complex input is handled linearly, ``Re(A) x = Re(A Re x) + i Re(A Im x)``.

    Batched factors (multi-start fitting) must all share one batch shape; unbatched
    factors are shared across the batch.
    """

    def __init__(self, factors, *, expansion: int = 1, real_output: bool = False):
        factors = list(factors) if not isinstance(factors, (LinearOp,)) else [factors]
        if not factors:
            raise ValueError("factors must be a non-empty sequence of Butterfly/Permutation/Diagonal/KMatrix")
        for i, f in enumerate(factors):
            if not isinstance(f, (*_FACTOR_TYPES, KMatrix)):
                raise TypeError(
                    f"factors[{i}] must be a Butterfly, Permutation, Diagonal or KMatrix, got {type(f).__name__}"
                )
        sizes = [f.n for f in factors]
        if len(set(sizes)) != 1:
            raise ValueError(f"all factors must have the same size, got sizes {sizes} (in matrix order)")
        if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
            raise ValueError(f"expansion must be an int >= 1, got {expansion!r}")
        N = sizes[0]
        if N % expansion:
            raise ValueError(f"the factors' size {N} is not divisible by expansion={expansion}")
        precisions = {real_dtype_of(f.dtype) for f in factors if not isinstance(f, Permutation)}
        if len(precisions) > 1:
            raise TypeError(
                "factors mix precisions " + ", ".join(f"factors[{i}]: {f.dtype}" for i, f in enumerate(factors))
                + "; convert them to one precision with .to(dtype)"
            )
        devices = {str(f.device) for f in factors}
        if len(devices) > 1:
            raise ValueError(f"factors live on different devices {sorted(devices)}; move them with .to(device)")
        batches = {tuple(f.batch_shape) for f in factors if len(f.batch_shape)}
        if len(batches) > 1:
            raise ValueError(f"batched factors must share one batch shape, got {sorted(batches)}")
        self.factors = factors
        self.expansion = expansion
        self.real_output = bool(real_output)
        self.N = N
        self.n = N // expansion
        self.batch_shape = torch.Size(batches.pop()) if batches else torch.Size()
        self._precision = precisions.pop() if precisions else None

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def random(
        cls,
        n: int,
        *,
        width: int = 1,
        expansion: int = 1,
        dtype=torch.float64,
        batch=(),
        device=None,
        init: str = "orthogonal",
        seed: int | None = None,
        real_output: bool = False,
    ) -> "KMatrix":
        """A random member of (BB*)^w_e: ``B_1 B_2^* ... B_{2w-1} B_{2w}^*`` of size
        ``e*n``, cornered to ``n``. ``B`` has increasing, ``B^*`` decreasing strides."""
        N = check_power_of_two(n * expansion, "n * expansion")
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        fs = []
        for _ in range(width):
            for inc in (True, False):
                fs.append(Butterfly.random(N, batch=batch, dtype=dtype, device=device, increasing=inc, init=init, generator=g))
        return cls(fs, expansion=expansion, real_output=real_output)

    @classmethod
    def wrap(cls, op) -> "KMatrix":
        """``op`` as a KMatrix (itself if it already is one)."""
        if isinstance(op, KMatrix):
            return op
        if isinstance(op, _FACTOR_TYPES):
            return cls([op])
        raise TypeError(f"cannot make a KMatrix from {type(op).__name__}")

    # -- properties ------------------------------------------------------------------------
    @property
    def dtype(self):
        """The dtype of the matrix (of ``to_dense()``): complex iff the matrix is complex --
        a real-part K-matrix is real even though it computes with complex factors."""
        if self._precision is None:
            return self.factors[0].dtype
        return complex_dtype_of(self._precision) if self.output_is_complex else self._precision

    @property
    def device(self):
        return self.factors[0].device

    @property
    def output_is_complex(self):
        """Whether the matrix is complex: a real input vector gives a complex output."""
        return self._flops(False)[1]

    @property
    def n_params(self) -> int:
        return sum(f.n_params for f in self.factors)

    @property
    def n_indices(self) -> int:
        """Stored permutation indices (not counted as parameters)."""
        return sum(getattr(f, "n_indices", 0) for f in self.factors)

    @property
    def butterflies(self) -> list[Butterfly]:
        return [f for f in self.factors if isinstance(f, Butterfly)]

    @property
    def width(self) -> int:
        """Number of butterfly factors, divided by two and rounded up (w in (BB*)^w)."""
        return (sum(len(f.butterflies) if isinstance(f, KMatrix) else isinstance(f, Butterfly) for f in self.factors) + 1) // 2

    def _flops(self, in_complex):
        if self.real_output and in_complex:
            # Re(A) on a complex vector: Re(A Re x) + i Re(A Im x), two real applications.
            return 2 * self._flops(False)[0], True
        total, c = 0, in_complex
        for f in reversed(self.factors):
            fl, c = f._flops(c)
            total += fl
        return total, (c and not self.real_output)

    def structure(self) -> str:
        """A short formula for the chain, e.g. ``'Re(D · B · P)'`` (complex factors marked ``ℂ``)."""
        parts = []
        for f in self.factors:
            if isinstance(f, Butterfly):
                s = "B" if f.increasing else "B*"
            elif isinstance(f, Permutation):
                s = "P"
            elif isinstance(f, Diagonal):
                s = "D"
            else:
                s = f"({f.structure()})"
            if not isinstance(f, (Permutation, KMatrix)) and f.is_complex:
                s += "ℂ"
            parts.append(s)
        s = " · ".join(parts)
        if self.expansion > 1:
            s = f"corner{self.n}[{s}]"
        return f"Re({s})" if self.real_output else s

    def _repr_extra(self):
        return f", structure='{self.structure()}'"

    # -- products --------------------------------------------------------------------------
    def _result_dtype(self, x_dtype, name="x"):
        if self._precision is None:  # permutations only: any input dtype
            return Permutation._result_dtype(self, x_dtype, name)
        return super()._result_dtype(x_dtype, name)

    def _apply3(self, x, path, alloc=None):
        if self.real_output and x.is_complex():
            # The matrix is Re(A): extend it linearly to complex inputs.
            return torch.complex(self._apply3(x.real, path), self._apply3(x.imag, path))
        y = self._apply_chain(x, path, alloc)
        return y.real if self.real_output and y.is_complex() else y

    def _apply_chain(self, x, path, alloc=None):
        """The factors right to left. Intermediates go to two scratch buffers of this
        K-matrix, reused across calls (fresh ones page-fault: measured 2x on B @ P at
        1024 x 1024 complex64); only the last factor writes a tensor the caller keeps."""
        n, N = self.n, self.N
        if N != n:
            x = torch.nn.functional.pad(x, (0, N - n))
        factors = self.factors[::-1]
        # While autograd records anything here, every intermediate is a fresh tensor: a
        # reused one could be overwritten before the backward that saved it.
        ws = None if _products._tracked(x, *self._tensors()) else _products.workspace(self)
        perm = None  # a permutation waiting to be applied by the butterfly after it
        for i, f in enumerate(factors):
            nxt = factors[i + 1] if i + 1 < len(factors) else None
            if isinstance(f, Permutation) and isinstance(nxt, Butterfly):
                perm = f  # B · P: the butterfly reads through it (free in the numba kernel)
                continue
            if f.is_complex and not x.is_complex() and not isinstance(f, KMatrix):
                x = x.to(complex_dtype_of(x.dtype))  # a nested KMatrix promotes for itself
            if i == len(factors) - 1:
                use = alloc
            elif ws is None:
                use = None
            else:  # alternate the slots: a factor never writes over its own input
                use = functools.partial(_products.scratch, ws, i % 2, like=x)
            if perm is not None:
                x, perm = f._apply3(x, path, use, perm=perm), None
            else:
                x = f._apply3(x, path, use)
        return x[..., :n] if N != n else x

    def _tensors(self):
        """Every parameter tensor of the chain (twiddles, diagonal values), nested ones too."""
        for f in self.factors:
            if isinstance(f, KMatrix):
                yield from f._tensors()
            elif isinstance(f, Butterfly):
                yield f.twiddle
            elif isinstance(f, Diagonal):
                yield f.values

    def to_dense(self, *, path: str | None = None) -> torch.Tensor:
        """The dense matrix ``(*batch, n, n)``.

        The rightmost structured factor is densified directly (Butterfly.to_dense is
        ~2 n^2 work); factors to its left are applied to its columns, permutations are
        index moves. ``path`` given: through the product with the identity instead.
        """
        if path is not None:
            return super().to_dense(path=path)
        D, right = None, None  # D: dense so far; right: permutations before any dense factor
        for f in reversed(self.factors):
            if isinstance(f, Permutation):
                if D is None:
                    right = f if right is None else f @ right
                else:
                    D = torch.index_select(D, -2, f.perm.to(D.device))  # (P D)[i] = D[perm[i]]
            elif D is None:
                D = f.to_dense()
                if right is not None:  # (D P)[:, c] = D[:, perm^-1[c]]: permute every row
                    N = D.shape[-1]
                    D = right.inverse()._apply3(D.reshape(1, -1, N), None).reshape(D.shape)
            else:  # the product promotes a real D for a complex factor
                D = f(D.transpose(-1, -2)).transpose(-1, -2)
        if D is None:  # permutations only
            D = right.to_dense()
        D = D[..., : self.n, : self.n]
        if self.real_output and D.is_complex():
            D = D.real
        return D.contiguous()

    # -- algebra ---------------------------------------------------------------------------
    def adjoint(self) -> "KMatrix":
        """``K^H``. For ``real_output``, ``Re(A)^T = Re(A^H)`` on real vectors."""
        return KMatrix([f.adjoint() for f in reversed(self.factors)], expansion=self.expansion, real_output=self.real_output)

    def transpose(self) -> "KMatrix":
        return KMatrix([f.transpose() for f in reversed(self.factors)], expansion=self.expansion, real_output=self.real_output)



    def to(self, *args, **kwargs) -> "KMatrix":
        """Move/cast every factor (a dtype sets the precision; complex factors stay complex)."""
        return KMatrix([f.to(*args, **kwargs) for f in self.factors], expansion=self.expansion, real_output=self.real_output)

    def detach(self) -> "KMatrix":
        return KMatrix(
            [f if isinstance(f, Permutation) else f.detach() for f in self.factors],
            expansion=self.expansion,
            real_output=self.real_output,
        )

    def __getitem__(self, index) -> "KMatrix":
        """Select members of the batch (batched factors are indexed, shared ones kept)."""
        if not len(self.batch_shape):
            raise IndexError("this KMatrix has no batch dimension to index")
        fs = [f[index] if len(f.batch_shape) else f for f in self.factors]
        return KMatrix(fs, expansion=self.expansion, real_output=self.real_output)

    def flat_factors(self) -> list:
        """The factors with nested KMatrix factors expanded (only when those have no
        expansion and no real part, i.e. when flattening does not change the matrix)."""
        out = []
        for f in self.factors:
            if isinstance(f, KMatrix) and f.expansion == 1 and not f.real_output:
                out.extend(f.flat_factors())
            else:
                out.append(f)
        return out


def compose(left, right) -> KMatrix:
    """``left @ right`` as one KMatrix, flattened when that is exact, nested otherwise."""
    if isinstance(left, Permutation) and isinstance(right, Permutation):
        return left @ right
    if not isinstance(left, LinearOp) or not isinstance(right, LinearOp):
        return NotImplemented
    a, b = KMatrix.wrap(left), KMatrix.wrap(right)
    if a.n != b.n:
        raise ValueError(f"cannot compose operators of sizes {a.n} (left) and {b.n} (right)")
    # Flattening is exact unless a real part would move: Re(A) B != Re(A B) for complex B.
    if a.expansion == 1 and b.expansion == 1 and not b.real_output and not (a.real_output and b.is_complex):
        return KMatrix(a.factors + b.factors, real_output=a.real_output)
    return KMatrix([a, b])
