"""kfit solvers: how to *find* a factorization. One module per algorithm.

Each solver is a small config object plus a function ``target -> Result``; a solver that
does not converge returns a Result that says so, it does not raise.
"""
from ._result import Result
from .identify import IdentifyConfig, identify
from .fit import FitConfig, baselines, fit
from .gradient import GradientConfig, fit_gradient, refine
from .permutation import PermutationConfig, detect_permutation, route_permutation
from .projection import ProjectionConfig, fit_projection
from .realpart import RealPartConfig, identify_real
from .spectral import SpectralConfig, spectral
from .splitting import SplittingConfig, fit_splitting

__all__ = [
    "Result",
    "IdentifyConfig", "identify",
    "PermutationConfig", "detect_permutation", "route_permutation",
    "RealPartConfig", "identify_real",
    "ProjectionConfig", "fit_projection",
    "SpectralConfig", "spectral",
    "SplittingConfig", "fit_splitting",
    "GradientConfig", "fit_gradient", "refine",
    "FitConfig", "fit", "baselines",
]
