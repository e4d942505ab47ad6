"""Gradient fitting and the automatic structure search (small sizes; larger ones are
``kfit bench fit``). References are independent: numpy/scipy targets and dense products
rebuilt from the returned factors' own data."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

import kfit
from _fixtures import DEVICES, perturbed
from kfit.targets import bit_reversal
from solvers import GradientConfig, fit, fit_gradient


def hartley_np(n):
    F = np.fft.fft(np.eye(n), axis=0) / math.sqrt(n)
    return F.real - F.imag


def rel(A, B):
    A, B = np.asarray(A), np.asarray(B)
    return float(np.linalg.norm(A - B) / np.linalg.norm(B))


def dense_from_factors(K):
    """Rebuild K's dense matrix from its factors' stored data (numpy only)."""
    from _reference import op_dense  # independent per-level construction (tests/_reference.py)

    return op_dense(K)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("n", [8, 16])
def test_hartley_fits_to_machine_precision_from_random_starts(n):
    r = fit_gradient(
        kfit.targets.get("hartley", n),
        chain=("B",), complex=True, real_output=True, col_perm=bit_reversal(n),
        restarts=8, adam_steps=1000, time_budget=120,
    )
    assert r.status == "converged", r.message
    assert r.error <= 1e-12
    K = dense_from_factors(r.kmatrix)
    assert rel(K, hartley_np(n)) <= 1e-12
    assert abs(rel(K, hartley_np(n)) - r.error) <= 1e-13
    steps = [t[0] for t in r.trace]
    assert steps == sorted(steps) and {t[3] for t in r.trace} >= {"adam"}


def test_hadamard_real_butterfly_fits():
    n = 8
    r = fit_gradient(kfit.targets.get("hadamard", n), chain=("B",), restarts=8, time_budget=60)
    assert r.status == "converged", r.message
    assert rel(dense_from_factors(r.kmatrix), scipy.linalg.hadamard(n) / math.sqrt(n)) <= 1e-12


def test_same_seed_same_result():
    M = kfit.targets.get("hartley", 8)
    kw = dict(chain=("B",), complex=True, real_output=True, col_perm=bit_reversal(8), restarts=4, adam_steps=200, polish=1, lm_steps=5)
    a = fit_gradient(M, seed=3, **kw)
    b = fit_gradient(M, seed=3, **kw)
    c = fit_gradient(M, seed=4, **kw)
    ta, tb, tc = (r.kmatrix.butterflies[0].twiddle for r in (a, b, c))
    assert torch.equal(ta, tb)
    assert not torch.equal(ta, tc)


def test_non_convergence_is_a_status_not_an_exception():
    # A Gaussian matrix cannot be a single real butterfly; a tiny budget ends the fit.
    M = kfit.targets.get("randn", 16)
    r = fit_gradient(M, chain=("B",), restarts=2, adam_steps=50, polish=1, lm_steps=3, time_budget=30)
    assert r.status in ("stalled", "budget")
    assert r.error > 1e-3 and not r.success
    assert r.kmatrix is not None and "error" in r.message


def test_budget_status_when_time_runs_out():
    M = kfit.targets.get("randn", 16)
    r = fit_gradient(M, chain=("B", "B*"), restarts=2, adam_steps=10**6, time_budget=0.5)
    assert r.status == "budget"
    assert r.seconds < 30


def test_complex_target_needs_a_complex_structure():
    with pytest.raises(ValueError, match="complex"):
        fit_gradient(kfit.targets.get("dft", 8), chain=("B",))


def test_bad_chain_entry():
    with pytest.raises(ValueError, match="'B' or 'B\\*'"):
        fit_gradient(kfit.targets.get("hadamard", 8), chain=("X",))


def test_auto_routes_permutations_and_identifies_before_fitting():
    P = kfit.targets.get("permutation", 16, seed=1)
    r = fit(P)
    assert r.solver == "permutation" and r.status == "exact" and r.error == 0.0
    g = torch.Generator().manual_seed(0)
    D = kfit.targets.get("dft", 32)[torch.randperm(32, generator=g)]
    r = fit(D)
    assert r.solver == "identify" and r.status == "exact"
    assert [s["step"] for s in r.info["search"]] == ["identify P·B·P"]


@pytest.mark.parametrize("device", DEVICES)
def test_auto_fits_hartley_and_records_the_search(device):
    # The gradient ladder alone (the closed forms identify the Hartley matrix: see test_realpart;
    # the alternating projections fit it: see test_projection).
    r = fit(kfit.targets.get("hartley", 16), time_budget=120, device=device, closed_form=False, projection=False,
            splitting=False)
    assert r.status == "converged", r.message
    assert r.kmatrix.device.type == "cpu"  # whatever device fitted it
    assert r.solver == "gradient"
    assert rel(dense_from_factors(r.kmatrix), hartley_np(16)) <= 1e-12
    steps = [s["step"] for s in r.info["search"]]
    assert steps and not any(step.startswith(("identify", "spectral", "permutation")) for step in steps)
    assert {s["solver"] for s in r.info["search"]} == {"gradient"}


def test_auto_retries_the_closest_rungs_with_new_seeds():
    M = kfit.targets.get("randn", 8, seed=2)
    r = fit(M, time_budget=60, restarts=2, max_rung=3, rounds=2, retry_rungs=2)
    assert not r.success
    grad = [s for s in r.info["search"] if s["solver"] == "gradient"]

    def rung(step):  # a screened rung names its best candidate: "... [P_in: sep0]"
        return step.split(" (round")[0].split(" [")[0]

    first = [s for s in grad if "(round" not in s["step"]]
    retried = [s for s in grad if "(round" in s["step"]]
    # new random starts, or a finish that was still converging resumed where it stopped
    assert retried and all(
        "(round 2, seed 7919)" in s["step"] or s["step"].endswith("[resumed] (round 2)") for s in retried
    )
    # 3 rungs in the first round, one entry each; the third screens 8 input permutations
    assert len(first) == 3 and len(dict.fromkeys(rung(s["step"]) for s in first)) == 3
    assert "[P_in: " in first[2]["step"]
    # the retried rungs are the two closest of the first round, closest first
    closest = {}
    for s in first:
        closest[rung(s["step"])] = min(closest.get(rung(s["step"]), np.inf), s["error"])
    ranked = sorted(closest, key=closest.get)[:2]
    assert list(dict.fromkeys(rung(s["step"]) for s in retried)) == ranked
    once = fit(M, time_budget=60, restarts=2, max_rung=3, rounds=1)
    assert [s["step"] for s in once.info["search"] if s["solver"] == "gradient"] == [s["step"] for s in first]


def test_auto_reports_baselines_when_nothing_fits():
    M = kfit.targets.get("randn", 16)
    r = fit(M, time_budget=6, restarts=2, max_rung=1)
    assert not r.success
    b = r.info["baselines"]
    assert b["n_params"] == r.kmatrix.n_params
    # Independent baselines: best k-sparse and rank-r errors from numpy.
    A = M.numpy()
    mags = np.sort(np.abs(A).ravel() ** 2)[::-1]
    assert b["sparse_error"] == pytest.approx(math.sqrt(mags[b["sparse_entries"]:].sum()) / np.linalg.norm(A), rel=1e-9)
    s = np.linalg.svd(A, compute_uv=False) ** 2
    assert b["low_rank_error"] == pytest.approx(math.sqrt(s[b["low_rank"]:].sum()) / np.linalg.norm(A), rel=1e-9)
    assert "sparse" in r.message and "rank" in r.message


@pytest.mark.parametrize("device", DEVICES)
def test_cli_fit_auto_and_gradient(capsys, device):
    from kfit._cli import main

    assert main(["fit", "hartley", "-n", "16", "--time-budget", "120", "--device", device, "--no-closed-form",
                 "--no-projection", "--no-splitting"]) == 0
    out = capsys.readouterr().out
    assert "converged" in out and "error" in out and "parameters" in out
    assert main(["fit", "hadamard", "-n", "8", "--solver", "gradient", "--chain", "B", "--time-budget", "60",
                 "--device", device]) == 0
    assert "converged" in capsys.readouterr().out


@pytest.mark.parametrize("device", DEVICES)
def test_lbfgs_finish_runs_and_keeps_the_best_iterate(device):
    M = kfit.targets.get("hartley", 8)
    kw = dict(chain=("B",), complex=True, real_output=True, col_perm=bit_reversal(8), restarts=4, adam_steps=300, polish=1)
    r = fit_gradient(M, finish="lbfgs", lbfgs_iters=500, time_budget=60, device=device, **kw)
    assert r.status in ("converged", "stalled", "budget")
    adam_best = min(r.info["start_errors_after_adam"])
    assert r.error <= adam_best * (1 + 1e-9)  # the polish never returns a worse iterate
    assert abs(rel(dense_from_factors(r.kmatrix), hartley_np(8)) - r.error) <= 1e-13


@pytest.mark.parametrize("device", DEVICES)
def test_learned_permutations_recover_the_dct2_at_n8(device):
    """Re(P~ · B* · P~) with both permutations learned (relaxed, rounded, fixed) from random
    starts reproduces the orthonormal DCT-II, checked against scipy."""
    import scipy.fft

    n = 8
    r = fit_gradient(
        kfit.targets.get("dct2", n), chain=("B*",), complex=True, real_output=True,
        learn_perm="both", restarts=32, adam_steps=1500, polish=4, time_budget=120, device=device,
    )
    assert r.status == "converged", r.message
    ref = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)
    assert rel(dense_from_factors(r.kmatrix), ref) <= 1e-12
    perms = r.info["learned_permutations"]
    assert set(perms) == {"in", "out"}
    for p in perms.values():
        assert sorted(p) == list(range(n))  # rounded to true permutations


def test_learn_perm_conflicts_with_a_fixed_one():
    with pytest.raises(ValueError, match="both fixed"):
        fit_gradient(kfit.targets.get("dct2", 8), chain=("B",), complex=True, real_output=True,
                     col_perm=bit_reversal(8), learn_perm="in")


@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize("name", ["circulant", "toeplitz"])
def test_convolutions_fit_from_random_starts(name, closed_form):
    n = 16
    M = kfit.targets.get(name, n, seed=5)
    # spectral identification and splitting off (spectral_max_n=0, or no closed forms at all):
    # this is the gradient route through the circulant (lift), which tests/test_spectral.py's
    # and tests/test_splitting.py's don't cover
    r = (fit(M, time_budget=200, spectral_max_n=0, splitting=False) if closed_form
         else fit(M, time_budget=200, closed_form=False, splitting=False))
    assert r.status == "converged" and r.solver == "gradient", r.message
    assert r.info["search"][-1]["step"] == ("circulant, B · B*" if name == "circulant" else "Toeplitz -> circulant 2n, B · B*")
    rng = np.random.default_rng(5)  # independent reference from the same seed, via scipy
    if name == "circulant":
        ref = scipy.linalg.circulant(rng.standard_normal(n))
    else:
        ref = M.numpy()
        assert np.allclose(ref, scipy.linalg.toeplitz(ref[:, 0], ref[0, :]))
    assert rel(dense_from_factors(r.kmatrix), ref) <= 1e-12
    assert r.kmatrix.expansion == (1 if name == "circulant" else 2)


def test_is_toeplitz():
    from solvers.fit import is_toeplitz

    assert is_toeplitz(kfit.targets.get("toeplitz", 8), 1e-14)
    assert not is_toeplitz(kfit.targets.get("randn", 8), 1e-3)


@pytest.mark.parametrize(
    "kw",
    [
        dict(chain=("B", "B*")),
        dict(chain=("B", "B*"), complex=True),
        dict(chain=("B",), complex=True, real_output=True, col_perm=bit_reversal(8)),
        dict(chain=("B", "B*"), complex=True, real_output=True, expansion=2),
        dict(chain=("B*",), row_perm=[3, 1, 4, 0, 6, 2, 7, 5], col_perm=[7, 6, 5, 4, 0, 1, 2, 3]),
    ],
    ids=["real", "complex", "re-perm", "re-expansion", "perms"],
)
def test_gauss_newton_diagonal_matches_the_jacobian(kw):
    # LM's scaling/preconditioner diag(J^T J), computed from column and row norms of
    # partial products, against the brute-force Jacobian by autograd.
    from solvers.gradient import _build, _gn_diag

    cfg = GradientConfig(restarts=1, **kw)
    model = _build(kfit.targets.get("dct2", 8).to(torch.float64), cfg)
    params = [p.detach()[0:1] for p in model.params]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    theta = torch.cat([p.reshape(-1) for p in params])

    def res(th):
        K = model.dense([c.reshape(sh) for c, sh in zip(torch.split(th, sizes), shapes)])
        return torch.view_as_real(K).reshape(-1) if K.is_complex() else K.reshape(-1)

    J = torch.autograd.functional.jacobian(res, theta)
    assert rel(_gn_diag(model, params).numpy(), J.square().sum(0).numpy()) <= 1e-12


def test_preconditioned_cg_solves_spd_systems():
    from solvers.gradient import _cg

    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 40))
    A = A @ A.T + np.diag(10.0 ** rng.uniform(-3, 3, 40))  # badly scaled
    b = rng.standard_normal(40)
    At = torch.from_numpy(A)
    x_ref = np.linalg.solve(A, b)
    for pre in (None, 1 / torch.from_numpy(np.diag(A).copy())):
        x, _ = _cg(lambda v: At @ v, torch.from_numpy(b), 400, precond=pre, rtol=1e-13)
        assert rel(x.numpy(), x_ref) <= 1e-8
    # the forcing term: a loose rtol stops early with that relative residual
    x, _ = _cg(lambda v: At @ v, torch.from_numpy(b), 400, precond=None, rtol=0.1)
    assert np.linalg.norm(b - A @ x.numpy()) <= 0.1 * np.linalg.norm(b)
    # the flag says whether the tolerance was reached (LM grows its cap when it was not)
    x, reached = _cg(lambda v: At @ v, torch.from_numpy(b), 400, rtol=1e-13)
    assert reached and rel(x.numpy(), x_ref) <= 1e-8
    x, reached = _cg(lambda v: At @ v, torch.from_numpy(b), 3, rtol=1e-13)
    assert not reached and np.linalg.norm(b - A @ x.numpy()) > 1e-13 * np.linalg.norm(b)


@pytest.mark.parametrize("complex_", [False, True])
def test_unitary_init_gives_unitary_products(complex_):
    # Every start of the default init is a product of unitary (orthogonal) 2x2 blocks,
    # so its dense matrix is unitary: checked against numpy on the densified butterfly.
    from kfit import Butterfly
    from solvers.gradient import _random_blocks

    g = torch.Generator().manual_seed(3)
    tw = _random_blocks((4, 5, 16), complex_, "unitary", g)
    tw = torch.view_as_complex(tw) if complex_ else tw
    for s in range(4):
        D = Butterfly(tw[s]).to_dense().numpy()
        assert np.abs(D @ D.conj().T - np.eye(32)).max() <= 1e-12
    # the seed fixes the draw; "gaussian" is the other choice and is not unitary
    again = _random_blocks((4, 5, 16), complex_, "unitary", torch.Generator().manual_seed(3))
    assert torch.equal(torch.view_as_complex(again) if complex_ else again, tw)
    gauss = _random_blocks((1, 5, 16), complex_, "gaussian", g)
    D = Butterfly(torch.view_as_complex(gauss[0]) if complex_ else gauss[0]).to_dense().numpy()
    assert np.abs(D @ D.conj().T - np.eye(32)).max() > 1e-3
    with pytest.raises(ValueError, match="init must be 'unitary' or 'gaussian', got 'normal'"):
        _random_blocks((1, 5, 16), complex_, "normal", g)


def test_top_level_reorderings_are_the_8_subsets_of_the_top_moves():
    from solvers._permfamily import top_level

    n = 16
    cands = top_level(n)
    perms = [tuple(p.tolist()) for _, p in cands]
    assert len(set(perms)) == 8 and cands[0] == ("id", cands[0][1]) and perms[0] == tuple(range(n))
    assert all(sorted(p) == list(range(n)) for p in perms)
    # Makhoul's DCT reordering, written out by hand: evens ascending, then odds descending
    makhoul = tuple(list(range(0, n, 2)) + list(range(n - 1, 0, -2)))
    assert dict(zip(perms, (name for name, _ in cands)))[makhoul] == "sep0+rev2_0"
    assert [name for name, _ in top_level(2)] == ["id", "sep0"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["dct2", "dst2"])
def test_auto_recovers_dct2_and_dst2_with_a_top_level_reordering(name, device):
    import scipy.fft

    n = 32
    r = fit(kfit.targets.get(name, n), time_budget=240, device=device, closed_form=False, projection=False,
            splitting=False)
    assert r.status == "converged", r.message
    ref = getattr(scipy.fft, name[:3])(np.eye(n), type=2, norm="ortho", axis=0)
    assert rel(dense_from_factors(r.kmatrix), ref) <= 1e-12
    last = r.info["search"][-1]
    assert "[P_in:" in last["step"] and last["status"] == "converged"


def test_candidates_pairs_and_the_dct4_packing():
    from solvers._permfamily import candidates, top_level

    n = 16
    dif = candidates("dif", n)
    assert len(dif) == 8 and all(torch.equal(ro, torch.as_tensor(bit_reversal(n))) for _, ro, _ in dif)
    assert [co.tolist() for _, _, co in dif] == [p.tolist() for _, p in top_level(n)]
    packed = candidates("packed", n)
    pairs = {(tuple(ro.tolist()), tuple(co.tolist())) for _, ro, co in packed}
    assert len(packed) == 64 and len(pairs) == 64
    # The DCT-IV's packing, written out from its FFT algorithm: inputs in Makhoul's order,
    # outputs y[2 br(k)] = z[k], y[n-1-2 br(k)] = z[k + n/2] (br: bit reversal on n/2).
    h = n // 2
    br = bit_reversal(h)
    p_out = [0] * n
    for k in range(h):
        p_out[2 * br[k]] = k
        p_out[n - 1 - 2 * br[k]] = k + h
    makhoul = list(range(0, n, 2)) + list(range(n - 1, 0, -2))
    assert (tuple(p_out), tuple(makhoul)) in pairs
    with pytest.raises(ValueError, match="kind must be 'dif' or 'packed', got 'dit'"):
        candidates("dit", n)


def test_halving_schedule():
    from solvers.gradient import _halving_steps

    assert _halving_steps(300, 64) == {100: 32, 150: 16, 200: 8, 250: 4, 300: 2}
    assert _halving_steps(300, 8) == {100: 4, 150: 2}
    assert _halving_steps(300, 2) == {} and _halving_steps(300, 1) == {}
    assert _halving_steps(30, 64) == {10: 32, 15: 16, 20: 8, 25: 4, 30: 2}


def test_screened_candidates_find_the_hidden_permutations():
    # M = P_out · B · P_in for a random real butterfly B and one of 6 random candidate
    # pairs; the screen must keep that pair (or one that fits as well) and converge.
    n = 16
    g = torch.Generator().manual_seed(5)
    B = kfit.Butterfly(torch.randn(4, n // 2, 2, 2, generator=g, dtype=torch.float64))
    cands = [(f"c{k}", torch.randperm(n, generator=g), torch.randperm(n, generator=g)) for k in range(6)]
    _, ro, co = cands[3]
    M = B.to_dense().numpy()[ro.numpy()][:, np.argsort(co.numpy())]  # (P x)[i] = x[perm[i]]
    r = fit_gradient(M, chain=("B",), perm_candidates=cands, restarts=4, adam_steps=300, seed=1, time_budget=120)
    assert r.status == "converged", r.message
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12
    assert r.info["candidate"] == "c3" and r.info["restarts"] == 24
    screen = r.info["screen"]
    assert sorted(row["candidate"] for row in screen) == [f"c{k}" for k in range(6)]
    assert screen[0]["candidate"] == "c3" and screen[0]["error"] <= 1e-12
    # halving: 6 -> 3 at step 100, 3 -> 2 at step 150
    assert sorted(row["adam_steps"] for row in screen)[:3] == [100, 100, 100]
    assert r.info["structure"] == "P · B · P real"


def test_perm_candidates_bad_input():
    M = np.eye(8)
    good = ("a", None, list(range(8)))
    with pytest.raises(ValueError, match="cannot be combined with row_perm"):
        fit_gradient(M, perm_candidates=[good], row_perm=list(range(8)))
    with pytest.raises(ValueError, match=r"perm_candidates\[1\] \(b\): col_perm has length 4, expected 8"):
        fit_gradient(M, perm_candidates=[good, ("b", None, [0, 1, 2, 3])])
    with pytest.raises(ValueError, match=r"perm_candidates\[0\] must be \(label, row_perm, col_perm\)"):
        fit_gradient(M, perm_candidates=[(None, None)])
    with pytest.raises(ValueError, match="perm_candidates is empty"):
        fit_gradient(M, perm_candidates=[])


def test_refine_resumes_a_fit_that_ran_out_of_iterations():
    from solvers.fit import _converging
    from solvers.gradient import refine

    n = 16
    M = hartley_np(n)
    rev = bit_reversal(n)
    kw = dict(chain=("B",), complex=True, real_output=True, col_perm=rev, restarts=16, adam_steps=300, seed=0)
    short = fit_gradient(M, lm_steps=2, polish=1, **kw)  # the finish stops after 2 steps
    assert short.status == "budget" and short.error > 1e-12 and _converging(short)
    # the message says the finish was still gaining, and how to go on
    assert short.info["finish"][0]["reductions"][-1] < 0.9 and "solvers.refine" in short.message
    r = refine(M, short.kmatrix, time_budget=120)
    assert r.status == "converged", r.message
    assert rel(dense_from_factors(r.kmatrix), M) <= 1e-12 and r.error < short.error
    # the structure and the permutation are kept
    assert r.info["structure"] == short.info["structure"] == "Re(B · P) complex"
    assert torch.equal(r.kmatrix.factors[-1].perm, short.kmatrix.factors[-1].perm)
    assert r.trace and all(phase == "lm" for *_, phase in r.trace)


@pytest.mark.parametrize("device", DEVICES)
def test_refine_takes_a_perturbed_fft_back_to_machine_precision(device):
    from solvers.gradient import refine

    F = np.fft.fft(np.eye(32), axis=0, norm="ortho")  # kfit.known.dft is unitary
    K = kfit.known.dft(32)
    start = perturbed(K, 1e-3)
    assert rel(dense_from_factors(start), F) > 1e-4
    r = refine(F, start, time_budget=60, device=device)
    assert r.status == "converged" and rel(dense_from_factors(r.kmatrix), F) <= 1e-12
    with pytest.raises(TypeError, match="K must be a kfit.KMatrix, got ndarray"):
        refine(F, F)
    D = kfit.Diagonal(torch.ones(32, dtype=torch.complex128))
    with pytest.raises(ValueError, match=r"refine needs K = .*got factors \['Butterfly', 'Diagonal'\]"):
        refine(F, kfit.KMatrix([K.factors[0], D]))


@pytest.mark.parametrize("device", DEVICES)
def test_auto_recovers_the_dct4(device):
    import scipy.fft

    n = 32
    r = fit(kfit.targets.get("dct4", n), time_budget=240, device=device, closed_form=False, projection=False,
            splitting=False)
    assert r.status == "converged", r.message
    ref = scipy.fft.dct(np.eye(n), type=4, norm="ortho", axis=0)
    assert rel(dense_from_factors(r.kmatrix), ref) <= 1e-12


def test_finish_report_counts_what_lm_did(monkeypatch):
    import solvers.gradient as G

    solves = []  # (matrix-vector products, reached its tolerance) per CG solve, counted outside
    real_cg = G._cg

    def counting_cg(matvec, b, iters, precond=None, rtol=1e-10):
        count = [0]

        def counted(v):
            count[0] += 1
            return matvec(v)

        x, reached = real_cg(counted, b, iters, precond=precond, rtol=rtol)
        solves.append((count[0], reached))
        return x, reached

    monkeypatch.setattr(G, "_cg", counting_cg)
    start = perturbed(kfit.known.dft(16), 1e-2, seed=1)
    F = np.fft.fft(np.eye(16), axis=0)
    r = G.refine(F, start, time_budget=60, cg_iters=2)  # a cap of 2 products: the first solves hit it
    (f,) = r.info["finish"]
    assert f["finish"] == "lm" and f["status"] == r.status and f["error"] == pytest.approx(r.error, rel=1e-6)
    assert f["steps"] == len(solves) == f["accepted"] + f["rejected"]
    assert f["cg_iterations"] == sum(c for c, _ in solves)
    assert f["cg_capped"] == sum(not ok for _, ok in solves) >= 1
    # an accepted step is one whose error fell: the trace's consecutive ratios below 1
    errs = [e for *_, e, phase in r.trace if phase == "lm"]
    falls = [b / a for a, b in zip(errs, errs[1:]) if b < a]
    assert len(falls) == f["accepted"]
    assert f["reductions"] == pytest.approx(falls[-5:], rel=1e-6)

