"""Figures of factorizations, fitting traces and the catalog (matplotlib, imported here only).

``import kfit`` never imports this module or matplotlib; ``import kfit.plot`` does not import
matplotlib either -- it is loaded on the first call. Every function returns a
:class:`matplotlib.figure.Figure` and, given ``path=``, also writes it atomically (a
temporary file beside the target, then a rename: a crash never leaves a torn image). The
format follows the file suffix (``.png``, ``.svg``, ``.pdf``, ...).

Figures are built through pyplot (so notebooks render them with their usual backend) and
detached from pyplot's registry right away: nothing accumulates across calls, nothing
pops up, and ``plt.show()`` is never called. In a notebook, display the returned figure
(leave it as the cell's last expression or call ``display(fig)``); in a script, pass
``path=``. On a machine without a display the Agg backend is selected.

Functions
---------
plot_factors(op, *, trace=None, title=None, path=None)
    The factors of a K-matrix, one row per factor in matrix-product order (the order of
    ``op.structure()``): butterfly twiddles per level as images, permutations as their
    matrices (named when recognised, e.g. bit-reversal), diagonals as curves; plus the
    fitting trace when given.
plot_trace(trace, *, ax=None, path=None)
    Error against step and against seconds (log y), phases coloured.
plot_catalog(rows, *, path=None)
    Error, parameters and FLOPs against n for every target, with the dense and FFT
    baselines.

Axes carry a ``gid`` naming what they show, with the factor's position in the chain
(``"1.0"`` for factor 0 of a nested K-matrix at position 1): ``"butterfly0/level2/magnitude"``
(``/phase``, or ``/value`` for a real butterfly), ``"permutation1"``, ``"diagonal2/phase"``,
``"trace/step"``, ``"catalog/flops"``, ... Find a panel with
``[a for a in fig.axes if a.get_gid() == ...]``.
"""
from __future__ import annotations

import math
import os
import pathlib
import sys
from numbers import Real

import numpy as np

__all__ = ["plot_factors", "plot_trace", "plot_catalog", "describe_permutation", "twiddle_image"]

MACHINE_PRECISION = 1e-12
FLOAT32_PRECISION = 1e-5
_ERROR_FLOOR = 1e-17  # errors of exactly 0 are drawn here on a log axis

_PHASE_STYLE = {
    "adam": ("tab:blue", "o", "Adam (first order)"),
    "lm": ("tab:red", "s", "Levenberg–Marquardt (second order)"),
    "l-bfgs": ("tab:green", "D", "L-BFGS (second order)"),
    None: ("tab:gray", "o", "error"),
}
_OTHER_PHASE_COLORS = ["tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"]


# -- matplotlib, lazily ---------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "kfit.plot needs matplotlib: pip install 'kfit[plot]' (or pip install matplotlib)"
        ) from exc
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and _headless():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _headless() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _new_figure(figsize):
    plt = _pyplot()
    fig = plt.figure(figsize=figsize, layout="constrained")
    plt.close(fig)  # detached from pyplot: returned, never shown or accumulated
    return fig


def _save(fig, path, dpi=None):
    """Write ``fig`` to ``path`` atomically (temp file in the same directory, then rename)."""
    if path is None:
        return
    path = pathlib.Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot save the figure to {path}: directory {path.parent} does not exist")
    fmt = path.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"cannot save a figure as {path.name!r}: unknown format {fmt!r}; use one of {sorted(supported)}")
    from ._io import atomic_write

    def write(tmp):
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=dpi)

    atomic_write(path, write)


# -- factor helpers -------------------------------------------------------------------------
def _np(t):
    return t.detach().cpu().resolve_conj().numpy() if hasattr(t, "detach") else np.asarray(t)


def twiddle_image(twiddle_level) -> np.ndarray:
    """One level's ``(n/2, 2, 2)`` twiddles as a ``(2R, 2C)`` image (``R * C = n/2``).

    The pairs are laid out row-major on an ``R x C`` grid (``C = 2^ceil(log2(n/2)/2)``),
    and the four entries go to the four quadrants, like the block ``[[D1, D2], [D3, D4]]``:
    ``image[a*R + r, b*C + c] = t[r*C + c, a, b]``.
    """
    t = np.asarray(twiddle_level)
    half = t.shape[0]
    C = 1 << math.ceil(math.log2(half) / 2) if half > 1 else 1
    R = half // C
    return t.reshape(R, C, 2, 2).transpose(2, 0, 3, 1).reshape(2 * R, 2 * C)


