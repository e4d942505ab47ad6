"""Tests for the ``kfit fit`` command (run in-process through ``kfit._cli.main``)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import torch

import kfit
from kfit._cli import main
from _fixtures import perturbed


def _run(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _permuted_hadamard(n, seed):
    rng = np.random.default_rng(seed)
    H = kfit.targets.get("hadamard", n).numpy()
    return H[rng.permutation(n)][:, rng.permutation(n)]


# --------------------------------------------------------------------------------------
# human-readable output


def test_fit_dft_prints_summary(capsys):
    rc, out, err = _run(capsys, ["fit", "dft", "-n", "64"])
    assert rc == 0, err
    assert err == ""
    assert "dft" in out and "64" in out
    # structure: a complex butterfly, possibly with permutations
    m = re.search(r"^structure\s+(\S.*?)\s+\(n = 64\)$", out, re.M)
    assert m, out
    assert "Bℂ" in m.group(1)
    # status and error
    assert re.search(r"^status\s+exact", out, re.M), out
    m = re.search(r"^error\s+([0-9.eE+-]+)", out, re.M)
    assert m and float(m.group(1)) <= 1e-12, out
    # parameters, FLOPs (with the dense and FFT baselines) and time
    assert re.search(r"parameters [\d,]+ \(dense 8,192", out), out
    assert re.search(r"FLOPs [\d,]+ \(dense 32,768", out), out
    assert "FFT" in out
    m = re.search(r"^time\s+([0-9.]+) s$", out, re.M)
    assert m and float(m.group(1)) >= 0, out
    assert "butterfly" in out  # the factors line


def test_fit_dft_numbers_match_identify(capsys):
    import solvers

    rc, out, _ = _run(capsys, ["fit", "dft", "-n", "32"])
    assert rc == 0
    K = solvers.identify(kfit.targets.get("dft", 32)).kmatrix
    assert f"parameters {K.n_params:,} " in out
    assert f"FLOPs {K.flops:,} " in out
    assert K.structure() in out


# --------------------------------------------------------------------------------------
# --json


def test_fit_json_is_one_object(capsys):
    rc, out, err = _run(capsys, ["fit", "dft", "-n", "64", "--json"])
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    d = json.loads(out)
    assert isinstance(d, dict)
    for key in ("status", "error", "n_params", "flops", "seconds", "structure"):
        assert key in d, (key, sorted(d))
    assert d["status"] == "exact"
    assert isinstance(d["error"], float) and 0 <= d["error"] <= 1e-12
    assert isinstance(d["n_params"], int) and d["n_params"] > 0
    assert isinstance(d["flops"], int) and 0 < d["flops"] < 8 * 64 * 64
    assert isinstance(d["seconds"], float) and d["seconds"] >= 0
    assert "Bℂ" in d["structure"]
    assert d["target"] == "dft"
    assert "info" not in d  # solver details only with --verbose


def test_fit_json_verbose_has_info(capsys):
    rc, out, _ = _run(capsys, ["fit", "hadamard", "-n", "16", "--json", "--verbose"])
    assert rc == 0
    d = json.loads(out)
    assert d["status"] == "exact"
    assert "info" in d and "residual_per_level" in d["info"]


def test_fit_json_not_in_class(capsys):
    rc, out, _ = _run(capsys, ["fit", "randn", "-n", "32", "--seed", "3", "--json", "--solver", "identify"])
    assert rc == 1
    d = json.loads(out)
    assert d["status"] == "not_in_class"


# --------------------------------------------------------------------------------------
# --save


def test_fit_save_roundtrip(capsys, tmp_path):
    npy = tmp_path / "h.npy"
    M = _permuted_hadamard(64, 0)
    np.save(npy, M)
    path = tmp_path / "h.kfit"
    rc, out, err = _run(capsys, ["fit", str(npy), "--save", str(path)])
    assert rc == 0, err
    assert path.is_file()
    assert str(path) in out
    structure = re.search(r"^structure\s+(\S.*?)\s+\(n = 64\)$", out, re.M).group(1)
    K = kfit.load(path)
    assert isinstance(K, kfit.KMatrix)
    assert K.structure() == structure == "P · B · P"
    D = K.to_dense().numpy()
    assert np.linalg.norm(D - M) <= 1e-13 * np.linalg.norm(M)
    meta = kfit.load_metadata(path)
    assert meta["status"] == "exact" and meta["n"] == 64
    assert meta["structure"] == structure


def test_fit_save_json_reports_path(capsys, tmp_path):
    path = tmp_path / "w.kfit"
    rc, out, _ = _run(capsys, ["fit", "hadamard", "-n", "32", "--json", "--save", str(path)])
    assert rc == 0
    d = json.loads(out)
    assert d["saved_to"] == str(path)
    K = kfit.load(path)
    assert K.structure() == d["structure"]
    H = kfit.targets.get("hadamard", 32)
    assert torch.allclose(K.to_dense(), H, rtol=0, atol=1e-14)


def test_fit_save_to_missing_directory(capsys, tmp_path):
    rc, out, err = _run(capsys, ["fit", "hadamard", "-n", "16", "--save", str(tmp_path / "nodir" / "x.kfit")])
    assert rc == 2
    assert "Traceback" not in err and "nodir" in err


# --------------------------------------------------------------------------------------
# file input


def test_fit_npy_permuted_hadamard(capsys, tmp_path):
    npy = tmp_path / "m.npy"
    np.save(npy, _permuted_hadamard(32, 5))
    rc, out, err = _run(capsys, ["fit", str(npy)])
    assert rc == 0, err
    assert re.search(r"^status\s+exact", out, re.M)
    assert "n = 32" in out
    assert "row permutation" in out and "column permutation" in out


def test_fit_npy_json(capsys, tmp_path):
    npy = tmp_path / "m.npy"
    np.save(npy, _permuted_hadamard(16, 6).astype(np.float32))
    rc, out, _ = _run(capsys, ["fit", str(npy), "--json"])
    assert rc == 0
    d = json.loads(out)
    assert d["status"] == "exact" and d["dtype"] == "float32" and d["error"] <= 1e-5
    assert d["target"] == str(npy)


def test_fit_missing_npy(capsys, tmp_path):
    rc, out, err = _run(capsys, ["fit", str(tmp_path / "nope.npy")])
    assert rc == 2
    assert "nope.npy" in err and "Traceback" not in err


def test_fit_npy_non_square(capsys, tmp_path):
    npy = tmp_path / "rect.npy"
    np.save(npy, np.ones((4, 8)))
    rc, out, err = _run(capsys, ["fit", str(npy)])
    assert rc == 2
    assert "square" in err and "Traceback" not in err


def test_fit_npy_not_power_of_two(capsys, tmp_path):
    npy = tmp_path / "m12.npy"
    np.save(npy, np.eye(12))
    rc, out, err = _run(capsys, ["fit", str(npy)])
    assert rc == 2
    assert "16" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------
# failures and errors


def test_fit_dct2_not_in_class(capsys):
    # The identification solver alone (auto would go on to gradient fits).
    rc, out, err = _run(capsys, ["fit", "dct2", "-n", "64", "--solver", "identify"])
    assert rc == 1
    assert "not_in_class" in out
    assert re.search(r"level \d+", out)
    assert "Traceback" not in err


def test_fit_unknown_target(capsys):
    rc, out, err = _run(capsys, ["fit", "no_such_target", "-n", "64"])
    assert rc == 2
    assert out == ""
    assert "no_such_target" in err
    assert "error" in err
    assert "Traceback" not in err


def test_fit_registry_name_without_n(capsys):
    """The hint must name the command's option (-n), not a Python call."""
    rc, out, err = _run(capsys, ["fit", "dft"])
    assert rc == 2
    assert err.strip() and "Traceback" not in err
    assert re.search(r"(^|\s)-n\b", err), f"the error should tell the user to pass -n: {err!r}"


