"""The catalog: recording, loading, verifying, the index, broken files, atomic and concurrent writes."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import kfit
import solvers
from kfit import catalog, targets
from kfit._cli import main as cli

REPO_CATALOG = pathlib.Path(__file__).resolve().parents[1] / "catalog"


def _record(root, target="dft", n=16, **kw):
    res = solvers.fit(targets.get(target, n), progress=False)
    assert res.success, res.message
    return catalog.record(res, target, n, {}, root=root, settings={"seed": 0}, measure_speed=kw.pop("measure_speed", False), **kw)


@pytest.fixture
def cat(tmp_path):
    root = tmp_path / "cat"
    names = [_record(root, "dft", 16), _record(root, "hadamard", 8), _record(root, "permutation", 8)]
    return root, names


def test_record_writes_manifest_tensor_and_index(cat):
    root, names = cat
    assert catalog.names(root) == sorted(names, key=catalog._sort_key)
    m = catalog.manifest("dft-16-bc-p", root)
    assert m["target"] == {"name": "dft", "params": {}, "is_complex": True}
    assert m["n"] == 16 and m["structure"]["formula"] == "Bℂ · P"
    # The permutation is stored as an index array: the bit reversal, checked independently.
    perm = [f for f in m["structure"]["chain"] if f["type"] == "Permutation"][0]["perm"]
    assert perm == [int(format(i, "04b")[::-1], 2) for i in range(16)]
    for key in ("error", "costs", "solver", "versions", "device", "tensor_file", "created"):
        assert key in m
    # The recorded error is re-measured, not copied: recompute it here from the dense matrices.
    K = catalog.load("dft-16-bc-p", root)
    M = targets.get("dft", 16).numpy()  # itself checked against numpy.fft in test_targets
    ref = np.linalg.norm(K.to_dense().numpy() - M) / np.linalg.norm(M)
    assert m["error"]["value"] == pytest.approx(ref, rel=1e-6, abs=1e-17) and ref < 1e-15
    assert m["costs"]["n_params"] == K.n_params and m["costs"]["dense_flops"] == 8 * 16 * 16
    index = json.loads((root / "index.json").read_text())
    assert [r["entry"] for r in index["entries"]] == catalog.names(root)
    md = (root / "INDEX.md").read_text()
    assert all(f"| {nm} |" in md for nm in names)


def test_verify_passes_on_good_entries(cat):
    root, names = cat
    checks = catalog.verify(root)
    assert [c.name for c in checks] == catalog.names(root) and all(c.ok for c in checks), [c.line() for c in checks]


def test_unknown_entry_lists_close_matches(cat):
    root, _ = cat
    with pytest.raises(ValueError, match=r"close matches: dft-16-bc-p"):
        catalog.load("dft-16-bcp", root)
    with pytest.raises(ValueError, match="empty"):
        catalog.load("dft-16-bc-p", root.parent / "nothing-here")


def test_missing_tensor_file(cat):
    root, _ = cat
    catalog.tensor_path("dft-16-bc-p", root).unlink()
    with pytest.raises(ValueError, match=r"tensor file .*dft-16-bc-p\..*missing"):
        catalog.load("dft-16-bc-p", root)
    bad = [c for c in catalog.verify(root) if not c.ok]
    assert [c.name for c in bad] == ["dft-16-bc-p"] and "missing" in bad[0].problem


def test_truncated_tensor_file(cat):
    root, _ = cat
    p = catalog.tensor_path("hadamard-8-p-b-p", root)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"hadamard-8-p-b-p\..*sha256"):
        catalog.load("hadamard-8-p-b-p", root)


def test_altered_tensor_with_matching_hash_is_caught_by_the_error_check(cat):
    """Someone replaces the factors and updates the hash: the sha256 holds, the error does not."""
    root, _ = cat
    name = "dft-16-bc-p"
    K = catalog.load(name, root)
    bf = K.butterflies[0]
    with torch.no_grad():
        bf.twiddle[0, 0, 0, 0] += 1e-3
    p = catalog.tensor_path(name, root)
    kfit.save(K, p)
    mpath = root / "entries" / f"{name}.json"
    m = json.loads(mpath.read_text())
    m["tensor_file"]["sha256"] = catalog._sha256(p)
    mpath.write_text(json.dumps(m))
    (check,) = catalog.verify(root, [name])
    assert not check.ok and "against a fresh target" in check.problem


def test_manifest_not_json(cat):
    root, _ = cat
    (root / "entries" / "hadamard-8-p-b-p.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"hadamard-8-p-b-p.json is not valid JSON"):
        catalog.manifest("hadamard-8-p-b-p", root)
    assert not {c.name: c for c in catalog.verify(root)}["hadamard-8-p-b-p"].ok


def test_tensor_file_is_never_unpickled(cat, tmp_path):
    """A pickle in place of the tensor file (hash updated to match) is refused, not executed."""
    import pickle

    root, _ = cat
    name = "permutation-8-b-bs"
    p = catalog.tensor_path(name, root)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p.write_bytes(pickle.dumps(Evil()))
    mpath = root / "entries" / f"{name}.json"
    m = json.loads(mpath.read_text())
    m["tensor_file"]["sha256"] = catalog._sha256(p)
    mpath.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="not a readable kfit"):
        catalog.load(name, root)
    assert not marker.exists()


def test_interrupted_record_keeps_the_old_entry(cat, monkeypatch):
    root, _ = cat
    name = "dft-16-bc-p"
    before = (root / "entries" / f"{name}.json").read_text()
    files_before = sorted(os.listdir(root / "entries"))
    res = solvers.identify(targets.get("dft", 16))
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt  # Ctrl-C just before the manifest lands
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        catalog.record(res, "dft", 16, {}, root=root, measure_speed=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (root / "entries" / f"{name}.json").read_text() == before
    assert all(c.ok for c in catalog.verify(root))
    leftovers = [f for f in os.listdir(root / "entries") if f.startswith(".")]
    assert leftovers == []
    # At most one orphan tensor file (unreferenced, harmless); the manifest still points at its own.
    assert len(set(os.listdir(root / "entries")) - set(files_before)) <= 1


_WORKER = """
import sys, solvers
from kfit import catalog, targets
root, target = sys.argv[1], sys.argv[2]
for n in (8, 16, 32):
    r = solvers.identify(targets.get(target, n))
    catalog.record(r, target, n, {}, root=root, measure_speed=False)
