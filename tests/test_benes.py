"""Tests for kfit._benes: Beneš routing of permutations in the butterfly-twiddle convention."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import kfit._benes  # noqa: F401
except ImportError:  # running `pytest` from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kfit import _benes
from kfit._benes import apply_levels, benes_strides, benes_switches, benes_twiddles

SIZES = [2 ** k for k in range(1, 11)]  # 2 .. 1024
IDENTITY = np.eye(2)
SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])


def bit_reversal(n: int) -> np.ndarray:
    m = n.bit_length() - 1
    return np.array([int(format(i, f"0{m}b")[::-1], 2) for i in range(n)], dtype=np.int64)


def structured_perms(n: int) -> dict[str, np.ndarray]:
    a = np.arange(n)
    return {
        "identity": a,
        "reversal": a[::-1].copy(),
        "bit_reversal": bit_reversal(n),
        "shift1": (a + 1) % n,
        "shift_half_plus_1": (a + n // 2 + 1) % n,
        "shift_minus3": (a - 3) % n,
    }


def all_perms(n: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(1000 + n)
    out = list(structured_perms(n).items())
    out += [(f"random{k}", rng.permutation(n)) for k in range(5)]
    return out


def route(perm, x, vectorized=True):
    n = len(perm)
    tw_dec, tw_inc = benes_twiddles(perm)
    s_dec, s_inc = benes_strides(n)
    y = apply_levels(tw_dec, s_dec, x, vectorized=vectorized)
    return apply_levels(tw_inc, s_inc, y, vectorized=vectorized)


def level_matrix(t: np.ndarray, s: int, n: int) -> np.ndarray:
    """Dense n x n matrix of one level, straight from the pair formula."""
    M = np.zeros((n, n))
    for p in range(n // 2):
        b, j = divmod(p, s)
        i = b * 2 * s + j
        M[i, i], M[i, i + s] = t[p, 0, 0], t[p, 0, 1]
        M[i + s, i], M[i + s, i + s] = t[p, 1, 0], t[p, 1, 1]
    return M


# ----------------------------------------------------------------------------- routing
@pytest.mark.parametrize("n", SIZES)
def test_routes_every_permutation(n):
    m = n.bit_length() - 1
    x = np.arange(n)
    for name, perm in all_perms(n):
        tw_dec, tw_inc = benes_twiddles(perm)
        assert tw_dec.shape == tw_inc.shape == (m, n // 2, 2, 2), name
        assert tw_dec.dtype == tw_inc.dtype == np.float64
        is_id = np.all(tw_dec == IDENTITY, axis=(-2, -1)) | np.all(tw_dec == SWAP, axis=(-2, -1))
        assert is_id.all(), name
        is_id = np.all(tw_inc == IDENTITY, axis=(-2, -1)) | np.all(tw_inc == SWAP, axis=(-2, -1))
        assert is_id.all(), name
        assert np.all(tw_inc[0] == IDENTITY), f"{name}: increasing stride-1 level not identity"
        y = route(perm, x)
        assert np.array_equal(y, x[perm]), name
        assert np.array_equal(y, perm), name


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_dense_product_equals_permutation_matrix(n):
    s_dec, s_inc = benes_strides(n)
    for name, perm in all_perms(n):
        tw_dec, tw_inc = benes_twiddles(perm)
        total = np.eye(n)
        for t, s in list(zip(tw_dec, s_dec)) + list(zip(tw_inc, s_inc)):
            total = level_matrix(t, s, n) @ total  # later levels act on the left
        P = np.zeros((n, n))
        P[np.arange(n), perm] = 1.0
        assert np.array_equal(total, P), name


def test_strides():
    assert benes_strides(2) == ([1], [1])
    assert benes_strides(16) == ([8, 4, 2, 1], [1, 2, 4, 8])


def test_n2_cases():
    d, i = benes_twiddles([0, 1])
    assert np.array_equal(d[0, 0], IDENTITY) and np.array_equal(i[0, 0], IDENTITY)
    d, i = benes_twiddles([1, 0])
    assert np.array_equal(d[0, 0], SWAP) and np.array_equal(i[0, 0], IDENTITY)


def test_identity_routes_straight():
    cd, ci = benes_switches(np.arange(256))
    assert not cd.any() and not ci.any()


def test_dtype_and_input_types():
    perm = [3, 0, 2, 1]
    for dt in (np.float32, np.complex128, np.int8):
        d, i = benes_twiddles(perm, dtype=dt)
        assert d.dtype == i.dtype == dt
    for arr in (np.array(perm, dtype=np.int32), np.array(perm, dtype=np.uint8), tuple(perm)):
        assert np.array_equal(route(arr, np.arange(4)), perm)
    x = np.array([10.5, -1.0, 2.0 + 3j, 7.0])
    assert np.array_equal(route(perm, x), x[perm])


def test_colouring_paths_agree(monkeypatch):
    """The pure-Python loop and the numpy lockstep walk give identical switches."""
    rng = np.random.default_rng(7)
    perms = [rng.permutation(512) for _ in range(3)] + list(structured_perms(512).values())
    for perm in perms:
        monkeypatch.setattr(_benes, "VECTORISE_MIN_SUBNETS", 1)
        a = benes_switches(perm)
        monkeypatch.setattr(_benes, "VECTORISE_MIN_SUBNETS", 10 ** 9)
        b = benes_switches(perm)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert np.array_equal(route(perm, np.arange(512)), perm)


def test_large_random_permutation():
    n = 65536
    perm = np.random.default_rng(65536).permutation(n)
    tw_dec, tw_inc = benes_twiddles(perm)
    assert np.all(tw_inc[0] == IDENTITY)
    s_dec, s_inc = benes_strides(n)
    x = np.arange(n)
    y = apply_levels(tw_inc, s_inc, apply_levels(tw_dec, s_dec, x))
    assert np.array_equal(y, perm)


# ----------------------------------------------------------------------------- apply_levels
def test_apply_levels_loop_matches_vectorised_on_general_twiddles():
    rng = np.random.default_rng(3)
    for n in (2, 8, 32):
        s_dec, s_inc = benes_strides(n)
        strides = s_dec + s_inc + [2, 1] * (n > 2)
        tw = rng.standard_normal((len(strides), n // 2, 2, 2))
        x = rng.standard_normal((3, 2, n))
        a = apply_levels(tw, strides, x, vectorized=True)
        b = apply_levels(tw, strides, x, vectorized=False)
        assert a.shape == x.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        # and against the dense matrices
        total = np.eye(n)
        for t, s in zip(tw, strides):
            total = level_matrix(t, s, n) @ total
        np.testing.assert_allclose(a, x @ total.T, rtol=1e-10, atol=1e-10)


def test_apply_levels_batch_routing():
    perm = np.random.default_rng(5).permutation(64)
    X = np.random.default_rng(6).standard_normal((4, 64))
    assert np.array_equal(route(perm, X), X[:, perm])
    assert np.array_equal(route(perm, X, vectorized=False), X[:, perm])


def test_apply_levels_rejects_mismatch():
    tw = np.zeros((2, 4, 2, 2))
    with pytest.raises(ValueError, match="strides"):
        apply_levels(tw, [4], np.arange(8.0))
    with pytest.raises(ValueError, match="does not fit"):
        apply_levels(tw, [8, 4], np.arange(8.0))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "perm, pattern",
    [
        ([0, 1, 3, 3], r"perm.*duplicate index 3.*missing index 2"),
        ([5, 0, 1, 2, 3, 4, 6, 6], r"perm.*duplicate index 6.*missing index 7"),
        ([0, 1, 2, 4], r"perm.*0\.\.3.*out-of-range value 4 at position 3"),
        ([0, -1, 2, 3], r"perm.*out-of-range value -1 at position 1"),
        ([0.0, 1.0, 2.0, 3.0], r"perm.*integer.*float64"),
        ([True, False], r"perm.*integer.*bool"),
        ([[0, 1], [1, 0]], r"perm.*1-D.*\(2, 2\)"),
        ([3, 1, 0, 2, 5, 4], r"perm.*power of two.*length 6.*pad it to 8"),
        ([0], r"perm.*power of two.*length 1"),
        ([], r"perm.*empty"),
    ],
)
def test_bad_input(perm, pattern):
    with pytest.raises(ValueError, match=pattern):
        benes_twiddles(perm)
