"""Tests for kfit.targets (the target registry) and kfit._matrix_input.as_matrix.

Every target is compared with an independent reference (scipy.fft, scipy.linalg,
scipy.special, numpy, explicit loops), both on the identity and on random vectors.
"""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import scipy.fft as sfft
import scipy.linalg as sla
import scipy.special as sps
import torch

from kfit import targets
from kfit._matrix_input import as_matrix

SIZES = [1, 2, 3, 4, 5, 8, 16, 31, 64]
POW2 = [1, 2, 4, 8, 16, 64]
ATOL = 1e-12


def _np(M: torch.Tensor) -> np.ndarray:
    return M.numpy()


def _rand_vecs(n: int, k: int = 3, seed: int = 123) -> np.ndarray:
    """k random real vectors of length n, as the columns of an (n, k) array."""
    return np.random.default_rng(seed + n).standard_normal((n, k))


def _check_against(M: torch.Tensor, ref_apply, n: int) -> None:
    """M @ x == ref_apply(x) on the identity and on random vectors (columnwise)."""
    A = _np(M)
    assert A.shape == (n, n)
    I = np.eye(n)
    np.testing.assert_allclose(A, ref_apply(I), rtol=0, atol=ATOL)
    X = _rand_vecs(n)
    for j in range(X.shape[1]):
        np.testing.assert_allclose(
            A @ X[:, j], ref_apply(X[:, j]), rtol=0, atol=ATOL * 10
        )


# --------------------------------------------------------------------------------------
# Fourier family against scipy.fft
# --------------------------------------------------------------------------------------

FFT_REFS = {
    "dft": lambda x: sfft.fft(x, axis=0, norm="ortho"),
    "idft": lambda x: sfft.ifft(x, axis=0, norm="ortho"),
}
for _t in range(1, 5):
    FFT_REFS[f"dct{_t}"] = lambda x, t=_t: sfft.dct(x, type=t, axis=0, norm="ortho")
    FFT_REFS[f"dst{_t}"] = lambda x, t=_t: sfft.dst(x, type=t, axis=0, norm="ortho")


def _min_n(name: str) -> int:
    return 2 if name in ("dct1",) else 1


@pytest.mark.parametrize(
    "name, n", [(nm, n) for nm in sorted(FFT_REFS) for n in SIZES if n >= _min_n(nm)]
)
def test_fourier_family_matches_scipy(name, n):
    M = targets.get(name, n)
    _check_against(M, FFT_REFS[name], n)
    expected = torch.complex128 if name in ("dft", "idft") else torch.float64
    assert M.dtype == expected
    assert M.device.type == "cpu"


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("kind", ["dct", "dst"])
@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_dct_dst_type_alias(kind, t, n):
    M = targets.get(kind, n, type=t)
    assert torch.equal(M, targets.get(f"{kind}{t}", n))


def test_dct_dst_default_type_is_2():
    assert torch.equal(targets.get("dct", 8), targets.get("dct2", 8))
    assert torch.equal(targets.get("dst", 8), targets.get("dst2", 8))


@pytest.mark.parametrize("bad", [0, 5, 2.0, "2", True, None])
def test_dct_bad_type(bad):
    with pytest.raises(ValueError, match="type"):
        targets.get("dct", 8, type=bad)


def test_dct1_needs_n_at_least_2():
    with pytest.raises(ValueError, match="n >= 2|n must be an int >= 2"):
        targets.get("dct1", 1)
    with pytest.raises(ValueError, match="n >= 2"):
        targets.get("dct", 1, type=1)


def test_dft_large_n_accurate():
    # Exact angle reduction keeps the large-n matrix accurate to a few ulps.
    n = 1000
    M = _np(targets.get("dft", n))
    np.testing.assert_allclose(M, sfft.fft(np.eye(n), axis=0, norm="ortho"), atol=1e-14)


