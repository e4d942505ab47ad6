"""kfit: recover fast algorithms (butterfly / Kaleidoscope factorizations) of matrices.

The public surface (see README.md)::

    import kfit
    M = kfit.targets.get("dft", 256)      # a named target (float64 / complex128)
    K = kfit.known.dft(256)               # the classical fast algorithm, as a KMatrix
    y = K(x); K.to_dense(); K.n_params; K.flops
"""
from ._butterfly import Butterfly
from ._kmatrix import KMatrix, compose
from ._permutation import Diagonal, Permutation
from . import costs, known, targets
from ._io import load, load_metadata, save
from ._export import export

__version__ = "0.1.0"

__all__ = ["Butterfly", "KMatrix", "Permutation", "Diagonal", "compose", "costs", "known", "targets", "save", "load", "load_metadata", "export"]