def test_fit_bad_n(capsys):
    rc, out, err = _run(capsys, ["fit", "dft", "-n", "12"])
    assert rc == 2
    assert "Traceback" not in err and err.strip()


def test_fit_tol_option(capsys):
    rc, out, _ = _run(capsys, ["fit", "hadamard", "-n", "16", "--tol", "1e-3", "--json"])
    assert rc == 0
    assert json.loads(out)["tol"] == 1e-3


def test_fit_seed_changes_random_target(capsys):
    rc1, out1, _ = _run(capsys, ["fit", "randn", "-n", "16", "--seed", "1", "--json", "--solver", "identify"])
    rc2, out2, _ = _run(capsys, ["fit", "randn", "-n", "16", "--seed", "2", "--json", "--solver", "identify"])
    assert rc1 == rc2 == 1
    assert json.loads(out1)["error"] != json.loads(out2)["error"]


# --------------------------------------------------------------------------------------
# the installed console script


def test_console_script_entry_point():
    exe = shutil.which("kfit")
    assert exe is not None, "the `kfit` console script is not installed (pip install -e .)"
    proc = subprocess.run(["kfit", "fit", "hadamard", "-n", "16", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["status"] == "exact"
    assert d["error"] <= 1e-12
    assert "B" in d["structure"]


def test_console_script_error_exit_code():
    proc = subprocess.run(
        [sys.executable, "-m", "kfit._cli", "fit", "no_such_target", "-n", "8"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no_such_target" in proc.stderr


# --------------------------------------------------------------------------------------
# --resume


def test_fit_resume_finishes_a_saved_factorization(capsys, tmp_path):
    start = perturbed(kfit.known.dft(16), 1e-3)
    F = np.fft.fft(np.eye(16), axis=0, norm="ortho")  # the registry's dft is unitary
    assert np.linalg.norm(start.to_dense().numpy() - F) > 1e-4 * np.linalg.norm(F)
    begin, done = tmp_path / "start.kfit", tmp_path / "done.kfit"
    kfit.save(start, begin)
    rc, out, err = _run(capsys, ["fit", "dft", "-n", "16", "--resume", str(begin), "--json", "--save", str(done)])
    assert rc == 0, err
    d = json.loads(out)
    assert d["status"] == "converged" and d["error"] <= 1e-12
    R = kfit.load(done)
    assert R.structure() == start.structure()  # the structure and permutation are kept
    assert np.linalg.norm(R.to_dense().numpy() - F) <= 1e-12 * np.linalg.norm(F)


def test_fit_resume_bad_input(capsys, tmp_path):
    path = tmp_path / "d.kfit"
    kfit.save(kfit.known.dft(16), path)
    rc, _, err = _run(capsys, ["fit", "dft", "-n", "32", "--resume", str(path)])
    assert rc == 2 and "Traceback" not in err
    assert "K is 16 x 16 but M is 32 x 32" in err
    rc, _, err = _run(capsys, ["fit", "dft", "-n", "16", "--resume", str(path), "--solver", "identify"])
    assert rc == 2 and "--resume continues a gradient fit" in err
    rc, _, err = _run(capsys, ["fit", "dft", "-n", "16", "--resume", str(tmp_path / "missing.kfit")])
    assert rc == 2 and "missing.kfit" in err
    # the structure comes from the file: options that would change it are refused, not ignored
    for extra, flag in ((["--chain", "B"], "--chain"), (["--complex"], "--complex"), (["--real-output"], "--real-output"),
                        (["--expansion", "2"], "--expansion"), (["--restarts", "4"], "--restarts")):
        rc, _, err = _run(capsys, ["fit", "dft", "-n", "16", "--resume", str(path), *extra])
        assert rc == 2 and "Traceback" not in err, err
        assert f"so {flag} would be ignored" in err