# --------------------------------------------------------------------------------------
# Hartley, Hadamard, Legendre, circulant, Toeplitz, permutations, randn
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_hartley_is_re_minus_im_of_fft(n):
    def ref(x):
        f = np.fft.fft(x, axis=0, norm="ortho")
        return f.real - f.imag

    M = targets.get("hartley", n)
    assert M.dtype == torch.float64
    _check_against(M, ref, n)
    # formula check by an explicit loop on a small size
    if n <= 8:
        H = np.empty((n, n))
        for j in range(n):
            for k in range(n):
                a = 2 * math.pi * j * k / n
                H[j, k] = (math.cos(a) + math.sin(a)) / math.sqrt(n)
        np.testing.assert_allclose(_np(M), H, atol=ATOL)


@pytest.mark.parametrize("n", POW2)
def test_hadamard_matches_scipy(n):
    M = targets.get("hadamard", n)
    assert M.dtype == torch.float64
    H = sla.hadamard(n) / math.sqrt(n)
    _check_against(M, lambda x: H @ x, n)
    np.testing.assert_array_equal(_np(M), H)  # entries are exactly +-1/sqrt(n)


@pytest.mark.parametrize("n", [3, 5, 12, 31])
def test_hadamard_non_power_of_two_names_next_power(n):
    up = 1 << (n - 1).bit_length()
    with pytest.raises(ValueError, match=rf"\b{up}\b"):
        targets.get("hadamard", n)


def test_hadamard_12_says_16():
    with pytest.raises(ValueError) as exc:
        targets.get("hadamard", 12)
    assert "16" in str(exc.value) and "power of two" in str(exc.value)


@pytest.mark.parametrize("n", SIZES)
def test_legendre_matches_scipy_special(n):
    x, w = sps.roots_legendre(n)
    order = np.argsort(x)
    x, w = x[order], w[order]
    ref = np.array([np.sqrt((2 * i + 1) / 2) * sps.eval_legendre(i, x) * np.sqrt(w)
                    for i in range(n)])
    M = targets.get("legendre", n)
    assert M.dtype == torch.float64
    _check_against(M, lambda v: ref @ v, n)
    # nodes are ascending: the last column belongs to the largest node, where P_i > 0
    assert np.all(_np(M)[:, -1] > 0)


def test_legendre_orthogonal_at_larger_n():
    n = 300
    M = targets.get("legendre", n)
    eye = torch.eye(n, dtype=torch.float64)
    assert (M @ M.T - eye).abs().max() < 1e-12
    assert (M.T @ M - eye).abs().max() < 1e-12


def test_legendre_nodes_agree_with_numpy():
    n = 16
    x, w = np.polynomial.legendre.leggauss(n)
    # degree-0 row is sqrt(w/2); degree-1 row is sqrt(3/2) x sqrt(w)
    M = _np(targets.get("legendre", n))
    np.testing.assert_allclose(M[0], np.sqrt(w / 2), atol=1e-13)
    np.testing.assert_allclose(M[1], np.sqrt(1.5) * x * np.sqrt(w), atol=1e-13)


@pytest.mark.parametrize("alias", ["circulant", "convolution"])
@pytest.mark.parametrize("n", SIZES)
def test_circulant_matches_scipy_and_convolves(alias, n):
    kernel = np.random.default_rng(n).standard_normal(n)
    M = targets.get(alias, n, kernel=kernel)
    assert M.dtype == torch.float64
    C = sla.circulant(kernel)
    _check_against(M, lambda x: C @ x, n)

    # circular convolution by an explicit loop
    x = _rand_vecs(n, 1)[:, 0]
    y = np.array([sum(kernel[(i - j) % n] * x[j] for j in range(n)) for i in range(n)])
    np.testing.assert_allclose(_np(M) @ x, y, atol=1e-12)


@pytest.mark.parametrize("n", [1, 4, 31])
def test_circulant_seeded_kernel(n):
    M = targets.get("circulant", n, seed=7)
    k = np.random.default_rng(7).standard_normal(n)
    np.testing.assert_array_equal(_np(M), sla.circulant(k))
    assert torch.equal(targets.get("circulant", n), targets.get("circulant", n, seed=0))
    assert torch.equal(targets.get("convolution", n, seed=7), M)