def _named_permutations(n: int) -> dict:
    import kfit

    idx = np.arange(n)
    out = {"identity": idx}
    if n >= 2 and n & (n - 1) == 0:
        if hasattr(kfit.Permutation, "bit_reversal"):
            out["bit-reversal"] = _np(kfit.Permutation.bit_reversal(n).perm)
        else:  # pragma: no cover - older kfit
            L = n.bit_length() - 1
            out["bit-reversal"] = np.array([int(format(i, f"0{L}b")[::-1], 2) for i in range(n)])
    out["reversal"] = idx[::-1].copy()
    if n >= 4:
        evenodd = np.concatenate([idx[0::2], idx[1::2]])
        out["even/odd split"] = evenodd
        out["perfect shuffle"] = np.argsort(evenodd)
        # Makhoul's DCT reordering: evens ascending, then odds descending.
        out["Makhoul reorder"] = np.concatenate([idx[0::2], idx[1::2][::-1]])
    return out


def describe_permutation(perm) -> str | None:
    """A name for a permutation index vector (``(P x)[i] = x[perm[i]]``) when it is a
    well-known one or a product of two of them (``"bit-reversal · Makhoul reorder"`` is
    ``P_bitrev @ P_makhoul``, matrix order); ``None`` otherwise."""
    p = _np(getattr(perm, "perm", perm)).astype(np.int64).ravel()
    n = p.size
    named = _named_permutations(n)
    for name, q in named.items():
        if np.array_equal(p, q):
            return name
    for a, qa in named.items():
        for b, qb in named.items():
            if a == "identity" or b == "identity":
                continue
            if np.array_equal(p, qb[qa]):  # P_a @ P_b has perm qb[qa]
                return f"{a} · {b}"
    return None


def _walk(op, path="", context=""):
    """Leaf factors of ``op`` in matrix order, as (factor, path, context) triples."""
    from ._kmatrix import KMatrix

    out = []
    for i, f in enumerate(op.factors):
        p = f"{path}{i}" if not path else f"{path}.{i}"
        if isinstance(f, KMatrix):
            # structure() already shows Re(...) and corner: name the nesting only when it matters
            ctx = context + (f"inside {f.structure()} " if f.real_output or f.expansion > 1 else "")
            out.extend(_walk(f, p, ctx))
        else:
            out.append((f, p, context))
    return out


def _as_kmatrix(op):
    from ._kmatrix import KMatrix

    trace = None
    if hasattr(op, "kmatrix") and not isinstance(op, KMatrix):  # a solvers Result
        trace = getattr(op, "trace", None) or None
        if op.kmatrix is None:
            raise ValueError("this result holds no factorization (result.kmatrix is None) to plot")
        op = op.kmatrix
    try:
        K = KMatrix.wrap(op)
    except TypeError:
        raise TypeError(
            f"op must be a KMatrix, Butterfly, Permutation, Diagonal or a solver result, got {type(op).__name__}"
        ) from None
    if len(K.batch_shape):
        raise ValueError(
            f"op is batched (batch shape {tuple(K.batch_shape)}); plot one member, e.g. plot_factors(op[0])"
        )
    return K, trace


def _stride_text(B):
    s = B.strides
    return f"strides {s[0]}→{s[-1]}" if len(s) > 1 else f"stride {s[0]}"


