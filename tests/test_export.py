"""Export formats (kfit, npz, mat, torch) and the KLinear layer.

Round trips: export, read back -- the npz with the numpy + scipy reader printed in
kfit._export's documentation (run verbatim), the mat with scipy.io.loadmat and a reader
written here, the torch file with KLinear.load -- and compare with the original product
K(x) and K.to_dense() to 1e-15 relative (float64 / complex128).
"""
from __future__ import annotations

import os
import pathlib
import sys
import types
import warnings

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import torch
from _reference import rel_err, to_numpy

import kfit
from kfit import Butterfly, Diagonal, KMatrix, Permutation, compose, known
from kfit import _export

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TOL = 1e-15
N = 16


# -- the K-matrices every round trip runs over ----------------------------------------------
def _cases():
    g = torch.Generator().manual_seed(7)
    kernel = torch.randn(N, dtype=torch.float64, generator=g)
    ckernel = torch.randn(N, dtype=torch.complex128, generator=g)
    dct = known.dct2(N)
    return {
        "dft": lambda: known.dft(N),
        "idft": lambda: known.idft(N),
        "hadamard": lambda: known.hadamard(N),
        "dct2 (real_output)": lambda: dct,
        "dst2 (real_output, P D B P D)": lambda: known.dst2(N),
        "circulant real (Re B D B*)": lambda: known.circulant(kernel),
        "circulant complex (B D B*)": lambda: known.circulant(ckernel),
        "toeplitz (expansion 2)": lambda: known.toeplitz(kernel),
        "random (BB*)^2_2": lambda: KMatrix.random(N // 2, width=2, expansion=2, seed=1),
        "random complex, expansion 2, real_output": lambda: KMatrix.random(
            N // 2, expansion=2, dtype=torch.complex128, real_output=True, seed=2
        ),
        "nested Re(A) on a complex vector": lambda: compose(dct, known.dft(N)),
        "nested, expansion inside": lambda: KMatrix(
            [Permutation.random(N, seed=3), KMatrix.random(N, expansion=2, seed=4),
             Diagonal(torch.randn(N, dtype=torch.float64, generator=g))]
        ),
        "nested corner of a nested real part": lambda: KMatrix(
            [KMatrix([known.dct2(2 * N), Butterfly.random(2 * N, dtype=torch.complex128, seed=5)], expansion=2),
             Permutation.random(N, seed=6)]
        ),
        "benes permutation (B B*)": lambda: known.permutation(np.random.default_rng(0).permutation(N)),
        "butterfly real decreasing": lambda: Butterfly.random(N, increasing=False, init="normal", seed=8),
        "butterfly complex": lambda: Butterfly.random(N, dtype=torch.complex128, seed=9),
        "permutation": lambda: Permutation.random(N, seed=10),
        "diagonal complex": lambda: Diagonal(torch.randn(N, dtype=torch.complex128, generator=g)),
    }


CASES = _cases()


@pytest.fixture(params=list(CASES), ids=list(CASES))
def op(request):
    return CASES[request.param]()


def _dense(op) -> np.ndarray:
    return to_numpy(op.to_dense())


def _probe(op, rng, complex_input):
    """Random columns X (n, 3) and the kfit reference K(X^T)^T."""
    X = rng.standard_normal((op.n, 3))
    if complex_input:
        X = X + 1j * rng.standard_normal((op.n, 3))
    ref = op(torch.from_numpy(np.ascontiguousarray(X.T)))
    return X, to_numpy(ref).T


def _npz_reader():
    """kfit_apply from the module documentation, executed verbatim (numpy + scipy only)."""
    code = _export._reader_snippet()
    assert "import kfit" not in code and "torch" not in code
    ns: dict = {}
    exec(compile(code, "kfit_npz_reader", "exec"), ns)
    return ns["kfit_apply"]


def _mat_apply(path, x):
    """An independent reader of the mat layout: scipy.io.loadmat + the program semantics."""
    f = scipy.io.loadmat(str(path))
    X = np.asarray(x).reshape(x.shape[0], -1)
    stack = []
    for step in str(f["program"][0]).splitlines():
        op, _, arg = step.partition(" ")
        if op == "mul":
            assert sp.issparse(f[arg])
            X = f[arg] @ X
        elif op == "perm":
            X = X[f[arg + "_perm"].ravel()]
        elif op == "pad":
            X = np.concatenate([X, np.zeros((int(arg) - X.shape[0], X.shape[1]), X.dtype)])
        elif op == "crop":
            X = X[: int(arg)]
        elif op == "re_push":
            stack.append(X.shape[1] if np.iscomplexobj(X) else None)
            if stack[-1] is not None:
                X = np.concatenate([X.real, X.imag], axis=1)
        elif op == "re_pop":
            m = stack.pop()
            X = X.real if m is None else X[:, :m].real + 1j * X[:, m:].real
        elif op == "bias":
            X = X + f["bias"].ravel()[:, None]
        else:
            raise AssertionError(step)
    return X


def _no_pickle(path):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert all(a.dtype.kind != "O" for a in arrays.values())
    return arrays


# -- round trips ------------------------------------------------------------------------------
def test_kfit_roundtrip(op, tmp_path, rng):
    for name in ("k.kfit", "k.safetensors"):
        p = kfit.export(op, tmp_path / name, metadata={"entry": "x"})
        back = kfit.load(p)
        assert rel_err(back.to_dense(), _dense(op)) <= TOL
        X, ref = _probe(op, rng, complex_input=True)
        assert rel_err(to_numpy(back(torch.from_numpy(np.ascontiguousarray(X.T)))).T, ref) <= TOL
        assert kfit.load_metadata(p) == {"entry": "x"}


def test_npz_roundtrip(op, tmp_path, rng):
    p = kfit.export(op, tmp_path / "k.npz")
    arrays = _no_pickle(p)
    assert str(arrays["format"]) == "kfit-sparse" and int(arrays["n"]) == op.n
    assert "Order of application" in str(arrays["readme"]) and str(arrays["formula"]) in str(arrays["readme"])
    kfit_apply = _npz_reader()
    D = _dense(op)
    got = kfit_apply(p, np.eye(op.n))
    assert got.dtype.kind == D.dtype.kind  # a real K (e.g. real_output) gives a real matrix
    assert rel_err(got, D) <= TOL
    for complex_input in (False, True):
        X, ref = _probe(op, rng, complex_input)
        assert rel_err(kfit_apply(p, X), ref) <= TOL
    assert rel_err(kfit_apply(p, X[:, 0]), ref[:, 0]) <= TOL  # a single vector (n,)
    S = kfit.export.read_sparse(p)
    assert rel_err(S.to_dense(), D) <= TOL and rel_err(S(X), ref) <= TOL
    assert all(sp.issparse(F) for F in S.factors) and len(S.factors) == len(S.names)
    if S.is_chain:  # the plain product of the listed factors
        P = S.factors[0].toarray()
        for F in S.factors[1:]:
            P = F @ P
        assert rel_err(P, D) <= TOL


def test_mat_roundtrip(op, tmp_path, rng):
    p = kfit.export(op, tmp_path / "k.mat")
    D = _dense(op)
    assert rel_err(_mat_apply(p, np.eye(op.n)), D) <= TOL
    X, ref = _probe(op, rng, complex_input=True)
    assert rel_err(_mat_apply(p, X), ref) <= TOL
    S = kfit.export.read_sparse(p)
    assert rel_err(S.to_dense(), D) <= TOL and S.n == op.n


def test_torch_roundtrip(op, tmp_path, rng):
    from kfit.nn import KLinear

    p = kfit.export(op, tmp_path / "layer.klinear")  # the suffix implies format="torch"
    assert p == kfit.export(op, tmp_path / "layer.klinear", format="torch")
    layer = KLinear.load(p)
    X, ref = _probe(op, rng, complex_input=False)
    with torch.no_grad():
        y = layer(torch.from_numpy(np.ascontiguousarray(X.T)))
    assert rel_err(to_numpy(y).T, ref) <= TOL
    assert rel_err(layer.to_kmatrix().to_dense(), _dense(op)) <= TOL
    assert rel_err(kfit.load(p).to_dense(), _dense(op)) <= TOL  # also a plain kfit file


def test_npz_program_layout(tmp_path):
    """The documented layout: CSR keys per factor, index arrays for permutations, the steps."""
    K = known.toeplitz(np.arange(1.0, 9.0))  # Re(corner8(B D B*)) of size 16
    arrays = _no_pickle(kfit.export(K, tmp_path / "t.npz"))
    program = str(arrays["program"]).splitlines()
    assert program[:2] == ["re_push", "pad 16"] and program[-2:] == ["crop 8", "re_pop"]
    assert str(arrays["formula"]).startswith("Re(corner8(")
    for step in program[2:-2]:
        op, name = step.split(" ")
        assert op == "mul"
        for key in ("data", "indices", "indptr", "shape"):
            assert f"{name}_{key}" in arrays
        assert tuple(arrays[f"{name}_shape"]) == (16, 16)
    dct = _no_pickle(kfit.export(known.dct2(8), tmp_path / "d.npz"))
    assert str(dct["program"]).splitlines()[:2] == ["re_push", "perm f00"]
    assert dct["f00_perm"].dtype == np.int64 and sorted(dct["f00_perm"]) == list(range(8))


def test_float32_npz_keeps_precision(tmp_path):
    K = known.dft(8, dtype=torch.complex64)
    arrays = _no_pickle(kfit.export(K, tmp_path / "f.npz"))
    assert arrays["f01_data"].dtype == np.complex64 and str(arrays["dtype"]) == "complex64"
    assert rel_err(_npz_reader()(tmp_path / "f.npz", np.eye(8)), K.to_dense()) < 1e-6


def test_mat_layout(tmp_path):
    p = kfit.export(known.dct2(8, dtype=torch.complex64), tmp_path / "d.mat")
    f = scipy.io.loadmat(str(p))
    assert sp.issparse(f["f01"]) and f["f01"].dtype == np.complex128  # MATLAB sparse: double
    assert f["f00_perm"].dtype == np.int64
    assert str(f["format"][0]) == "kfit-sparse" and "MATLAB" in str(f["readme"][0])


def test_text_entries_are_ascii(tmp_path):
    """readme, formula and program are plain ASCII (MATLAB char arrays, any terminal)."""
    K = compose(known.dct2(8), known.dft(8))  # Re(D B P) * (B P): a nested real part
    arrays = _no_pickle(kfit.export(K, tmp_path / "c.npz"))
    for key in ("readme", "formula", "program"):
        str(arrays[key]).encode("ascii")
    text = str(arrays["readme"])
    assert "kfit_apply" in text and "f00" in text
    assert str(arrays["formula"]) == "Re(f08 * f07 * f06 * f05 * P(f04)) * f03 * f02 * f01 * P(f00)"
    f = scipy.io.loadmat(str(kfit.export(K, tmp_path / "c.mat")))
    assert str(f["formula"][0]) == str(arrays["formula"]) and str(f["readme"][0]).count("\n") > 10


# -- bad input ---------------------------------------------------------------------------------
def test_unknown_format_lists_formats(tmp_path):
    K = known.dft(8)
    with pytest.raises(ValueError, match="'kfit', 'npz', 'mat', 'torch'"):
        kfit.export(K, tmp_path / "k.npz", format="onnx")
    with pytest.raises(ValueError, match="suffix '.pt'.*'torch'.*klinear"):
        kfit.export(K, tmp_path / "k.pt")
    with pytest.raises(TypeError, match="format must be a str"):
        kfit.export(K, tmp_path / "k.npz", format=3)
    assert kfit.export(K, tmp_path / "k.any", format="SafeTensors").is_file()  # alias, any case


@pytest.mark.parametrize("fmt", ["kfit", "npz", "mat", "torch"])
def test_unwritable_paths(tmp_path, fmt):
    K = known.dft(8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kfit.export(K, tmp_path / "missing" / "k.out", format=fmt)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        kfit.export(K, tmp_path / "file" / "k.out", format=fmt)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        kfit.export(K, tmp_path, format=fmt)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            kfit.export(known.dft(8), d / "k.npz")
    finally:
        d.chmod(0o700)


def test_wrong_object_type(tmp_path):
    for bad in (np.eye(8), torch.eye(8), "dft", torch.nn.Linear(8, 8)):
        with pytest.raises(TypeError, match="op must be a kfit.KMatrix"):
            kfit.export(bad, tmp_path / "k.npz")
    with pytest.raises(ValueError, match="batch shape .*op\\[0\\]"):
        kfit.export(KMatrix.random(8, batch=(2,)), tmp_path / "k.npz")
    with pytest.raises(TypeError, match="path must be"):
        kfit.export(known.dft(8), 3.5, format="npz")
    with pytest.raises(TypeError, match="JSON"):
        kfit.export(known.dft(8), tmp_path / "k.npz", metadata={"x": object()})


def test_read_sparse_rejects_other_files(tmp_path):
    kfit.save(known.dft(8), tmp_path / "k.kfit")
    with pytest.raises(ValueError, match="neither an npz"):
        kfit.export.read_sparse(tmp_path / "k.kfit")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="'format' is missing"):
        kfit.export.read_sparse(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        kfit.export.read_sparse(tmp_path / "none.npz")
    # an export with a factor missing (a file edited by hand) names the entry
    arrays = _no_pickle(kfit.export(known.dft(8), tmp_path / "k.npz"))
    del arrays["f02_indptr"]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(ValueError, match="'f02_indptr' named by the program is missing"):
        kfit.export.read_sparse(tmp_path / "cut.npz")


def _breakers(monkeypatch, exc):
    """Writers that put a few bytes into their file, then fail."""
    import safetensors.torch

    def boom_savez(file, *a, **k):
        file.write(b"PK partial")
        raise exc

    def boom_savemat(file, *a, **k):
        file.write(b"MATLAB 5.0 MAT-file partial")
        raise exc

    def boom_save_file(tensors, filename, *a, **k):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise exc

    monkeypatch.setattr(np, "savez", boom_savez)
    monkeypatch.setattr(scipy.io, "savemat", boom_savemat)
    monkeypatch.setattr(safetensors.torch, "save_file", boom_save_file)


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
@pytest.mark.parametrize("fmt", ["kfit", "npz", "mat", "torch"])
def test_crash_mid_write_leaves_old_file(tmp_path, monkeypatch, fmt, exc):
    target = tmp_path / f"k.{fmt}"
    target.write_bytes(b"the old file")
    with monkeypatch.context() as m:
        _breakers(m, exc)
        with pytest.raises(type(exc)):
            kfit.export(known.dft(8), target, format=fmt)
    assert target.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left
    fresh = tmp_path / f"new.{fmt}"
    with monkeypatch.context() as m:
        _breakers(m, exc)
        with pytest.raises(type(exc)):
            kfit.export(known.dft(8), fresh, format=fmt)
    assert not fresh.exists()


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        for name in ("k.npz", "k.mat", "k.kfit"):
            p = kfit.export(known.dft(8), tmp_path / name)
            assert p.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


# -- KLinear -----------------------------------------------------------------------------------
from kfit.nn import KLinear  # noqa: E402


@pytest.mark.parametrize("name", ["dft", "dct2 (real_output)", "toeplitz (expansion 2)", "nested Re(A) on a complex vector",
                                  "nested corner of a nested real part", "permutation", "butterfly real decreasing"])
def test_klinear_matches_kmatrix(name, rng):
    K = CASES[name]()
    layer = KLinear(K)
    x = torch.from_numpy(rng.standard_normal((2, 3, K.n)))
    with torch.no_grad():
        assert torch.equal(layer(x), K(x))  # the same product, bit for bit
    assert all(p.dtype == torch.float64 for p in layer.parameters())  # complex as real pairs
    assert sum(p.numel() for p in layer.parameters()) == KMatrix.wrap(K).n_params
    assert all(b.dtype == torch.int64 for b in layer.buffers())
    assert rel_err(layer.to_kmatrix().to_dense(), K.to_dense()) == 0.0


def test_klinear_is_a_copy_and_to_kmatrix_detaches():
    K = known.dft(8)
    layer = KLinear(K)
    before = K.to_dense().clone()
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(2)
    assert torch.equal(K.to_dense(), before)
    K2 = layer.to_kmatrix()
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    assert rel_err(K2.to_dense(), 2**3 * before) <= TOL  # three levels, each doubled
    live = layer.to_kmatrix(detach=False)
    assert all(b.twiddle.requires_grad for b in live.butterflies)


def test_klinear_dtypes():
    K = known.dct2(8)
    layer = KLinear(K, bias=True)
    x = torch.randn(4, 8, dtype=torch.float64)
    ref = K(x)
    layer.float()
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    y = layer(x.float())
    assert y.dtype == torch.float32 and rel_err(y, ref) < 1e-5
    assert layer.to_kmatrix().dtype == torch.float32 and layer.to_kmatrix().factors[0].dtype == torch.complex64
    with warnings.catch_warnings():  # torch may warn about complex modules; the layer stays real
        warnings.simplefilter("ignore")
        torch.nn.Sequential(layer).to(torch.complex128)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer.f2_perm.dtype == torch.int64
    assert rel_err(layer(x), ref) < 1e-6  # float64 again (after a float32 round trip)
    layer.half()
    with pytest.raises(TypeError, match="float32 or float64"):
        layer(x.half())
    layer.double()
    with pytest.raises(TypeError, match="precisions must agree"):
        layer(x.float())


def test_klinear_bad_input():
    with pytest.raises(TypeError, match="kmatrix must be a kfit.KMatrix"):
        KLinear(torch.eye(8))
    with pytest.raises(ValueError, match="batch shape"):
        KLinear(KMatrix.random(8, batch=(2,)))
    with pytest.raises(TypeError, match="bias must be True or False"):
        KLinear(known.dft(8), bias=torch.zeros(8))


def test_klinear_gradients_and_training():
    torch.manual_seed(0)
    n = 8
    teacher = torch.randn(n, n, dtype=torch.float64) / n**0.5
    model = torch.nn.Sequential(
        KLinear(KMatrix.random(n, width=2, seed=3), bias=True),
        torch.nn.Tanh(),
        torch.nn.Linear(n, n).double(),
    )
    x = torch.randn(64, n, dtype=torch.float64)
    target = torch.tanh(x @ teacher.T)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        assert all(p.grad is not None for p in model[0].parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_klinear_complex_real_output_training():
    """A perturbed DCT-II (complex twiddles, real output) trained back toward the DCT-II."""
    torch.manual_seed(1)
    n = 8
    M = known.dct2(n).to_dense()
    layer = KLinear(known.dct2(n))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(64, n, dtype=torch.float64)
    target = x @ M.T
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        y = layer(x)
        assert y.dtype == torch.float64  # real output
        loss = (y - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == torch.float64 for p in layer.parameters())


def test_klinear_save_load_and_state_dict(tmp_path):
    layer = KLinear(compose(known.dct2(8), known.dft(8)), bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(5, 8, dtype=torch.float64)
    p = layer.save(tmp_path / "l.klinear", metadata={"note": 1})
    back = KLinear.load(p)
    with torch.no_grad():
        assert torch.equal(back(x), layer(x))
    assert back.bias is not None and back.bias.shape == (8, 2)  # a complex K: complex bias as pairs
    assert kfit.load_metadata(p) == {"note": 1}
    # bias also in the npz and mat exports; the kfit format refuses it
    for name in ("l.npz", "l.mat"):
        S = kfit.export.read_sparse(kfit.export(layer, tmp_path / name))
        with torch.no_grad():
            assert rel_err(S(x.numpy().T), layer(x).numpy().T) <= TOL
    with pytest.raises(ValueError, match="stores the linear map only"):
        kfit.export(layer, tmp_path / "l.kfit")
    # a plain kfit file loads as a layer without bias
    kfit.save(known.dft(8), tmp_path / "plain.kfit")
    assert KLinear.load(tmp_path / "plain.kfit").bias is None
    other = KLinear(compose(known.dct2(8), known.dft(8)), bias=True)
    other.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(other(x), layer(x))


def test_klinear_from_catalog(monkeypatch):
    calls = []

    def fake_load(name, root=None, **kw):
        calls.append((name, root))
        return known.dct2(8)

    try:
        import kfit.catalog as catalog

        monkeypatch.setattr(catalog, "load", fake_load)
    except ImportError:
        monkeypatch.setitem(sys.modules, "kfit.catalog", types.SimpleNamespace(load=fake_load))
    layer = KLinear.from_catalog("dct2-8", root=pathlib.Path("/somewhere"), bias=True)
    assert calls == [("dct2-8", pathlib.Path("/somewhere"))]
    assert layer.bias is not None
    x = torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(layer(x), known.dct2(8)(x))


def test_import_kfit_does_not_import_nn():
    """kfit/__init__.py re-exports export but leaves kfit.nn to an explicit import."""
    import ast

    import kfit as pkg

    tree = ast.parse(pathlib.Path(pkg.__file__).read_text())
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "nn" not in imported and "export" in imported and "export" in pkg.__all__
    assert callable(pkg.export) and callable(pkg.export.read_sparse)