def test_circulant_kernel_accepts_list_and_tensor():
    k = [1.0, 2.0, 3.0]
    A = targets.get("circulant", 3, kernel=k)
    B = targets.get("circulant", 3, kernel=torch.tensor(k))
    assert torch.equal(A, B)
    np.testing.assert_array_equal(_np(A), sla.circulant(k))


@pytest.mark.parametrize(
    "kernel, exc, pattern",
    [
        ([1.0, 2.0], ValueError, r"kernel.*length n=3.*\(2,\)"),
        (np.ones((3, 1)), ValueError, r"kernel.*shape \(3, 1\)"),
        ([1.0, np.nan, 2.0], ValueError, "non-finite"),
        ([1j, 0, 0], TypeError, "real"),
        (["a", "b", "c"], TypeError, "numeric"),
    ],
)
def test_circulant_bad_kernel(kernel, exc, pattern):
    with pytest.raises(exc, match=pattern):
        targets.get("circulant", 3, kernel=kernel)


def test_circulant_kernel_and_seed_exclusive():
    with pytest.raises(ValueError, match="at most one of kernel, seed"):
        targets.get("circulant", 3, kernel=[1.0, 2.0, 3.0], seed=1)


@pytest.mark.parametrize("n", SIZES)
def test_toeplitz_matches_scipy(n):
    rng = np.random.default_rng(1000 + n)
    c, r = rng.standard_normal(n), rng.standard_normal(n)
    M = targets.get("toeplitz", n, c=c, r=r)
    assert M.dtype == torch.float64
    T = sla.toeplitz(c, r)
    _check_against(M, lambda x: T @ x, n)
    # c alone: symmetric, as in scipy
    np.testing.assert_array_equal(_np(targets.get("toeplitz", n, c=c)), sla.toeplitz(c))


@pytest.mark.parametrize("n", [1, 5, 16])
def test_toeplitz_seeded(n):
    rng = np.random.default_rng(3)
    c = rng.standard_normal(n)
    r = rng.standard_normal(n)
    M = targets.get("toeplitz", n, seed=3)
    np.testing.assert_array_equal(_np(M), sla.toeplitz(c, r))


def test_toeplitz_r_without_c_rejected():
    with pytest.raises(ValueError, match="r .*without c"):
        targets.get("toeplitz", 3, r=[1.0, 2.0, 3.0])


def _perm_ref(perm):
    n = len(perm)
    P = np.zeros((n, n))
    for i in range(n):
        P[i, perm[i]] = 1.0
    return P


@pytest.mark.parametrize("n", SIZES)
def test_permutation_explicit(n):
    perm = np.random.default_rng(n).permutation(n)
    M = targets.get("permutation", n, perm=perm)
    assert M.dtype == torch.float64
    P = _perm_ref(perm)
    np.testing.assert_array_equal(_np(M), P)
    x = _rand_vecs(n, 1)[:, 0]
    np.testing.assert_array_equal(_np(M) @ x, np.array([x[perm[i]] for i in range(n)]))


@pytest.mark.parametrize("n", [1, 8, 31])
def test_permutation_seeded(n):
    perm = np.random.default_rng(5).permutation(n)
    M = targets.get("permutation", n, seed=5)
    np.testing.assert_array_equal(_np(M), _perm_ref(perm))


@pytest.mark.parametrize(
    "perm, exc, pattern",
    [
        ([0, 1, 1], ValueError, "exactly once"),
        ([0, 1, 3], ValueError, "exactly once"),
        ([0, 1], ValueError, "length n=3"),
        ([0.0, 1.0, 2.0], TypeError, "integers"),
        ([True, False, True], TypeError, "integers"),
    ],
)
def test_permutation_bad(perm, exc, pattern):
    with pytest.raises(exc, match=pattern):
        targets.get("permutation", 3, perm=perm)