# -- plot_factors ---------------------------------------------------------------------------
def plot_factors(op, *, trace=None, title=None, path=None):
    """The factors of ``op``, one row per factor in matrix-product order.

    Parameters
    ----------
    op : KMatrix, Butterfly, Permutation, Diagonal, or a solver result (``.kmatrix``,
        whose ``.trace`` is used when ``trace`` is not given). Nested K-matrices are
        drawn factor by factor, labelled with where they sit. Batched operators: pass one
        member (``op[0]``).
    trace : list of ``(step, seconds, error[, phase])``, optional
        Adds the panels of :func:`plot_trace` at the bottom.
    title : str, optional
        Default: the structure formula and n.
    path : str or Path, optional
        Also save the figure there (atomically; format from the suffix).

    What it shows
    -------------
    * Butterfly: one image per level (titled with its stride). Each image holds that
      level's ``n/2`` 2x2 twiddles, see :func:`twiddle_image`: the four quadrants are the
      entries ``t00 t01 / t10 t11`` (the block ``[[D1, D2], [D3, D4]]``), pairs row-major.
      Complex: a row of magnitudes (viridis, from 0) and a row of phases (cyclic
      colormap, -pi..pi, grey where the magnitude is 0). Real: one row of signed values
      (diverging colormap, symmetric about 0) -- magnitude and sign in one image.
    * Permutation: its matrix (row i has its 1 in column perm[i]), titled with its name
      when recognised (identity, bit-reversal, reversal, even/odd split, ..., or a
      product of two of these).
    * Diagonal: its values against the index (complex: magnitude and phase panels).
    * trace: error against step and against seconds, log y, coloured by phase.
    """
    K, result_trace = _as_kmatrix(op)
    if trace is None:
        trace = result_trace
    points = _check_trace(trace) if trace is not None else None
    from ._butterfly import Butterfly
    from ._permutation import Diagonal, Permutation

    leaves = _walk(K)
    n_work = K.N
    L = max(1, n_work.bit_length() - 1)
    ncols = max(L, 4)
    col_w = 1.45 if ncols >= 7 else 1.75
    half = n_work // 2
    C = 1 << math.ceil(math.log2(half) / 2) if half > 1 else 1
    img_aspect = (half // C) / C  # rows / cols of a twiddle image

    # Row plan: (kind, payload, height in inches).
    rows = []
    for f, p, ctx in leaves:
        if isinstance(f, Butterfly):
            if f.is_complex:
                rows.append(("bfly", (f, p, ctx, "magnitude"), col_w * img_aspect + 0.55))
                rows.append(("bfly", (f, p, ctx, "phase"), col_w * img_aspect + 0.55))
            else:
                rows.append(("bfly", (f, p, ctx, "value"), col_w * img_aspect + 0.55))
        elif isinstance(f, Permutation):
            rows.append(("perm", (f, p, ctx), 2.6))
        elif isinstance(f, Diagonal):
            rows.append(("diag", (f, p, ctx), 2.1))
        else:  # pragma: no cover - KMatrix only holds these
            raise TypeError(f"cannot plot a factor of type {type(f).__name__}")
    if points is not None:
        rows.append(("trace", points, 3.0))

    width = 1.2 + ncols * col_w + 0.7
    height = sum(h for _, _, h in rows) + 0.7
    fig = _new_figure((width, height))
    gs = fig.add_gridspec(len(rows), ncols + 1, height_ratios=[h for _, _, h in rows], width_ratios=[1] * ncols + [0.08])
    if title is None:
        title = f"{K.structure()}    (n = {K.n}" + (f", working size {K.N}" if K.N != K.n else "") + ")"
    fig.suptitle(title, fontsize=13)
    if any(isinstance(f, Butterfly) for f, _, _ in leaves):
        fig.supxlabel(
            "twiddle images: a level's n/2 blocks [[t00, t01], [t10, t11]] as four quadrants (pairs row-major);\n"
            "rows in matrix-product order: the last factor acts first on a vector",
            fontsize=8, color="0.35")

    for r, (kind, payload, _) in enumerate(rows):
        if kind == "bfly":
            _draw_butterfly_row(fig, gs, r, *payload)
        elif kind == "perm":
            _draw_permutation_row(fig, gs, r, *payload, ncols)
        elif kind == "diag":
            _draw_diagonal_row(fig, gs, r, *payload, ncols)
        else:
            h = ncols // 2
            a1 = fig.add_subplot(gs[r, :h])
            a2 = fig.add_subplot(gs[r, h:], sharey=a1)
            a2.tick_params(labelleft=False)  # a label here would widen the gap between columns
            _draw_trace(payload, a1, a2)
    _save(fig, path, dpi=150)
    return fig


def _draw_butterfly_row(fig, gs, r, B, p, ctx, mode):
    tw = _np(B.twiddle)
    if mode == "magnitude":
        data = np.abs(tw)
        vmax = float(data.max()) or 1.0
        kw = dict(cmap="viridis", vmin=0.0, vmax=vmax)
        label = "|t|"
    elif mode == "phase":
        import matplotlib

        mag = np.abs(tw)
        data = np.angle(tw)
        data = np.where(mag > 1e-12 * max(float(mag.max()), 1e-300), data, np.nan)
        cmap = matplotlib.colormaps["twilight"].with_extremes(bad="0.85")
        kw = dict(cmap=cmap, vmin=-math.pi, vmax=math.pi)
        label = "arg t"
    else:
        data = tw.real
        vmax = float(np.abs(data).max()) or 1.0
        kw = dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        label = "t"
    kind = "B" if B.increasing else "B*"
    cplx = " ℂ" if B.is_complex else ""
    im = None
    for lv in range(B.log_n):
        ax = fig.add_subplot(gs[r, lv])
        ax.set_gid(f"butterfly{p}/level{lv}/{mode}")
        img = twiddle_image(data[lv])
        im = ax.imshow(img, interpolation="nearest", aspect="equal", **kw)
        R2, C2 = img.shape
        ax.axhline(R2 / 2 - 0.5, color="white", lw=0.8)
        ax.axvline(C2 / 2 - 0.5, color="white", lw=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"level {lv} · stride {B.strides[lv]}", fontsize=8)
        if lv == 0:
            where = f"\n{ctx.strip()}" if ctx else ""
            ax.set_ylabel(f"[{p}] {kind}{cplx}{where}\n{_stride_text(B)}\n{label}", fontsize=9)
    if B.log_n < gs.ncols - 1:  # spare columns: put the colorbar right beside the last level
        cax = ax.inset_axes([1.06, 0.0, 0.07, 1.0])
    else:
        cax = fig.add_subplot(gs[r, -1])
    cax.set_gid(f"butterfly{p}/colorbar/{mode}")
    cb = fig.colorbar(im, cax=cax)
    cb.ax.tick_params(labelsize=7)
    if mode == "phase":
        cb.set_ticks([-math.pi, 0, math.pi])
        cb.set_ticklabels(["−π", "0", "π"])


def _draw_permutation_row(fig, gs, r, P, p, ctx, ncols):
    perm = _np(P.perm).astype(np.int64)
    n = perm.size
    name = describe_permutation(perm)
    span = min(2, ncols)
    ax = fig.add_subplot(gs[r, :span])
    ax.set_gid(f"permutation{p}")
    if n <= 64:
        M = np.zeros((n, n))
        M[np.arange(n), perm] = 1.0
        ax.imshow(M, cmap="Greys", vmin=0, vmax=1, interpolation="nearest", aspect="equal")
        if n <= 16:
            ax.set_xticks(range(n))
            ax.set_yticks(range(n))
            ax.tick_params(labelsize=6)
    else:
        ax.scatter(perm, np.arange(n), s=max(1.5, 600.0 / n), marker="s", color="black", linewidths=0)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_box_aspect(1)
    ax.set_xlabel("input index perm[i]", fontsize=8)
    ax.set_ylabel(f"[{p}] P\noutput index i", fontsize=9)
    ax.set_title(f"P: {name}" if name else "P", fontsize=9)
    # Text beside it: what P does.
    tx = fig.add_subplot(gs[r, span:])
    tx.set_gid(f"permutation{p}/text")
    tx.axis("off")
    lines = [f"permutation, n = {n}" + (f": {name}" if name else "")]
    lines.append("(P x)[i] = x[perm[i]]; a 1 at row i, column perm[i]")
    fixed = int((perm == np.arange(n)).sum())
    lines.append(f"{fixed} fixed points; stored as {n} indices (0 parameters, 0 FLOPs)")
    if n <= 32:
        lines.append("perm = [" + ", ".join(map(str, perm.tolist())) + "]")
    if ctx:
        lines.append(ctx.strip())
    tx.text(0.0, 0.5, "\n".join(lines), fontsize=9, va="center", ha="left", transform=tx.transAxes)


def _draw_diagonal_row(fig, gs, r, D, p, ctx, ncols):
    v = _np(D.values)
    n = v.size
    idx = np.arange(n)
    mk = dict(marker="o", ms=3) if n <= 64 else dict(marker=None)
    suffix = f"  ({ctx.strip()})" if ctx else ""
    if np.iscomplexobj(v):
        h = ncols // 2
        a1 = fig.add_subplot(gs[r, :h])
        a1.set_gid(f"diagonal{p}/magnitude")
        a1.plot(idx, np.abs(v), color="tab:blue", lw=1, **mk)
        a1.set_ylabel(f"[{p}] Dℂ\n|d_i|", fontsize=9)
        a1.set_title(f"diagonal: magnitude{suffix}", fontsize=9)
        a1.set_ylim(0, 1.12 * max(float(np.abs(v).max()), 1e-300))
        a2 = fig.add_subplot(gs[r, h:])
        a2.set_gid(f"diagonal{p}/phase")
        ph = np.where(np.abs(v) > 0, np.angle(v), np.nan)
        a2.scatter(idx, ph, s=8 if n <= 64 else 2, color="tab:purple")
        a2.set_ylim(-math.pi * 1.08, math.pi * 1.08)
        a2.set_yticks([-math.pi, 0, math.pi], ["−π", "0", "π"])
        a2.yaxis.tick_right()  # labels on the left would widen the gap between columns
        a2.set_title("diagonal: phase arg d_i", fontsize=9)
        axes = (a1, a2)
    else:
        a1 = fig.add_subplot(gs[r, :ncols])
        a1.set_gid(f"diagonal{p}/value")
        a1.plot(idx, v.real, color="tab:blue", lw=1, **mk)
        a1.axhline(0, color="0.6", lw=0.6)
        a1.set_ylabel(f"[{p}] D\nd_i", fontsize=9)
        a1.set_title(f"diagonal{suffix}", fontsize=9)
        axes = (a1,)
    for a in axes:
        a.set_xlabel("index i", fontsize=8)
        a.tick_params(labelsize=7)
        a.set_xlim(-0.5, n - 0.5)
        a.grid(alpha=0.3)


# -- traces ---------------------------------------------------------------------------------
def _check_trace(trace):
    """Validate a trace; returns arrays (step, seconds, error, phase list)."""
    if hasattr(trace, "trace") and not isinstance(trace, (list, tuple)):
        trace = trace.trace  # a solver result
    if isinstance(trace, (str, bytes, dict)) or not hasattr(trace, "__len__"):
        raise TypeError(f"trace must be a list of (step, seconds, error[, phase]) tuples, got {type(trace).__name__}")
    trace = list(trace)
    if not trace:
        raise ValueError("trace is empty: nothing to plot (closed-form solvers record no trace)")
    width = None
    steps, secs, errs, phases = [], [], [], []
    for i, item in enumerate(trace):
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) not in (3, 4):
            raise ValueError(
                f"trace[{i}] must be a (step, seconds, error) or (step, seconds, error, phase) tuple, got {item!r}"
            )
        if width is None:
            width = len(item)
        elif len(item) != width:
            raise ValueError(f"trace[{i}] has {len(item)} fields but trace[0] has {width}; all entries need the same shape")
        for name, val in zip(("step", "seconds", "error"), item[:3]):
            if isinstance(val, bool) or not isinstance(val, Real):
                raise TypeError(f"trace[{i}]: {name} must be a real number, got {val!r}")
        if not (math.isfinite(item[0]) and math.isfinite(item[1])):
            raise ValueError(f"trace[{i}]: step and seconds must be finite, got {item[:2]!r}")
        if item[2] < 0:
            raise ValueError(f"trace[{i}]: error must be >= 0, got {item[2]!r}")
        ph = item[3] if width == 4 else None
        if ph is not None and not isinstance(ph, str):
            raise TypeError(f"trace[{i}]: phase must be a string (e.g. 'adam', 'lm', 'l-bfgs'), got {ph!r}")
        steps.append(float(item[0]))
        secs.append(float(item[1]))
        errs.append(float(item[2]))
        phases.append(ph.lower() if ph else None)
    return np.array(steps), np.array(secs), np.array(errs), phases


