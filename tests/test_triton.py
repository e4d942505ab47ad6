"""The fused Triton kernel (kfit/_triton.py) on the CPU, under the Triton interpreter.

triton decides between compiling and interpreting when ``@triton.jit`` runs, i.e. when
``kfit._triton`` is first imported: this module sets TRITON_INTERPRET=1 around that import
(and, through an autouse fixture, for each of its tests, since the interpreter and kfit's
dispatch read it again at run time), then restores the environment for the other modules.

Forward products are checked against the independent dense references of
``tests/_reference.py`` and against ``kfit._products.butterfly_reference``; gradients
(input and twiddles) against autograd through ``butterfly_reference``. Small sizes: the
interpreter runs every program in Python.

triton is a test dependency on Linux x86_64 (CI installs it; ``pip install kfit[gpu]``):
there, a missing triton fails this module on purpose rather than skipping it. Elsewhere
no triton wheel exists, and the module is skipped with that reason.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from _reference import batched_butterfly_dense, op_dense, random_twiddles, random_vectors, rel_err, to_numpy
from kfit import Butterfly, known
from kfit import _numba, _products

_old = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    try:
        import triton  # noqa: F401  (imported here so that a missing triton says how to fix it)
    except ImportError as e:  # pragma: no cover - CI installs triton
        import platform

        if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
            pytest.skip("triton has wheels for Linux x86_64 only", allow_module_level=True)
        raise ImportError("tests/test_triton.py needs triton: pip install kfit[gpu] (or triton)") from e
    from kfit import _triton as kt
finally:
    if _old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _old

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]
DTYPE_IDS = ["f32", "f64", "c64", "c128"]


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    assert kt.INTERPRET, (
        "kfit._triton was imported before this module, without TRITON_INTERPRET=1: "
        "its kernels are compiled for a GPU and cannot run on CPU tensors"
    )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("KFIT_PRODUCT_PATH", raising=False)


def _tol(dtype):
    return 1e-12 if dtype in (torch.float64, torch.complex128) else 2e-5


def _tile(dtype, elems):
    """The ``tile`` argument (scalars) that gives tiles of ``elems`` elements for dtype."""
    return elems * (2 if dtype.is_complex else 1) * (2 if dtype in (torch.float64, torch.complex128) else 1)


def _data(rng, n, dtype, Tt, Tx, M):
    cplx = dtype.is_complex
    tw = torch.from_numpy(random_twiddles(rng, n, batch=(Tt,), complex_=cplx)).to(dtype)
    x = torch.from_numpy(random_vectors(rng, (Tx, M, n), complex_=cplx)).to(dtype)
    return tw, x


def _dense_rows(tw, increasing, x):
    """(T, M, n) rows mapped by the independent dense butterflies, in float64/complex128."""
    A = batched_butterfly_dense(to_numpy(tw).astype(np.complex128), increasing)  # (Tt, n, n)
    return np.einsum("tij,tmj->tmi", A, to_numpy(x).astype(np.complex128))


# ======================================================================================
# forward


@pytest.mark.parametrize("increasing", [True, False], ids=["inc", "dec"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_forward_matches_dense_reference(n, dtype, increasing, rng):
    """Through the public API (path='triton'): a batch of 2 butterflies, each with its own
    vectors (even n) or sharing one set (odd log2 n)."""
    shared = (n.bit_length() - 1) % 2 == 1
    tw, x = _data(rng, n, dtype, 2, 1 if shared else 2, 3)
    B = Butterfly(tw, increasing=increasing)
    y = B(x[0] if shared else x, path="triton")
    assert y.shape == (2, 3, n) and y.dtype == dtype
    ref = _dense_rows(tw, increasing, x.expand(2, 3, n))
    assert rel_err(y, ref) <= _tol(dtype)
    r = _products.butterfly_reference(x, tw, increasing)
    assert rel_err(y, r) <= _tol(dtype)


@pytest.mark.parametrize("dtype,increasing", [(torch.float32, True), (torch.float64, False),
                                              (torch.complex64, False), (torch.complex128, True)],
                         ids=["f32-inc", "f64-dec", "c64-dec", "c128-inc"])
def test_forward_in_several_passes(dtype, increasing, rng):
    """Tiles of 128 elements (at least 4 rows of 32): n = 64 is cut into two passes, the
    second one strided (S = 8, runs of BB = 4 contiguous elements, two runs per group)."""
    n, tile = 64, _tile(dtype, 128)
    elems = kt._tile_budget(dtype, tile)
    assert kt.plan_passes(n, elems // kt.MIN_ROWS) == [(0, 3, 1), (3, 6, 4)]
    tw, x = _data(rng, n, dtype, 2, 2, 5)
    y = kt.butterfly_triton(x, tw, increasing, tile=tile)
    assert rel_err(y, _dense_rows(tw, increasing, x)) <= _tol(dtype)


def test_plan_passes():
    assert kt.plan_passes(4096, 8192) == [(0, 12, 1)]
    assert kt.plan_passes(16384, 8192) == [(0, 7, 1), (7, 14, 64)]
    for n, elems in [(2**14, 2048), (2**20, 4096), (2**24, 8192), (64, 4), (8, 2)]:
        plan = kt.plan_passes(n, elems)
        assert plan[0][0] == 0 and plan[-1][1] == n.bit_length() - 1
        for (e0, e1, bb), nxt in zip(plan, plan[1:] + [None]):
            assert e1 > e0 and (nxt is None or nxt[0] == e1)
            assert (1 << (e1 - e0)) * bb <= elems and bb <= (1 << e0)


def test_kmatrix_and_promotion(rng):
    """The DFT K-matrix (B . P_bitrev) and a complex butterfly on real vectors."""
    n = 16
    K = known.dft(n)
    X = torch.from_numpy(random_vectors(rng, (3, n), complex_=True))
    assert rel_err(K(X, path="triton"), to_numpy(X) @ op_dense(K).T) <= 1e-12
    tw, _ = _data(rng, n, torch.complex128, 1, 1, 1)
    B = Butterfly(tw[0], increasing=False)
    xr = torch.from_numpy(random_vectors(rng, (4, n)))
    y = B(xr, path="triton")
    assert y.dtype == torch.complex128
    assert rel_err(y, _dense_rows(tw, False, xr[None])[0]) <= 1e-12


def test_empty_batch():
    B = Butterfly.identity(8)
    assert B(torch.zeros(0, 8, dtype=torch.float64), path="triton").shape == (0, 8)


# ======================================================================================
# backward


def _grads(f, x, tw, g, need):
    inputs = [v for v, w in zip((x, tw), need) if w]
    return torch.autograd.grad(f(x, tw), inputs, g)


CASES = [  # (dtype, increasing, Tx, Tt)
    (torch.float32, True, 2, 2),
    (torch.float64, False, 1, 2),
    (torch.float64, True, 2, 1),
    (torch.complex64, False, 2, 1),
    (torch.complex128, True, 1, 2),
    (torch.complex128, False, 2, 2),
]


@pytest.mark.parametrize("dtype,increasing,Tx,Tt", CASES,
                         ids=[f"{i}-{'inc' if c[1] else 'dec'}-x{c[2]}-t{c[3]}" for i, c in
                              zip(["f32", "f64", "f64", "c64", "c128", "c128"], CASES)])
@pytest.mark.parametrize("n", [2, 32])  # 32: backward segments of 3 + 2 levels
def test_backward_matches_reference(n, dtype, increasing, Tx, Tt, rng):
    """grad x and grad twiddle against autograd through the per-level reference,
    including broadcast members (Tx or Tt = 1: their gradients are summed)."""
    tw, x = _data(rng, n, dtype, Tt, Tx, 3)
    g = torch.from_numpy(random_vectors(rng, (2, 3, n), complex_=dtype.is_complex)).to(dtype)
    for need in [(True, True), (True, False), (False, True)]:
        xr, twr = x.clone().requires_grad_(need[0]), tw.clone().requires_grad_(need[1])
        got = _grads(lambda a, b: kt.butterfly_triton(a, b, increasing), xr, twr, g, need)
        ref = _grads(lambda a, b: _products.butterfly_reference(a, b, increasing), xr, twr, g, need)
        for a, b in zip(got, ref):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert rel_err(a, b) <= _tol(dtype) * 10, need


@pytest.mark.parametrize("dtype,increasing", [(torch.float64, True), (torch.complex128, False)], ids=["f64-inc", "c128-dec"])
def test_backward_in_several_passes_and_row_blocks(dtype, increasing, rng):
    """Two passes in the backward (n = 16, tiles of 32 elements, rows of at most 8: strides
    1-2, then 4-8 in two runs of 2), 9 rows in blocks of 8 (first pass) or 4 (second pass)
    looped over by 1 or 2 programs per member: the partial sums accumulate over row blocks,
    programs and passes."""
    n, tile = 16, _tile(dtype, 64)  # the backward halves the tile
    assert kt.plan_passes(n, kt._tile_budget(dtype, tile // 2) // kt.MIN_ROWS) == [(0, 2, 1), (2, 4, 2)]
    tw, x = _data(rng, n, dtype, 2, 1, 9)
    g = torch.from_numpy(random_vectors(rng, (2, 9, n), complex_=dtype.is_complex)).to(dtype)
    need = (True, True)
    xr, twr = x.clone().requires_grad_(), tw.clone().requires_grad_()
    got = _grads(lambda a, b: kt.butterfly_triton(a, b, increasing, tile=tile, programs=8), xr, twr, g, need)
    ref = _grads(lambda a, b: _products.butterfly_reference(a, b, increasing), xr, twr, g, need)
    for a, b in zip(got, ref):
        assert rel_err(a, b) <= 1e-12


def test_gradcheck_public_api(rng):
    """torch.autograd.gradcheck through Butterfly(...)(x, path='triton'): a real batched
    butterfly on complex per-member vectors (the twiddles are promoted to complex)."""
    n = 4
    tw = torch.from_numpy(random_twiddles(rng, n, batch=(2,))).requires_grad_()
    xc = torch.from_numpy(random_vectors(rng, (2, 3, n), complex_=True)).requires_grad_()

    def f(tw, x):
        return Butterfly(tw, increasing=False)(x, path="triton")

    assert torch.autograd.gradcheck(f, (tw, xc), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's forward AD
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_forward_mode_jvp(dtype, rng):
    import torch.autograd.forward_ad as fwAD

    n = 8
    tw, x = _data(rng, n, dtype, 2, 1, 3)
    dtw, dx = _data(rng, n, dtype, 2, 1, 3)
    out = []
    for f in (kt.butterfly_triton, _products.butterfly_reference):
        with fwAD.dual_level():
            y = f(fwAD.make_dual(x, dx), fwAD.make_dual(tw, dtw), True)
            out.append(fwAD.unpack_dual(y))
    assert rel_err(out[0].primal, out[1].primal) <= 1e-12
    assert rel_err(out[0].tangent, out[1].tangent) <= 1e-12


# ======================================================================================
# dispatch and errors (no kernels run here)


def test_resolve_path_triton(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _products.resolve_path("triton", 64, cpu) == "triton"  # TRITON_INTERPRET=1 (fixture)
    assert _products.resolve_path("triton", 64, cuda) == "triton"
    assert _products.resolve_path("auto", 64, cuda, rows=1) == "triton"
    monkeypatch.setenv("KFIT_PRODUCT_PATH", "triton")
    assert _products.resolve_path(None, 64, cpu) == "triton"
    monkeypatch.delenv("KFIT_PRODUCT_PATH")
    # "auto" on the CPU never picks the interpreter by itself: the numba kernel (fused
    # without numba) without autograd, fused or reference with it
    cpu_fast = "numba" if _numba.available() else "fused"
    assert _products.resolve_path("auto", 64, cpu, rows=100) == cpu_fast
    assert _products.resolve_path("auto", 64, cpu, rows=2) == cpu_fast
    assert _products.resolve_path("auto", 64, cpu, rows=2, autograd=True) == "reference"
    assert _products.resolve_path("auto", 8, cpu, autograd=True) == "reference"
    assert _products.resolve_path("auto", 64, cpu, rows=100, autograd=True) == "fused"

    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError) as ei:
        _products.resolve_path("triton", 64, cpu)
    msg = str(ei.value)
    assert "path='triton'" in msg and "CUDA" in msg and "cpu" in msg and "TRITON_INTERPRET=1" in msg
    monkeypatch.setenv("KFIT_PRODUCT_PATH", "triton")
    with pytest.raises(ValueError, match=r"\$KFIT_PRODUCT_PATH='triton'"):
        Butterfly.identity(8)(torch.zeros(8, dtype=torch.float64))
    monkeypatch.delenv("KFIT_PRODUCT_PATH")

    # without triton: an explicit request says how to install it, "auto" falls back
    monkeypatch.setattr(_products, "_has_triton", lambda: False)
    with pytest.raises(ValueError, match=r"pip install kfit\[gpu\]"):
        _products.resolve_path("triton", 64, cuda)
    assert _products.resolve_path("auto", 64, cuda, rows=100) == "fused"


def test_kernel_refuses_cpu_tensors_when_compiled(monkeypatch):
    monkeypatch.setattr(kt, "INTERPRET", False)
    tw, x = torch.ones(1, 1, 1, 2, 2), torch.ones(1, 1, 2)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kt.butterfly_triton(x, tw, True)


def test_kernel_input_errors():
    tw = torch.ones(1, 2, 2, 2, 2)
    with pytest.raises(TypeError, match="float16"):
        kt.butterfly_triton(torch.ones(1, 1, 4, dtype=torch.float16), tw.half(), True)
    with pytest.raises(TypeError, match="same dtype|one dtype"):
        kt.butterfly_triton(torch.ones(1, 1, 4, dtype=torch.float64), tw, True)
    with pytest.raises(ValueError, match=r"\(Tx, M, n\)"):
        kt.butterfly_triton(torch.ones(1, 1, 8), tw, True)
    with pytest.raises(ValueError, match="must agree or be 1"):
        kt.butterfly_triton(torch.ones(3, 1, 4), tw.expand(2, -1, -1, -1, -1), True)
    with pytest.raises(ValueError, match="power of two"):
        kt.butterfly_triton(torch.ones(1, 1, 4), tw, True, tile=12)


def test_import_kfit_does_not_import_triton():
    code = (
        "import sys, torch, kfit\n"
        "kfit.Butterfly.identity(64)(torch.ones(100, 64, dtype=torch.float64))\n"
        "assert 'triton' not in sys.modules, 'import kfit imported triton'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "KFIT_PRODUCT_PATH")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=120)


def test_bench_product_rows_with_the_kernel():
    """The CUDA table of ``kfit bench product`` (forced on the CPU through the interpreter):
    every column is filled, copy bandwidth and forward+backward rows included."""
    from kfit import _bench

    lines = []
    rows = _bench.bench_product(ns=(4,), batches=(2,), device="cpu", min_run_time=1e-3, out=lines.append, triton=True)
    fwd = [r for r in rows if not r.get("backward")]
    bwd = [r for r in rows if r.get("backward")]
    assert [r["kind"] for r in fwd] == ["real butterfly f32", "cplx butterfly c64", "complex DFT c64"]
    for r in fwd:
        assert all(r[k] > 0 for k in ("triton", "fused", "reference", "dense", "copy", "gbs", "pct_copy"))
    assert fwd[2]["fft"] > 0
    assert len(bwd) == 2 and all(r["triton"] > 0 and r["linear"] > 0 for r in bwd)
    assert any("%copy" in line for line in lines) and any("nn.Linear" in line for line in lines)


# -- compiled kernels on a real GPU --------------------------------------------------------
_CUDA_CHECK = r'''
import os, sys, time, torch
assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "must run compiled"
from kfit import Butterfly
from kfit._products import butterfly_reference
torch.manual_seed(0)
worst = 0.0
t0 = time.perf_counter()
for dtype in [getattr(torch, name) for name in sys.argv[1:]]:
    tol = 1e-4 if dtype in (torch.float32, torch.complex64) else 1e-11
    for n in (2, 16, 256, 1024, 4096, 16384):
        print(f"{time.perf_counter() - t0:6.1f} s: {dtype} n={n}", flush=True)  # compiling dominates: how far it got
        for increasing in (True, False):
            for T in (1, 3):
                B = Butterfly.random(n, batch=(T,) if T > 1 else (), dtype=dtype, increasing=increasing).to("cuda")
                tw = B.twiddle.detach().reshape(-1, *B.twiddle.shape[-4:]).requires_grad_(True)
                x = torch.randn(T, 37, n, dtype=dtype, device="cuda", requires_grad=True)
                y_ref = butterfly_reference(x, tw, increasing)
                g = torch.randn_like(y_ref)
                gx_ref, gt_ref = torch.autograd.grad(y_ref, (x, tw), g)
                from kfit._triton import butterfly_triton
                y = butterfly_triton(x, tw, increasing)
                gx, gt = torch.autograd.grad(y, (x, tw), g)
                for name, a, b in (("y", y, y_ref), ("grad x", gx, gx_ref), ("grad twiddle", gt, gt_ref)):
                    err = ((a - b).norm() / b.norm()).item()
                    worst = max(worst, err)
                    if not err <= tol:
                        print(f"FAIL {name} {dtype} n={n} increasing={increasing} T={T}: {err:.2e} > {tol:g}")
                        sys.exit(1)
print(f"ok, worst relative error {worst:.2e}")
'''


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the interpreter tests above run everywhere)")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_compiled_kernel_on_cuda_matches_the_reference(dtype):
    """The compiled kernels (not the interpreter) on a GPU, forward and backward, against
    the per-level torch reference, in a fresh process: this module imported kfit._triton
    in interpreter mode, which triton fixes at import.

    One dtype per test: compiling dominates (on an H100 host, float32 took 124 s for the
    24 sizes x orders; a complex64 backward kernel compiles in ~35 s), so they can be run
    one at a time (``-k "compiled and c64"``)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    name = str(dtype).replace("torch.", "")
    proc = subprocess.run([sys.executable, "-c", _CUDA_CHECK, name], env=env, capture_output=True, text=True,
                          timeout=3000)
    assert proc.returncode == 0, proc.stdout + proc.stderr