def _bitrev_loop(n):
    m = n.bit_length() - 1
    out = []
    for i in range(n):
        r = 0
        for b in range(m):
            if i >> b & 1:
                r |= 1 << (m - 1 - b)
        out.append(r)
    return out


@pytest.mark.parametrize("n", POW2)
def test_bitrev(n):
    rev = targets.bit_reversal(n)
    assert rev.dtype == np.int64
    assert rev.tolist() == _bitrev_loop(n)
    M = targets.get("bitrev", n)
    assert M.dtype == torch.float64
    np.testing.assert_array_equal(_np(M), _perm_ref(_bitrev_loop(n)))
    x = _rand_vecs(n, 1)[:, 0]
    np.testing.assert_array_equal(_np(M) @ x, x[rev])


def test_bitrev_known_values():
    assert targets.bit_reversal(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]


@pytest.mark.parametrize("n", [3, 6, 12])
def test_bitrev_rejects_non_power_of_two(n):
    up = 1 << (n - 1).bit_length()
    with pytest.raises(ValueError, match=rf"\b{up}\b"):
        targets.get("bitrev", n)
    with pytest.raises(ValueError, match=rf"\b{up}\b"):
        targets.bit_reversal(n)


def test_dft_times_bitrev_is_dit_order():
    n = 16
    F, P = _np(targets.get("dft", n)), _np(targets.get("bitrev", n))
    x = _rand_vecs(n, 1)[:, 0]
    ref = sfft.fft(x[targets.bit_reversal(n)], norm="ortho")
    np.testing.assert_allclose(F @ P @ x, ref, atol=1e-13)


@pytest.mark.parametrize("n", [1, 3, 16, 64])
def test_randn(n):
    M = targets.get("randn", n, seed=11)
    assert M.dtype == torch.float64
    ref = np.random.default_rng(11).standard_normal((n, n)) / math.sqrt(n)
    np.testing.assert_array_equal(_np(M), ref)
    assert torch.equal(targets.get("randn", n), targets.get("randn", n, seed=0))


# --------------------------------------------------------------------------------------
# Properties over the whole registry
# --------------------------------------------------------------------------------------

ORTHOGONAL = ["dft", "idft", "dct1", "dct2", "dct3", "dct4", "dst1", "dst2", "dst3",
              "dst4", "hadamard", "hartley", "legendre", "permutation", "bitrev"]


def _valid_sizes(name):
    inf = targets.info(name)
    sizes = POW2 if inf.power_of_two_only else SIZES
    return [n for n in sizes if n >= _min_n(name)]


@pytest.mark.parametrize("name", ORTHOGONAL)
def test_orthogonal_or_unitary(name):
    for n in _valid_sizes(name):
        M = targets.get(name, n)
        eye = torch.eye(n, dtype=M.dtype)
        assert torch.allclose(M.conj().T @ M, eye, atol=1e-12, rtol=0), (name, n)
        assert torch.allclose(M @ M.conj().T, eye, atol=1e-12, rtol=0), (name, n)


def test_dft_idft_inverse_pair():
    for n in SIZES:
        F, Fi = targets.get("dft", n), targets.get("idft", n)
        assert torch.allclose(Fi @ F, torch.eye(n, dtype=torch.complex128), atol=1e-12)
        assert torch.equal(Fi, F.conj())


@pytest.mark.parametrize("name", targets.names())
def test_every_target_dtype_shape_and_determinism(name):
    inf = targets.info(name)
    n = 8
    A = targets.get(name, n)
    B = targets.get(name, n)
    assert A.shape == (n, n)
    assert A.dtype == (torch.complex128 if inf.is_complex else torch.float64)
    assert A.device.type == "cpu" and A.is_contiguous()
    assert torch.equal(A, B)
    assert bool(torch.isfinite(A).all())
    # the result is a fresh tensor: mutating it does not affect later calls
    A.zero_()
    assert torch.equal(targets.get(name, n), B)


@pytest.mark.parametrize("name", [nm for nm in targets.names() if "seed" in
                                  targets.info(nm).params])