def _phase_style(ph, extra):
    if ph in _PHASE_STYLE:
        return _PHASE_STYLE[ph]
    if ph not in extra:
        extra[ph] = (_OTHER_PHASE_COLORS[len(extra) % len(_OTHER_PHASE_COLORS)], "^", ph)
    return extra[ph]


def _draw_trace(points, ax_step, ax_sec=None):
    steps, secs, errs, phases = points
    shown = np.where(errs > 0, errs, _ERROR_FLOOR)
    finite = np.isfinite(shown)
    # Contiguous segments of one phase.
    segs, start = [], 0
    for i in range(1, len(phases) + 1):
        if i == len(phases) or phases[i] != phases[start]:
            segs.append((start, i, phases[start]))
            start = i
    extra = {}
    for ax, x, xlabel in ((ax_step, steps, "step"), (ax_sec, secs, "seconds")):
        if ax is None:
            continue
        ax.set_gid(f"trace/{xlabel}")
        ax.plot(x[finite], shown[finite], color="0.75", lw=0.8, zorder=1)
        labelled = set()
        for a, b, ph in segs:
            color, marker, label = _phase_style(ph, extra)
            m = finite[a:b]
            nseg = int(m.sum())
            ax.plot(x[a:b][m], shown[a:b][m], color=color, lw=1.6, marker=marker, ms=3 if nseg <= 200 else 0,
                    label=None if ph in labelled else label, zorder=2)
            labelled.add(ph)
            if a > 0:
                ax.axvline(x[a], color=color, ls=":", lw=0.9, alpha=0.8, zorder=0)
        ax.axhline(MACHINE_PRECISION, color="black", ls=":", lw=1, label="machine precision (1e-12)")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        if ax is ax_step or ax_step is None:
            ax.set_ylabel("relative error ‖K − M‖F / ‖M‖F")
        ax.grid(alpha=0.3, which="major")
        best = float(np.nanmin(errs)) if np.isfinite(errs).any() else float("nan")
        ax.set_title(f"error vs {xlabel}" + (f"  (best {best:.2e})" if ax is ax_step and math.isfinite(best) else ""),
                     fontsize=10)
        if (errs == 0).any():
            ax.annotate("0 drawn at 1e-17", (1, 0), xycoords="axes fraction", xytext=(-4, 4),
                        textcoords="offset points", ha="right", va="bottom", fontsize=7, color="0.4")
    (ax_step or ax_sec).legend(fontsize=8, loc="lower left", framealpha=0.85)


