"""kfit.plot: the figures have the panels they promise, saving is atomic, bad input is refused,
and ``import kfit`` does not import matplotlib."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import kfit  # noqa: E402
from kfit import known  # noqa: E402
from kfit import plot as kplot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def axes_by_gid(fig, prefix):
    return [a for a in fig.axes if (a.get_gid() or "").startswith(prefix)]


def n_images(axes):
    return sum(len(a.images) for a in axes)


def a_trace():
    adam = [(i, 0.01 * i, 10 ** (-i / 10), "adam") for i in range(30)]
    lm = [(30 + i, 0.3 + 0.05 * i, 10 ** (-3 - i), "lm") for i in range(11)]
    return adam + lm


def catalog_rows():
    rows = []
    for target, cplx in (("dft", True), ("hadamard", False), ("dct2", False)):
        for m in (3, 4, 5):
            n = 2**m
            rows.append(
                dict(entry=f"{target}-{n}", target=target, n=n, structure="B · P", dtype="complex128" if cplx else "float64",
                     error=1e-15 * m, n_params=2 * n * m, flops=3 * n * m, dense_params=n * n, dense_flops=2 * n * n,
                     fft_flops=5 * n * m if target == "dft" else None, complex=cplx, reference=False)
            )
    rows.append(dict(rows[0], entry="dft-8-reference", reference=True, error=0.0))
    return rows


# -- plot_factors ---------------------------------------------------------------------------
def test_dft16_twiddle_images_and_bit_reversal_panel():
    fig = kplot.plot_factors(known.dft(16))
    L = 4
    mag = axes_by_gid(fig, "butterfly0/level")
    assert sorted(a.get_gid() for a in mag) == sorted(
        [f"butterfly0/level{lv}/{m}" for lv in range(L) for m in ("magnitude", "phase")]
    )
    assert n_images(mag) == 2 * L
    # Each image is the level's n/2 2x2 blocks: 2R x 2C with R*C = n/2.
    img = mag[0].images[0].get_array()
    assert img.shape[0] * img.shape[1] == 4 * 8
    # The DFT's twiddles all have magnitude 1/sqrt(2).
    m0 = [a for a in mag if a.get_gid() == "butterfly0/level0/magnitude"][0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(m0), 1 / math.sqrt(2))
    (perm,) = axes_by_gid(fig, "permutation1")[:1]
    assert perm.get_gid() == "permutation1"
    assert "bit-reversal" in perm.get_title()
    assert len(perm.images) == 1
    assert not axes_by_gid(fig, "trace")
    assert "n = 16" in fig._suptitle.get_text()


def test_real_butterfly_has_one_signed_image_per_level():
    fig = kplot.plot_factors(known.hadamard(8), title="Hadamard")
    axes = axes_by_gid(fig, "butterfly0/level")
    assert sorted(a.get_gid() for a in axes) == [f"butterfly0/level{lv}/value" for lv in range(3)]
    arr = np.asarray(axes[0].images[0].get_array())
    assert arr.min() < 0 < arr.max()  # signed values, not magnitudes
    assert fig._suptitle.get_text() == "Hadamard"


def test_dct2_diagonal_butterfly_and_named_permutation():
    fig = kplot.plot_factors(known.dct2(8))
    assert {a.get_gid() for a in axes_by_gid(fig, "diagonal")} == {"diagonal0/magnitude", "diagonal0/phase"}
    assert n_images(axes_by_gid(fig, "butterfly1/level")) == 6  # gids name the chain position
    (perm,) = axes_by_gid(fig, "permutation2")[:1]
    assert perm.get_title() == "P: bit-reversal · Makhoul reorder"
    assert fig._suptitle.get_text().startswith("Re(")


def test_chain_of_butterflies_gets_one_row_each():
    fig = kplot.plot_factors(known.permutation([3, 1, 0, 2, 7, 5, 6, 4]))
    for k in (0, 1):
        assert n_images(axes_by_gid(fig, f"butterfly{k}/level")) == 3
    assert not axes_by_gid(fig, "permutation")
    B = kfit.Butterfly.random(8, seed=1)
    fig = kplot.plot_factors(kfit.KMatrix([B, B, B]))  # one object used three times
    gids = [a.get_gid() for a in axes_by_gid(fig, "butterfly")]
    assert len(gids) == len(set(gids)) and n_images(axes_by_gid(fig, "butterfly2/level")) == 3


def test_nested_kmatrix_and_large_permutation():
    inner = known.dct2(8)
    fig = kplot.plot_factors(kfit.KMatrix([inner, known.hadamard(8)]))
    assert axes_by_gid(fig, "diagonal0.0/")  # nested path in the gid
    assert n_images(axes_by_gid(fig, "butterfly1.0/level")) == 3
    # n > 64: the permutation is drawn as points, not a dense image.
    fig = kplot.plot_factors(kfit.Permutation.bit_reversal(128))
    (perm,) = axes_by_gid(fig, "permutation0")[:1]
    assert not perm.images and perm.collections
    assert "bit-reversal" in perm.get_title()


def test_op_without_butterflies_and_single_factors():
    fig = kplot.plot_factors(kfit.Permutation.random(8, seed=3))
    assert not axes_by_gid(fig, "butterfly")
    assert axes_by_gid(fig, "permutation0")
    fig = kplot.plot_factors(kfit.Diagonal(torch.linspace(-1, 1, 8, dtype=torch.float64)))
    assert [a.get_gid() for a in axes_by_gid(fig, "diagonal")] == ["diagonal0/value"]
    fig = kplot.plot_factors(kfit.Butterfly.random(4, seed=0))
    assert n_images(axes_by_gid(fig, "butterfly0/level")) == 2


def test_factors_with_trace_and_solver_result():
    fig = kplot.plot_factors(known.dft(8), trace=a_trace())
    assert {a.get_gid() for a in axes_by_gid(fig, "trace")} == {"trace/step", "trace/seconds"}
    from solvers._result import Result

    r = Result(kmatrix=known.dft(8), error=1e-15, error_method="dense float64", status="converged", solver="gradient",
               seconds=1.0, dtype="complex128", tol=1e-12, message="ok", trace=a_trace())
    fig = kplot.plot_factors(r)  # the result's trace is used
    assert len(axes_by_gid(fig, "trace")) == 2
    none = Result(kmatrix=None, error=1.0, error_method="", status="stalled", solver="gradient", seconds=0.0,
                  dtype="float64", tol=1e-12, message="")
    with pytest.raises(ValueError, match="no factorization"):
        kplot.plot_factors(none)


def test_plot_factors_bad_input():
    with pytest.raises(TypeError, match="KMatrix, Butterfly"):
        kplot.plot_factors(np.eye(4))
    batched = kfit.KMatrix.random(8, batch=(2,), seed=0)
    with pytest.raises(ValueError, match=r"batched.*op\[0\]"):
        kplot.plot_factors(batched)
    kplot.plot_factors(batched[0])  # one member is fine
    with pytest.raises(ValueError, match="trace"):
        kplot.plot_factors(known.dft(4), trace=[(0, 0.0)])


def test_twiddle_image_layout():
    t = np.arange(8 * 4).reshape(8, 2, 2)  # n = 16: 8 pairs -> R=2, C=4
    img = kplot.twiddle_image(t)
    R, C = 2, 4
    assert img.shape == (2 * R, 2 * C)
    for p in range(8):
        r, c = divmod(p, C)
        for a in (0, 1):
            for b in (0, 1):
                assert img[a * R + r, b * C + c] == t[p, a, b]
    assert kplot.twiddle_image(np.ones((1, 2, 2))).shape == (2, 2)  # n = 2


def test_describe_permutation():
    assert kplot.describe_permutation(kfit.Permutation.bit_reversal(32)) == "bit-reversal"
    assert kplot.describe_permutation(np.arange(8)) == "identity"
    assert kplot.describe_permutation(np.arange(8)[::-1]) == "reversal"
    assert kplot.describe_permutation(kfit.Permutation.random(64, seed=0).perm) is None
    # A product of two named permutations, in matrix order (these two do not commute).
    # (P_a @ P_b) has index vector b[a].
    rev = np.arange(16)[::-1].copy()
    makhoul = np.concatenate([np.arange(0, 16, 2), np.arange(15, 0, -2)])  # evens up, odds down
    assert not np.array_equal(makhoul[rev], rev[makhoul])
    assert kplot.describe_permutation(makhoul) == "Makhoul reorder"
    assert kplot.describe_permutation(makhoul[rev]) == "reversal · Makhoul reorder"
    assert kplot.describe_permutation(rev[makhoul]) == "Makhoul reorder · reversal"


# -- plot_trace -----------------------------------------------------------------------------
def test_plot_trace_panels_and_phases():
    fig = kplot.plot_trace(a_trace())
    step, sec = axes_by_gid(fig, "trace/step")[0], axes_by_gid(fig, "trace/seconds")[0]
    assert len(fig.axes) == 2
    assert step.get_yscale() == "log" and sec.get_yscale() == "log"
    labels = [t.get_text() for t in step.get_legend().get_texts()]
    assert any("Adam" in s for s in labels) and any("Levenberg" in s for s in labels)
    assert any("1e-12" in s for s in labels)
    # The second-order phase begins at step 30: a vertical marker there.
    assert any(np.allclose(line.get_xdata(), 30) for line in step.get_lines())
    # Three-field traces (no phase) and zero errors are fine; JSON-style lists too.
    fig = kplot.plot_trace([[0, 0.0, 1.0], [1, 0.1, 1e-8], [2, 0.2, 0.0]])
    assert len(fig.axes) == 2


def test_plot_trace_into_given_axes():
    import matplotlib.figure

    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    assert kplot.plot_trace(a_trace(), ax=ax) is fig
    assert ax.get_gid() == "trace/step" and ax.get_yscale() == "log"
    fig2 = matplotlib.figure.Figure()
    axes = fig2.subplots(1, 2)
    assert kplot.plot_trace(a_trace(), ax=axes) is fig2
    assert [a.get_gid() for a in axes] == ["trace/step", "trace/seconds"]
    with pytest.raises(TypeError, match="pair of Axes"):
        kplot.plot_trace(a_trace(), ax="not an axes")


@pytest.mark.parametrize(
    "trace, exc, match",
    [
        ([], ValueError, "empty"),
        ("adam", TypeError, "list of"),
        ([(0, 0.0)], ValueError, r"trace\[0\]"),
        ([(0, 0.0, 1.0, "adam", 5)], ValueError, r"trace\[0\]"),
        ([(0, 0.0, 1.0, "adam"), (1, 0.1, 0.5)], ValueError, "same shape"),
        ([(0, 0.0, "big")], TypeError, "error must be a real number"),
        ([(0, 0.0, -1.0)], ValueError, ">= 0"),
        ([(0, float("nan"), 1.0)], ValueError, "finite"),
        ([(0, 0.0, 1.0, 3)], TypeError, "phase"),
        ([5], ValueError, r"trace\[0\]"),
    ],
)
def test_plot_trace_bad_input(trace, exc, match):
    with pytest.raises(exc, match=match):
        kplot.plot_trace(trace)


# -- plot_catalog ---------------------------------------------------------------------------
def test_plot_catalog_panels_and_baselines():
    fig = kplot.plot_catalog(catalog_rows())
    err, par, fl = (axes_by_gid(fig, f"catalog/{k}")[0] for k in ("error", "params", "flops"))
    for a in (err, par, fl):
        assert a.get_xscale() == "log" and a.get_yscale() == "log"
        assert [int(x) for x in a.get_xticks()] == [8, 16, 32]
    # One line per target in each panel (plus baselines): 3 targets.
    assert sum(1 for line in fl.get_lines() if line.get_linestyle() == "-") == 3
    # Baselines in the FLOPs panel: dense real, dense complex and FFT, dashed.
    dashed = [line for line in fl.get_lines() if line.get_linestyle() not in ("-", "None")]
    assert len(dashed) == 3
    np.testing.assert_allclose(dashed[-1].get_ydata(), [5 * n * math.log2(n) for n in (8, 16, 32)])
    # The 1e-12 line in the error panel, and the reference drawn without a line.
    assert any(np.allclose(line.get_ydata(), 1e-12) for line in err.get_lines())
    assert any(line.get_linestyle() == "None" and line.get_markerfacecolor() == "none" for line in err.get_lines())
    legend = axes_by_gid(fig, "catalog/legend")[0].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    for expected in ("dft", "hadamard", "dct2", "FFT, 5n·log2(n) FLOPs", "machine precision (1e-12)"):
        assert expected in texts


def test_plot_catalog_bad_input():
    with pytest.raises(ValueError, match="empty"):
        kplot.plot_catalog([])
    with pytest.raises(TypeError, match="list of dicts"):
        kplot.plot_catalog({"target": "dft"})
    with pytest.raises(TypeError, match=r"rows\[0\] must be a dict"):
        kplot.plot_catalog([("dft", 8)])
    row = catalog_rows()[0]
    with pytest.raises(ValueError, match=r"rows\[0\].*lacks the keys \['flops'\]"):
        kplot.plot_catalog([{k: v for k, v in row.items() if k != "flops"}])
    with pytest.raises(ValueError, match="n must be an int"):
        kplot.plot_catalog([dict(row, n=1.5)])
    with pytest.raises(TypeError, match="error must be a number"):
        kplot.plot_catalog([dict(row, error="tiny")])


# -- saving ---------------------------------------------------------------------------------
def test_save_writes_a_png_atomically(tmp_path):
    import matplotlib.image

    out = tmp_path / "dft.png"
    fig = kplot.plot_factors(known.dft(4), path=out)
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert os.listdir(tmp_path) == ["dft.png"]  # no temp file left behind
    assert fig is not None
    kplot.plot_trace(a_trace(), path=tmp_path / "trace.png")
    kplot.plot_catalog(catalog_rows(), path=str(tmp_path / "catalog.png"))
    for name in ("trace.png", "catalog.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
        assert matplotlib.image.imread(tmp_path / name).ndim == 3
    assert sorted(os.listdir(tmp_path)) == ["catalog.png", "dft.png", "trace.png"]


def test_save_format_follows_the_suffix(tmp_path):
    kplot.plot_trace([(0, 0.0, 1.0), (1, 0.1, 0.1)], path=tmp_path / "t.svg")
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")


def test_failed_save_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "t.png"
    out.write_bytes(b"old")
    fig = kplot.plot_trace(a_trace())

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(KeyboardInterrupt):
        kplot._save(fig, out)
    assert out.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["t.png"]


def test_save_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kplot.plot_trace(a_trace(), path=tmp_path / "missing" / "t.png")
    with pytest.raises(ValueError, match="unknown format"):
        kplot.plot_trace(a_trace(), path=tmp_path / "t.notaformat")
    assert os.listdir(tmp_path) == []


def test_figures_are_not_left_open_in_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    kplot.plot_trace(a_trace())
    kplot.plot_factors(known.hadamard(4))
    assert plt.get_fignums() == before


def test_import_kfit_does_not_import_matplotlib():
    code = (
        "import sys, kfit\n"
        "assert 'kfit.plot' not in sys.modules, 'import kfit imported kfit.plot'\n"
        "bad = sorted(m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.'))\n"
        "assert not bad, bad\n"
        "import kfit.plot\n"
        "assert 'matplotlib' not in sys.modules, 'import kfit.plot imported matplotlib'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