def test_different_seeds_differ(name):
    n = 16
    a = targets.get(name, n, seed=1)
    b = targets.get(name, n, seed=2)
    assert not torch.equal(a, b)
    assert torch.equal(a, targets.get(name, n, seed=1))


@pytest.mark.parametrize("name", targets.names())
def test_describe_and_info(name):
    d = targets.describe(name)
    assert isinstance(d, str) and "\n" not in d and d.startswith(name)
    inf = targets.info(name)
    assert isinstance(inf, targets.TargetInfo)
    assert inf.name == name and isinstance(inf.doc, str) and inf.doc
    inf.params["zzz"] = 1  # a copy: the registry is unaffected
    assert "zzz" not in targets.info(name).params


def test_names_contains_all_builtins():
    expected = {"dft", "idft", "dct", "dst", "hadamard", "hartley", "circulant",
                "convolution", "toeplitz", "permutation", "bitrev", "legendre", "randn"}
    expected |= {f"dct{t}" for t in range(1, 5)} | {f"dst{t}" for t in range(1, 5)}
    assert expected <= set(targets.names())
    assert targets.names() == sorted(targets.names())
    assert targets.info("hadamard").power_of_two_only
    assert targets.info("bitrev").power_of_two_only
    assert not targets.info("dft").power_of_two_only
    assert targets.info("dft").is_complex and not targets.info("dct2").is_complex
    assert targets.info("circulant").params == {"kernel": None, "seed": 0}


@pytest.mark.parametrize("name", [nm for nm in targets.names()])
def test_docstrings_state_formula(name):
    # numpydoc-style docstrings with the defining formula on every built-in
    e = targets._REGISTRY[name]
    assert e.fn.__doc__ and "=" in targets.info(name).doc


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError) as exc:
        targets.get("hadamrd", 8)
    msg = str(exc.value)
    assert "hadamard" in msg and "Did you mean" in msg
    assert "legendre" in msg  # all names listed


def test_unknown_name_lists_all_names():
    with pytest.raises(ValueError) as exc:
        targets.get("zzzzzz", 8)
    for nm in targets.names():
        assert nm in str(exc.value)


def test_name_case_insensitive():
    assert torch.equal(targets.get("DCT2", 4), targets.get("dct2", 4))


@pytest.mark.parametrize(
    "n, exc",
    [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError),
     (False, TypeError), (4.0, TypeError), ("4", TypeError), (None, TypeError)],
)
def test_bad_n_rejected(n, exc):
    with pytest.raises(exc, match="n must be"):
        targets.get("dft", n)


def test_numpy_int_n_accepted():
    assert targets.get("dct2", np.int64(4)).shape == (4, 4)


def test_unknown_param_named():
    with pytest.raises(TypeError) as exc:
        targets.get("dft", 8, seed=1)
    assert "'seed'" in str(exc.value) and "none" in str(exc.value)
    with pytest.raises(TypeError) as exc:
        targets.get("circulant", 8, kernal=[1.0] * 8)
    assert "'kernal'" in str(exc.value) and "kernel" in str(exc.value)


@pytest.mark.parametrize("seed, exc", [(-1, ValueError), (1.5, TypeError),
                                       (None, TypeError), (True, TypeError)])
def test_bad_seed(seed, exc):
    with pytest.raises(exc, match="seed"):
        targets.get("randn", 4, seed=seed)


# --------------------------------------------------------------------------------------
# register: user targets
# --------------------------------------------------------------------------------------


@pytest.fixture
def clean_registry():
    saved = dict(targets._REGISTRY)
    yield
    targets._REGISTRY.clear()
    targets._REGISTRY.update(saved)


def test_register_user_target(clean_registry):
    @targets.register("scaled_identity", complex=False, params={"alpha": 1.0},
                      doc="alpha * I")
    def _f(n, alpha=1.0):
        return alpha * np.eye(n)

    assert "scaled_identity" in targets.names()
    M = targets.get("scaled_identity", 3, alpha=2.0)
    assert M.dtype == torch.float64
    assert torch.equal(M, 2 * torch.eye(3, dtype=torch.float64))
    assert targets.describe("scaled_identity").endswith("alpha * I")
    with pytest.raises(ValueError, match="already exists"):
        targets.register("scaled_identity", complex=False, doc="x")(_f)