def plot_trace(trace, *, ax=None, path=None):
    """The fitting trace: relative error against step and against seconds, log y.

    Parameters
    ----------
    trace : list of ``(step, seconds, error)`` or ``(step, seconds, error, phase)``
        (``solvers.Result.trace``; a result itself is accepted). ``phase`` is ``"adam"``
        (first order), ``"lm"`` or ``"l-bfgs"`` (second-order finish); each phase has its
        own colour and marker, a dotted vertical line marks where it begins, and a dotted
        horizontal line marks machine precision (1e-12). Errors of 0 are drawn at 1e-17.
    ax : matplotlib Axes or a pair of Axes, optional
        Draw into these: one Axes gets error vs step only, a pair gets (vs step, vs
        seconds). Default: a new figure with both panels.
    path : str or Path, optional
        Also save the figure there (atomically).

    Returns the Figure.
    """
    points = _check_trace(trace)
    if ax is None:
        fig = _new_figure((11, 3.6))
        a1, a2 = fig.subplots(1, 2, sharey=True)
    else:
        from matplotlib.axes import Axes

        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) not in (1, 2) or not all(isinstance(a, Axes) for a in axes):
            raise TypeError(f"ax must be a matplotlib Axes or a pair of Axes, got {ax!r}")
        a1, a2 = axes[0], axes[1] if len(axes) == 2 else None
        fig = a1.figure
        while getattr(fig, "figure", fig) is not fig:  # a SubFigure: save the whole figure
            fig = fig.figure
    _draw_trace(points, a1, a2)
    _save(fig, path)
    return fig