"""


def test_two_writers_at_once(tmp_path):
    root = tmp_path / "cat"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(root), t]) for t in ("dft", "idft")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    names = catalog.names(root)
    assert len(names) == 6
    index = json.loads((root / "index.json").read_text())
    assert sorted(r["entry"] for r in index["entries"]) == sorted(names)
    assert all(c.ok for c in catalog.verify(root))


def test_build_skips_valid_entries_and_stops_a_target_after_failure(tmp_path, capsys):
    root = tmp_path / "cat"
    counts = catalog.build(["hadamard"], (8, 16), root=root, progress=False)
    assert counts["recorded"] == 2
    counts = catalog.build(["hadamard"], (8, 16), root=root, progress=False)
    assert counts == {"recorded": 0, "skipped_valid": 2, "not_recovered": 0, "skipped_after_failure": 0}
    # randn has no fast algorithm: not recovered at n=8 within a tiny budget, n=16 then skipped.
    counts = catalog.build(["randn"], (8, 16), root=root, progress=False, time_budget=2.0, restarts=2)
    assert counts["not_recovered"] == 1 and counts["skipped_after_failure"] == 1
    assert "Attempted, not recovered" in (root / "INDEX.md").read_text()
    assert not any(nm.startswith("randn") for nm in catalog.names(root))


def test_cli_catalog_commands(cat, capsys):
    root, _ = cat
    assert cli(["catalog", "list", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "dft-16-bc-p" in out and "hadamard-8-p-b-p" in out
    assert cli(["catalog", "show", "dft-16-bc-p", "--root", str(root)]) == 0
    assert "relative Frobenius" in capsys.readouterr().out
    assert cli(["catalog", "show", "dft-16", "--root", str(root)]) == 2
    assert "close matches" in capsys.readouterr().err
    assert cli(["catalog", "verify", "--root", str(root)]) == 0
    catalog.tensor_path("dft-16-bc-p", root).unlink()
    assert cli(["catalog", "verify", "--root", str(root)]) == 1
    assert "FAIL  dft-16-bc-p" in capsys.readouterr().out


# -- the committed catalog ---------------------------------------------------------------
def test_committed_catalog_verifies():
    checks = catalog.verify(REPO_CATALOG)
    assert checks, "the committed catalog is empty"
    bad = [c.line() for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


def test_committed_catalog_coverage_and_size():
    rows = catalog.rows(REPO_CATALOG)
    have = {(r["target"], r["n"]) for r in rows}
    # Exact identification (of P·B·P and of Re(P·B·P)) and permutation routing recover
    # these at every size.
    for t in ("dft", "idft", "hadamard", "permutation", "dct2", "dst2", "dct4", "hartley"):
        for n in (8, 16, 32, 64, 128, 256, 512, 1024):
            assert (t, n) in have, f"{t} n={n} missing from the committed catalog"
    for t in ("dct2", "dst2", "dct4", "hartley", "circulant", "toeplitz"):
        assert (t, 8) in have, f"{t} n=8 missing from the committed catalog"
    assert all(not r["reference"] for r in rows if r["solver"] != "reference")
    total = sum(f.stat().st_size for f in REPO_CATALOG.rglob("*") if f.is_file())
    assert total < 30 * 2**20, f"the catalog is {total / 2**20:.1f} MB, over the 30 MB limit"
    index = json.loads((REPO_CATALOG / "index.json").read_text())
    assert index["entries"] == rows, "catalog/index.json is stale: run `kfit catalog build` (it rewrites the index)"


def test_cli_export_and_plot_an_entry(cat, tmp_path, capsys):
    from kfit._export import read_sparse

    root, _ = cat
    out = tmp_path / "dft.npz"
    assert cli(["export", "dft-16-bc-p", "--format", "npz", "-o", str(out), "--root", str(root)]) == 0
    S = read_sparse(out)  # numpy + scipy only
    M = np.fft.fft(np.eye(16), norm="ortho")
    assert np.linalg.norm(S.to_dense() - M) / np.linalg.norm(M) < 1e-15
    assert cli(["export", "dft-16-bc", "-o", str(out), "--root", str(root)]) == 2
    assert "close matches" in capsys.readouterr().err
    assert cli(["export", "dft-16-bc-p", "-o", str(tmp_path / "dft.xyz"), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "--format" in err and ".xyz" in err and not (tmp_path / "dft.xyz").exists()
    png = tmp_path / "entry.png"
    assert cli(["plot", "dft-16-bc-p", "-o", str(png), "--root", str(root)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = tmp_path / "catalog.png"
    assert cli(["plot", "catalog", "-o", str(png), "--root", str(root)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli(["plot", "catalog", "-o", str(png), "--root", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err


def test_forced_build_replaces_an_entry_whose_structure_changed(tmp_path):
    # An entry for hadamard n=8 recorded with a larger structure (B · B*, the B* being the
    # identity); a forced build finds the smaller B and must leave one entry, not two.
    root = tmp_path / "cat"
    res = solvers.fit(targets.get("hadamard", 8), progress=False)
    B = res.kmatrix.butterflies[0]
    res.kmatrix = kfit.KMatrix([B, kfit.Butterfly.identity(8, increasing=False)])
    old = catalog.record(res, "hadamard", 8, {}, root=root, measure_speed=False)
    assert catalog.names(root) == [old]
    counts = catalog.build(["hadamard"], (8,), root=root, progress=False, force=True)
    assert counts["recorded"] == 1
    (new,) = catalog.names(root)
    assert new != old and new.startswith("hadamard-8-")
    index = json.loads((root / "index.json").read_text())
    assert [r["entry"] for r in index["entries"]] == [new]
    # no orphaned tensor file of the old entry
    assert sorted(p.name for p in (root / "entries").iterdir()) == sorted(
        [f"{new}.json", json.loads((root / "entries" / f"{new}.json").read_text())["tensor_file"]["name"]]
    )
    assert all(c.ok for c in catalog.verify(root))