def test_register_complex_target_and_docstring_summary(clean_registry):
    @targets.register("phase", complex=True)
    def _g(n):
        """Diagonal of phases: ``M = diag(exp(2 pi i k / n))``.

        More text.
        """
        return torch.diag(torch.exp(2j * math.pi * torch.arange(n) / n))

    M = targets.get("phase", 4)
    assert M.dtype == torch.complex128
    doc = targets.info("phase").doc
    assert doc == "Diagonal of phases: ``M = diag(exp(2 pi i k / n))``."


def test_register_user_result_is_copied(clean_registry):
    cache = np.eye(3)

    @targets.register("cached", complex=False, doc="a cached identity")
    def _c(n):
        return cache

    M = targets.get("cached", 3)
    M[0, 0] = 42.0
    assert cache[0, 0] == 1.0
    # int results of a real target come back as float64
    targets.register("ints", complex=False, doc="integer ones")(
        lambda n: np.ones((n, n), dtype=np.int32))
    assert targets.get("ints", 2).dtype == torch.float64


def test_register_alias_and_power_of_two(clean_registry):
    @targets.register("twice", complex=False, doc="2 I", aliases=("double",),
                      power_of_two_only=True)
    def _t(n):
        return 2 * np.eye(n)

    assert torch.equal(targets.get("double", 4), targets.get("twice", 4))
    assert "alias of twice" in targets.describe("double")
    with pytest.raises(ValueError, match="8"):
        targets.get("twice", 6)


def test_register_validates(clean_registry):
    with pytest.raises(ValueError, match="doc"):
        targets.register("nodoc", complex=False)(lambda n: np.eye(n))
    with pytest.raises(TypeError, match="must accept"):
        targets.register("badsig", complex=False, params={"a": 1}, doc="d")(
            lambda n: np.eye(n))

    @targets.register("wrongshape", complex=False, doc="d")
    def _h(n):
        return np.eye(n + 1)

    with pytest.raises(ValueError, match="shape"):
        targets.get("wrongshape", 3)

    @targets.register("sneaky_complex", complex=False, doc="d")
    def _k(n):
        return 1j * np.eye(n)

    with pytest.raises(TypeError, match="complex=True"):
        targets.get("sneaky_complex", 3)


# --------------------------------------------------------------------------------------
# as_matrix
# --------------------------------------------------------------------------------------


def test_as_matrix_numpy():
    a = np.arange(9.0).reshape(3, 3)
    t = as_matrix(a)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_array_equal(t.numpy(), a)
    a[0, 0] = 100.0  # numpy input is copied
    assert t[0, 0] == 0.0


@pytest.mark.parametrize(
    "dtype, expected",
    [(np.float32, torch.float32), (np.float64, torch.float64),
     (np.complex64, torch.complex64), (np.complex128, torch.complex128),
     (np.int32, torch.float64), (np.int64, torch.float64), (np.uint8, torch.float64),
     (np.bool_, torch.float64), (np.float16, torch.float64)],
)
def test_as_matrix_numpy_dtypes(dtype, expected):
    t = as_matrix(np.eye(3).astype(dtype))
    assert t.dtype == expected
    real = t.real if t.is_complex() else t
    assert torch.equal(real, torch.eye(3, dtype=real.dtype))


def test_as_matrix_non_native_byte_order():
    a = np.eye(3).astype(">f8")
    t = as_matrix(a)
    assert t.dtype == torch.float64
    assert torch.equal(t, torch.eye(3, dtype=torch.float64))


def test_as_matrix_non_contiguous_numpy():
    a = np.arange(16.0).reshape(4, 4).T
    np.testing.assert_array_equal(as_matrix(a).numpy(), a)