# -- catalog --------------------------------------------------------------------------------
_REQUIRED = ("target", "n", "error", "n_params", "flops")


def _check_rows(rows):
    if isinstance(rows, (str, bytes, dict)) or not hasattr(rows, "__iter__"):
        raise TypeError(f"rows must be a list of dicts (catalog index rows), got {type(rows).__name__}")
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: the catalog has no entries to plot (build it with `kfit catalog build`)")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] ({row.get('entry', row.get('target', '?'))}) lacks the keys {missing}")
        n = row["n"]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"rows[{i}]: n must be an int >= 2, got {n!r}")
        for k in ("error", "n_params", "flops"):
            v = row[k]
            if v is not None and (isinstance(v, bool) or not isinstance(v, Real)):
                raise TypeError(f"rows[{i}]: {k} must be a number or None, got {v!r}")
        if not isinstance(row["target"], str) or not row["target"]:
            raise TypeError(f"rows[{i}]: target must be a non-empty string, got {row['target']!r}")
        out.append(row)
    return out


def _log2_axis(ax, ns):
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(round(x))}"))
    ax.set_xlabel("n")


def plot_catalog(rows, *, path=None):
    """Error, parameters and FLOPs against n (log2 axis) for every target in the catalog.

    Parameters
    ----------
    rows : list of dict
        Catalog index rows with at least ``target``, ``n``, ``error``, ``n_params``,
        ``flops``; also read: ``complex`` (bool), ``dtype``, ``reference`` (bool, a
        closed-form reference rather than a solver result), ``entry``, ``structure``.
    path : str or Path, optional
        Also save the figure there (atomically).

    One line per target (solver results; the lowest error when a target has several
    entries of one size); closed-form references are drawn as hollow markers of the
    target's colour without a line. Error panel: log y with a dotted line at machine
    precision 1e-12 (and 1e-5 when float32 entries are present); errors of 0 sit at
    1e-17. Parameters panel: dense baselines n^2 (real) and 2 n^2 (complex), dashed.
    FLOPs panel: dense 2 n^2 (real) and 8 n^2 (complex), and the FFT's 5 n log2(n), dashed.
    A legend on the right names every line. Returns the Figure.
    """
    rows = _check_rows(rows)
    solved, refs = {}, {}
    for row in rows:
        bucket = refs if row.get("reference") else solved
        per = bucket.setdefault(row["target"], {})
        n = int(row["n"])
        old = per.get(n)
        if old is None or _err_key(row) < _err_key(old):
            per[n] = row
    targets = sorted(set(solved) | set(refs))
    ns = sorted({int(r["n"]) for r in rows})
    any_complex = any(bool(r.get("complex")) for r in rows)
    any_real = any(not bool(r.get("complex")) for r in rows)
    any_f32 = any(str(r.get("dtype", "")).replace("torch.", "") in ("float32", "complex64") for r in rows)

    fig = _new_figure((16.5, 4.8))
    gs = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 0.62])
    ax_err, ax_par, ax_fl = (fig.add_subplot(gs[0, i]) for i in range(3))
    ax_leg = fig.add_subplot(gs[0, 3])
    ax_leg.set_gid("catalog/legend")
    ax_leg.axis("off")
    for a, gid in ((ax_err, "catalog/error"), (ax_par, "catalog/params"), (ax_fl, "catalog/flops")):
        a.set_gid(gid)

    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(targets) <= 10 else "tab20"]
    markers = "osD^vP*Xh<>p"
    handles = {}
    for j, t in enumerate(targets):
        color = cmap(j % cmap.N)
        marker = markers[j % len(markers)]
        for per, ref in ((solved.get(t, {}), False), (refs.get(t, {}), True)):
            if not per:
                continue
            xs = sorted(per)
            style = dict(color=color, marker=marker, ms=5)
            if ref:
                style.update(ls="none", mfc="none", ms=8, mew=1.2)
            else:
                style.update(ls="-", lw=1.5)
            for ax, key in ((ax_err, "error"), (ax_par, "n_params"), (ax_fl, "flops")):
                pts = [(x, per[x][key]) for x in xs if per[x][key] is not None and math.isfinite(per[x][key])]
                if key == "error":
                    pts = [(x, max(y, _ERROR_FLOOR)) for x, y in pts]
                if not pts:
                    continue
                (h,) = ax.plot(*zip(*pts), **style)
                if not ref and t not in handles:
                    handles[t] = h
    # Baselines.
    nsa = np.array(ns, dtype=float)
    base_handles = []
    if any_real:
        ax_par.plot(nsa, nsa**2, color="0.35", ls="--", lw=1.2)
        (h,) = ax_fl.plot(nsa, 2 * nsa**2, color="0.35", ls="--", lw=1.2)
        base_handles.append((h, "dense, real (n² params, 2n² FLOPs)"))
    if any_complex:
        ax_par.plot(nsa, 2 * nsa**2, color="0.35", ls=(0, (6, 2, 1, 2)), lw=1.2)
        (h,) = ax_fl.plot(nsa, 8 * nsa**2, color="0.35", ls=(0, (6, 2, 1, 2)), lw=1.2)
        base_handles.append((h, "dense, complex (2n² params, 8n² FLOPs)"))
    (h,) = ax_fl.plot(nsa, 5 * nsa * np.log2(nsa), color="tab:red", ls="--", lw=1.4, alpha=0.8)
    base_handles.append((h, "FFT, 5n·log2(n) FLOPs"))
    h = ax_err.axhline(MACHINE_PRECISION, color="black", ls=":", lw=1.2)
    base_handles.append((h, "machine precision (1e-12)"))
    if any_f32:
        h = ax_err.axhline(FLOAT32_PRECISION, color="tab:orange", ls=":", lw=1.2)
        base_handles.append((h, "float32 precision (1e-5)"))

    for ax, ylabel, title in (
        (ax_err, "relative error ‖K − M‖F / ‖M‖F", "error"),
        (ax_par, "parameters (real scalars)", "parameters"),
        (ax_fl, "FLOPs per mat-vec", "FLOPs"),
    ):
        _log2_axis(ax, ns)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="major")
    lo, hi = ax_err.get_ylim()
    ax_err.set_ylim(lo, max(hi, 10 * MACHINE_PRECISION))
    if any(r["error"] == 0 for r in rows):
        ax_err.annotate("errors of 0 drawn at 1e-17", (1, 0), xycoords="axes fraction", xytext=(-4, 4),
                        textcoords="offset points", ha="right", va="bottom", fontsize=7, color="0.4")

    from matplotlib.lines import Line2D

    hs = [handles[t] for t in targets if t in handles]
    ls = [t for t in targets if t in handles]
    only_ref = [t for t in targets if t not in handles]
    for j, t in enumerate(targets):
        if t in only_ref:
            color = cmap(j % cmap.N)
            hs.append(Line2D([], [], color=color, marker=markers[j % len(markers)], ls="none", mfc="none", ms=8))
            ls.append(f"{t} (reference only)")
    if refs:
        hs.append(Line2D([], [], color="0.3", marker="o", ls="none", mfc="none", ms=8, mew=1.2))
        ls.append("hollow: closed-form reference")
    for h, label in base_handles:
        hs.append(h)
        ls.append(label)
    ax_leg.legend(hs, ls, loc="center left", fontsize=9, frameon=False, ncols=1 if len(hs) <= 22 else 2,
                  title="target / baseline", title_fontsize=9, borderaxespad=0)
    fig.suptitle(f"kfit catalog: {len(rows)} entries, {len(targets)} targets, n = {ns[0]} … {ns[-1]}", fontsize=12)
    _save(fig, path)
    return fig


def _err_key(row):
    e = row.get("error")
    return e if isinstance(e, Real) and not isinstance(e, bool) and math.isfinite(e) else float("inf")