@pytest.mark.parametrize(
    "dtype, expected",
    [(torch.float32, torch.float32), (torch.float64, torch.float64),
     (torch.complex64, torch.complex64), (torch.complex128, torch.complex128),
     (torch.int64, torch.float64), (torch.bool, torch.float64),
     (torch.float16, torch.float64), (torch.bfloat16, torch.float64)],
)
def test_as_matrix_torch_dtypes(dtype, expected):
    t = as_matrix(torch.eye(4, dtype=dtype))
    assert t.dtype == expected and t.device.type == "cpu"


def test_as_matrix_torch_kept_as_is():
    x = torch.randn(4, 4, dtype=torch.float64)
    assert as_matrix(x) is x


def test_as_matrix_list_and_tuple():
    t = as_matrix([[1, 2], [3, 4]])
    assert t.dtype == torch.float64
    np.testing.assert_array_equal(t.numpy(), [[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(as_matrix(((1.0, 2.0), (3.0, 4.0))), t)
    assert as_matrix([[1j, 0], [0, 1]]).dtype == torch.complex128


def test_as_matrix_ragged_list():
    with pytest.raises((ValueError, TypeError), match="M"):
        as_matrix([[1.0, 2.0], [3.0]])


def test_as_matrix_npy_path(tmp_path):
    a = np.random.default_rng(0).standard_normal((5, 5))
    p = tmp_path / "m.npy"
    np.save(p, a)
    for arg in (p, str(p)):
        t = as_matrix(arg)
        assert t.dtype == torch.float64
        np.testing.assert_array_equal(t.numpy(), a)


def test_as_matrix_npz_path(tmp_path):
    a = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    p = tmp_path / "one.npz"
    np.savez(p, a)
    t = as_matrix(p)
    assert t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), a)

    p2 = tmp_path / "two.npz"
    np.savez(p2, a=a, b=a)
    with pytest.raises(ValueError, match="exactly one array.*2"):
        as_matrix(p2)


class _Boom:
    """Unpickling this object would set a flag: as_matrix must never do it."""

    unpickled = False

    def __reduce__(self):
        return (_mark_unpickled, ())


def _mark_unpickled():
    _Boom.unpickled = True
    return 0


def test_as_matrix_rejects_pickled_npy(tmp_path):
    obj = np.empty((2, 2), dtype=object)
    for i in range(2):
        for j in range(2):
            obj[i, j] = _Boom()
    p = tmp_path / "evil.npy"
    np.save(p, obj, allow_pickle=True)
    _Boom.unpickled = False
    with pytest.raises(ValueError, match="pickled.*refused"):
        as_matrix(p)
    assert not _Boom.unpickled


def test_as_matrix_rejects_pickled_npz(tmp_path):
    obj = np.array([[1, "a"], [None, 2.0]], dtype=object)
    p = tmp_path / "evil.npz"
    np.savez(p, obj)
    with pytest.raises(ValueError, match="pickled.*refused"):
        as_matrix(p)


def test_as_matrix_rejects_raw_pickle_named_npy(tmp_path):
    p = tmp_path / "raw.npy"
    p.write_bytes(pickle.dumps(np.eye(3)))
    with pytest.raises(ValueError, match="pickled.*refused"):
        as_matrix(p)


def test_as_matrix_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        as_matrix(tmp_path / "nope.npy")
    with pytest.raises(FileNotFoundError):
        as_matrix(str(tmp_path / "nope.npy"))


def test_as_matrix_unsupported_suffix(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match=r"\.npy or \.npz"):
        as_matrix(p)
    with pytest.raises(ValueError, match=r"\.npy"):
        as_matrix(str(p))


def test_as_matrix_non_square():
    with pytest.raises(ValueError, match=r"square.*\(2, 3\)"):
        as_matrix(np.ones((2, 3)))
    t = as_matrix(np.ones((2, 3)), square=False)
    assert t.shape == (2, 3)


@pytest.mark.parametrize("shape", [(2, 2, 2), (4,), ()])
def test_as_matrix_wrong_ndim(shape):
    with pytest.raises(ValueError, match="2-D") as exc:
        as_matrix(np.ones(shape), name="target")
    assert "target" in str(exc.value)
    if shape:
        assert str(shape) in str(exc.value)


def test_as_matrix_3d_torch():
    with pytest.raises(ValueError, match=r"2-D.*\(2, 3, 3\)"):
        as_matrix(torch.ones(2, 3, 3))


def test_as_matrix_empty():
    with pytest.raises(ValueError, match="non-empty"):
        as_matrix(np.ones((0, 0)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_as_matrix_non_finite(bad):
    a = np.eye(3)
    a[1, 2] = bad
    with pytest.raises(ValueError, match="myM.*non-finite"):
        as_matrix(a, name="myM")
    with pytest.raises(ValueError, match="non-finite"):
        as_matrix(torch.from_numpy(a))


def test_as_matrix_registry_name():
    t = as_matrix("dft", n=8)
    assert torch.equal(t, targets.get("dft", 8))
    assert torch.equal(as_matrix("DCT2", n=4), targets.get("dct2", 4))


def test_as_matrix_registry_name_without_n():
    with pytest.raises(ValueError, match="n="):
        as_matrix("dft")


def test_as_matrix_unknown_string_suggests():
    with pytest.raises(ValueError, match="dct2"):
        as_matrix("dtc2", n=8)


def test_as_matrix_n_must_match():
    with pytest.raises(ValueError, match=r"\(3, 3\).*n=4"):
        as_matrix(np.eye(3), n=4)
    assert as_matrix(np.eye(3), n=3).shape == (3, 3)


@pytest.mark.parametrize("bad", [None, 3, 2.5, {"a": 1}, object()])
def test_as_matrix_bad_type(bad):
    with pytest.raises((TypeError, ValueError), match="M"):
        as_matrix(bad)


def test_as_matrix_string_array_rejected():
    with pytest.raises(TypeError, match="numeric"):
        as_matrix(np.array([["a", "b"], ["c", "d"]]))


# --------------------------------------------------------------------------------------
# Property-based checks (hypothesis)
# --------------------------------------------------------------------------------------

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # optional: only these tests are skipped
    HAVE_HYPOTHESIS = False


def test_hypothesis_available_or_skipped():
    if not HAVE_HYPOTHESIS:
        pytest.skip("hypothesis not installed: property-based tests skipped")


if HAVE_HYPOTHESIS:

    @settings(max_examples=25, deadline=None)
    @given(m=st.integers(min_value=0, max_value=10))
    def test_bit_reversal_is_an_involutive_permutation(m):
        n = 1 << m
        rev = targets.bit_reversal(n)
        assert sorted(rev.tolist()) == list(range(n))
        assert np.array_equal(rev[rev], np.arange(n))
        assert rev.tolist() == _bitrev_loop(n)

    @settings(max_examples=25, deadline=None)
    @given(n=st.integers(min_value=1, max_value=24), seed=st.integers(0, 2**32 - 1))
    def test_circulant_diagonalised_by_dft(n, seed):
        # convolution theorem, ortho convention: F C F^H = diag(sqrt(n) F kernel)
        C = targets.get("circulant", n, seed=seed).to(torch.complex128)
        F = targets.get("dft", n)
        kernel = np.random.default_rng(seed).standard_normal(n)
        D = F @ C @ F.conj().T
        expected = torch.from_numpy(np.diag(np.fft.fft(kernel)))
        tol = 1e-10 * max(1.0, float(np.abs(kernel).sum()))
        assert torch.allclose(D, expected, atol=tol)

    @settings(max_examples=25, deadline=None)
    @given(perm=st.integers(1, 20).flatmap(lambda n: st.permutations(list(range(n)))))
    def test_permutation_convention(perm):
        n = len(perm)
        x = np.arange(n, dtype=np.float64) * 10 + 1
        y = targets.get("permutation", n, perm=perm).numpy() @ x
        assert y.tolist() == [x[p] for p in perm]
