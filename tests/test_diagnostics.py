"""Diagnostics: importance weights of eq. (2) against exact inference, InferenceData, plots, ``rlai inspect``."""

from __future__ import annotations

import inspect
import math
import warnings

import gymnasium as gym
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.figure import Figure

import rl_as_inference as rlai
from rl_as_inference import algos, diagnostics, envs, exact, guides, models, runs
from rl_as_inference.cli import main

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

N = 1000  # episodes per estimate: 0.03-0.1 s each on a tabular MDP
HORIZON, ALPHA, GAMMA = 6, 0.5, 0.95


# ---------------------------------------------------------------------- a deterministic finite MDP
def deterministic_mdp(*, fixed_start: bool = True) -> envs.TabularMDP:
    """8 states, 3 actions, deterministic transitions, N(0, 1) rewards; start in state 0 if ``fixed_start``.

    With a fixed start, the exact posterior p(tau | O) has the form of the source's eq. (12): the optimal q
    of exact.solve IS the posterior, so every importance weight equals log p(O).
    """
    base = envs.random_mdp(8, 3, seed=1, deterministic=True)
    if not fixed_start:
        return base
    p0 = np.zeros(8)
    p0[0] = 1.0
    return envs.TabularMDP(base.transition, base.reward, p0, name="det-8x3")


def tabular_setup(mdp, logits: torch.Tensor, gamma: float = GAMMA):
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=HORIZON, alpha=ALPHA, gamma=gamma
    )
    guide = guides.TabularGuide(mdp, horizon=HORIZON, gamma=gamma)
    pyro.get_param_store()[f"{guide.name}.logits"] = logits.detach().clone()
    return model, guide


@pytest.fixture(scope="module")
def solution():
    mdp = deterministic_mdp()
    return mdp, exact.solve(mdp, horizon=HORIZON, alpha=ALPHA, gamma=GAMMA)


@pytest.fixture(scope="module")
def undiscounted():
    """gamma = 1: with a fixed start and deterministic dynamics the optimal q IS p(tau | O) (with
    gamma < 1 the posterior also bends the death time, which q shares with the model)."""
    mdp = deterministic_mdp()
    return mdp, exact.solve(mdp, horizon=HORIZON, alpha=ALPHA, gamma=1.0)


def z_score(estimate: float, se: float, target: float) -> float:
    return (estimate - target) / se


# ---------------------------------------------------------------------- importance weights alone
def test_importance_diagnostics_formulas():
    rng = np.random.default_rng(0)
    sigma, n = 0.5, 4000
    lw = rng.normal(0.0, sigma, size=n)
    d = diagnostics.importance_diagnostics(lw)
    w = np.exp(lw)
    assert d.num_samples == n
    assert d.elbo == pytest.approx(lw.mean()) and d.elbo_se == pytest.approx(lw.std(ddof=1) / math.sqrt(n))
    assert d.log_evidence == pytest.approx(math.log(w.mean()))
    assert d.ess == pytest.approx(w.sum() ** 2 / (w**2).sum())
    # the delta-method SE equals sqrt((N/ESS - 1)/(N - 1)) (same weights, algebra)
    assert d.log_evidence_se == pytest.approx(math.sqrt((n / d.ess - 1) / (n - 1)))
    # E[w] = exp(sigma^2/2) for log w ~ N(0, sigma^2): within 3 standard errors
    assert abs(z_score(d.log_evidence, d.log_evidence_se, sigma**2 / 2)) < 3
    # a light tail (lognormal, sigma 0.5) against a heavy one (sigma 3) at this N
    assert d.pareto_k < 0.5
    assert diagnostics.importance_diagnostics(rng.normal(0.0, 3.0, size=n)).pareto_k > 0.7
    # weights equal to float precision have no tail: k-hat -inf, ESS N
    flat = diagnostics.importance_diagnostics(np.full(50, 3.0) + 1e-9 * rng.normal(size=50))
    assert (
        flat.pareto_k == -math.inf and flat.ess == pytest.approx(50) and flat.log_evidence == pytest.approx(3)
    )
    with pytest.raises(ValueError, match="at least 2"):
        diagnostics.importance_diagnostics([1.0])
    with pytest.raises(ValueError, match="NaN"):
        diagnostics.importance_diagnostics([0.0, float("nan")])


# ---------------------------------------------------------------------- against exact inference
def test_optimal_tabular_q_is_the_posterior(undiscounted, solution):
    mdp, sol = undiscounted
    assert sol.gap == pytest.approx(0.0, abs=1e-12)  # deterministic, fixed start: q* = p(tau | O)
    assert solution[1].gap > 0.1  # gamma = 0.95: the posterior also bends the death time
    model, guide = tabular_setup(mdp, sol.policy.log(), gamma=1.0)
    idata = diagnostics.to_inference_data(model, guide, num_episodes=N, seed=0)
    s = diagnostics.summarize(idata)
    # every log weight is log p(O) up to float32 rewards/log-probs (measured spread 6e-7 nats)
    lw = idata.sample_stats["log_weight"].values[0]
    assert np.allclose(lw, sol.log_evidence, atol=1e-5)
    assert s["pareto_k"] < 0.5  # -inf: no tail at all
    assert s["ess"] == pytest.approx(N)
    # IS estimate within 3 SE of the exact evidence; the SE is ~5e-9 here, below float32 rounding of
    # the rewards (~1e-6 nats over 6 steps), so 1e-5 nats of rounding are allowed on top.
    assert abs(s["log_evidence"] - sol.log_evidence) <= 3 * s["log_evidence_se"] + 1e-5
    assert s["elbo"] == pytest.approx(sol.elbo, abs=1e-5)


def test_near_optimal_q_has_small_khat_and_is_matches_exact(solution):
    mdp, sol = solution
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(sol.policy.shape, generator=gen, dtype=torch.float64)
    logits = sol.policy.log() + 0.2 * noise
    model, guide = tabular_setup(mdp, logits)
    s = diagnostics.summarize(diagnostics.to_inference_data(model, guide, num_episodes=N, seed=0))
    # measured (seed 0): k-hat -0.08, ESS 902 of 1000; IS 4.5868 +- 0.0104 vs exact 4.5751 (z = 1.1);
    # seeds 1-3: k-hat -0.02 to -0.55, z = -2.0 to 0.5
    assert s["pareto_k"] < 0.5
    assert abs(z_score(s["log_evidence"], s["log_evidence_se"], sol.log_evidence)) < 3
    # the ELBO estimate (mean log w) against the exact ELBO of this policy, within 3 SE
    exact_elbo = exact.elbo_of(mdp, torch.softmax(logits, -1), horizon=HORIZON, alpha=ALPHA, gamma=GAMMA)
    assert abs(z_score(s["elbo"], s["elbo_se"], exact_elbo)) < 3
    assert exact_elbo < sol.log_evidence


@pytest.mark.parametrize("kind", ["uniform", "wrong-peaked"])
def test_poor_q_has_large_khat(solution, kind):
    mdp, sol = solution
    # uniform, or softmax(-Q): peaked on the worst actions
    logits = torch.zeros_like(sol.policy) if kind == "uniform" else -sol.q_values
    model, guide = tabular_setup(mdp, logits)
    s = diagnostics.summarize(diagnostics.to_inference_data(model, guide, num_episodes=N, seed=0))
    # measured (seed 0): uniform k-hat 0.93, ESS 23.5 of 1000; wrong-peaked k-hat 2.29, ESS 4.2
    # (seeds 0-3: uniform 0.93-1.51, wrong-peaked 1.51-2.51)
    assert s["pareto_k"] > 0.7
    assert s["ess"] < N / 10
    # the ELBO (mean log w) is still unbiased for the ELBO of q, within 3 SE
    exact_elbo = exact.elbo_of(mdp, torch.softmax(logits, -1), horizon=HORIZON, alpha=ALPHA, gamma=GAMMA)
    assert abs(z_score(s["elbo"], s["elbo_se"], exact_elbo)) < 3
    if kind == "wrong-peaked":
        # what k-hat > 0.7 warns of: the IS estimate is off by far more than its own SE says
        # (measured -5.67 +- 0.49 against 4.58, z = -21)
        assert s["log_evidence"] < sol.log_evidence - 3 * s["log_evidence_se"]


def test_random_start_weights_are_the_soft_values_of_the_start():
    """Deterministic dynamics: log w(tau) of the optimal q telescopes to V_0(s_0) (the guide shares p(s_0))."""
    mdp = deterministic_mdp(fixed_start=False)
    sol = exact.solve(mdp, horizon=HORIZON, alpha=ALPHA, gamma=1.0)
    model, guide = tabular_setup(mdp, sol.policy.log(), gamma=1.0)
    idata = diagnostics.to_inference_data(model, guide, num_episodes=200, seed=1)
    s0 = idata.posterior["state"].values[0][:, 0]
    want = sol.values[0].numpy()[s0]
    assert np.allclose(idata.sample_stats["log_weight"].values[0], want, atol=1e-5)
    assert np.allclose(idata.sample_stats["log_weight_step"].values[0].sum(1), want, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("name", ["gridworld-slip-terminal", "random-stochastic"])
def test_stochastic_dynamics_and_terminal_states(name, gamma):
    """s_t sites of stochastic transitions cancel (eq. 12); steps after termination are masked out;
    with gamma < 1 the weights marginalize the death time (unbiased for the absorbing model's p(O))."""
    mdp = envs.gridworld(3, 3, slip=0.2) if name.startswith("grid") else envs.random_mdp(5, 3, seed=2)
    sol = exact.solve(mdp, horizon=8, alpha=1.0, gamma=gamma)
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=8, alpha=1.0, gamma=gamma
    )
    guide = guides.TabularGuide(mdp, horizon=8, gamma=gamma)
    pyro.get_param_store()[f"{guide.name}.logits"] = sol.policy.log().clone()
    idata = diagnostics.to_inference_data(model, guide, num_episodes=2000, seed=0)
    s = diagnostics.summarize(idata)
    # measured: gridworld ELBO -7.292 +- 0.021 vs exact -7.313 (z = 1.0), IS -6.811 +- 0.085 vs
    # -6.884 (z = 0.9), k-hat 0.63; random MDP ELBO 3.019 +- 0.033 vs 3.078 (z = -1.8), IS 4.021 +-
    # 0.042 vs 4.111 (z = -2.2), k-hat 0.23
    assert abs(z_score(s["elbo"], s["elbo_se"], sol.elbo)) < 3
    assert abs(z_score(s["log_evidence"], s["log_evidence_se"], sol.log_evidence)) < 3
    alive = idata.posterior["alive"].values[0]
    assert set(np.unique(alive)) <= {0, 1}
    alive = alive.astype(bool)
    assert np.all(alive[:, 1:] <= alive[:, :-1])  # once done, done
    assert np.all(idata.posterior["reward"].values[0][~alive] == 0)
    assert np.all(idata.sample_stats["log_weight_step"].values[0][~alive] == 0)
    if name.startswith("grid"):
        assert 0 < alive[:, -1].mean() < 1  # some episodes reached the goal


# ---------------------------------------------------------------------- InferenceData
def test_inference_data_layout_and_netcdf_round_trip(solution, tmp_path):
    mdp, sol = solution
    model, guide = tabular_setup(mdp, sol.policy.log() + 0.3)
    history = {"elbo": [1.0, 2.0, 3.5], "env_steps": [10, 20, 30]}
    idata = diagnostics.to_inference_data(model, guide, num_episodes=64, seed=3, history=history)
    post, stats = idata.posterior, idata.sample_stats
    assert post["action"].dims == ("chain", "draw", "time") and post["action"].shape == (1, 64, HORIZON)
    assert post["state"].dims == ("chain", "draw", "time") and post["final_state"].dims == ("chain", "draw")
    assert post["reward"].dims == ("chain", "draw", "time") and post["return"].dims == ("chain", "draw")
    assert stats["log_weight"].dims == ("chain", "draw") and stats["pareto_k"].dims == ()
    assert list(stats["step"].values) == [10, 20, 30] and list(stats["elbo_history"].values) == [
        1.0,
        2.0,
        3.5,
    ]
    assert np.allclose(post["return"].values[0], post["reward"].values[0].sum(1))
    disc = (GAMMA ** np.arange(HORIZON) * post["reward"].values[0]).sum(1)
    assert np.allclose(post["discounted_return"].values[0], disc)
    # rewards are R[s_t, a_t]
    R = mdp.reward.numpy()
    assert np.allclose(post["reward"].values[0], R[post["state"].values[0], post["action"].values[0]])
    attrs = post.attrs
    assert attrs["env"] == "det-8x3" and attrs["objective"] == "maxent" and attrs["horizon"] == HORIZON
    assert attrs["alpha"] == ALPHA and attrs["gamma"] == GAMMA and attrs["num_actions"] == 3

    path = diagnostics.to_netcdf(idata, tmp_path / "posterior.nc")
    back = az.from_netcdf(str(path))
    for group in ("posterior", "sample_stats"):
        a, b = getattr(idata, group), getattr(back, group)
        assert set(a.data_vars) == set(b.data_vars)
        for name in a.data_vars:
            assert a[name].dims == b[name].dims, name
            assert a[name].dtype == b[name].dtype, name
            np.testing.assert_array_equal(a[name].values, b[name].values)
    assert back.posterior.attrs["objective"] == "maxent" and back.posterior.attrs["alpha"] == ALPHA


def test_seed_is_reproducible_and_leaves_the_callers_stream(solution):
    mdp, sol = solution
    model, guide = tabular_setup(mdp, torch.zeros_like(sol.policy))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = diagnostics.to_inference_data(model, guide, num_episodes=32, seed=5)
    after = torch.rand(3)
    b = diagnostics.to_inference_data(model, guide, num_episodes=32, seed=5)
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a.posterior["action"].values[0], b.posterior["action"].values[0])


def test_fit_result_history_is_recorded():
    mdp = envs.chain(4)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=5, alpha=0.5)
    guide = guides.TabularGuide(mdp, horizon=5)
    result = rlai.fit(model, guide, num_steps=4, num_episodes=8, lr=0.1, seed=0, progress=False)
    idata = diagnostics.to_inference_data(model, guide, num_episodes=16, fit_result=result, seed=0)
    np.testing.assert_allclose(idata.sample_stats["elbo_history"].values, result.elbo)
    np.testing.assert_allclose(idata.sample_stats["return_history"].values, result.returns)
    assert idata.sample_stats.attrs["elbo_history_units"] == "nats"
    assert idata.sample_stats.attrs["history_step"] == "SVI step"
    assert idata.sample_stats["elbo_history"].dims == ("step",)


# ---------------------------------------------------------------------- a plain Pyro model
M, H_GAUSS = 1.5, 3


def weight(t: int) -> float:
    """The factor's weight of r_t: exp(r_t / alpha) at every step (no discounting)."""
    return 1 / ALPHA


def gaussian_model(num_episodes):
    """a_t ~ N(0, 1), s_{t+1} ~ N(s_t + a_t, 0.1^2), factor O_t = r_t / alpha, r_t = -(a_t - M)^2 / 2."""
    with pyro.plate("episodes", num_episodes, dim=-1):
        s = pyro.sample("s_0", dist.Normal(0.0, 0.1))
        for t in range(H_GAUSS):
            a = pyro.sample(f"a_{t}", dist.Normal(0.0, 1.0))
            s = pyro.sample(f"s_{t + 1}", dist.Normal(s + a, 0.1))
            pyro.factor(f"O_{t}", weight(t) * -((a - M) ** 2) / 2)


def gaussian_guide(locs, scales):
    def guide(num_episodes):
        with pyro.plate("episodes", num_episodes, dim=-1):
            s = pyro.sample("s_0", dist.Normal(0.0, 0.1))
            for t in range(H_GAUSS):
                a = pyro.sample(f"a_{t}", dist.Normal(float(locs[t]), float(scales[t])))
                s = pyro.sample(f"s_{t + 1}", dist.Normal(s + a, 0.1))

    return guide


def gaussian_exact():
    """log p(O) = sum_t log int N(a; 0, 1) exp(-c_t (a - M)^2 / 2) da and the posterior N(c M/(1+c), 1/(1+c))."""
    c = np.array([weight(t) for t in range(H_GAUSS)])
    log_z = float(np.sum(-0.5 * np.log1p(c) - c * M**2 / (2 * (1 + c))))
    return log_z, c * M / (1 + c), 1 / np.sqrt(1 + c)


def test_custom_pyro_model_following_the_convention():
    log_z, loc, scale = gaussian_exact()
    exact_idata = diagnostics.to_inference_data(
        gaussian_model, gaussian_guide(loc, scale), num_episodes=N, seed=0, alpha=ALPHA
    )
    post, stats = exact_idata.posterior, exact_idata.sample_stats
    # the guide is the exact posterior: every log weight is log p(O) (float32 rounding allowed)
    assert np.allclose(stats["log_weight"].values[0], log_z, atol=1e-4)
    assert stats["pareto_k"].values < 0.5
    # actions, states (from the s_t sites) and rewards (recovered from the O_t factors) by site name
    a, s = post["action"].values[0], post["state"].values[0]
    assert a.shape == (N, H_GAUSS) and s.shape == (N, H_GAUSS) and post["final_state"].shape == (1, N)
    assert np.allclose(post["reward"].values[0], -((a - M) ** 2) / 2, atol=1e-4)
    assert abs(np.mean(a[:, 0]) - loc[0]) < 4 * scale[0] / math.sqrt(N)  # 4 SE of the sample mean
    assert post.attrs["objective"] == "unknown" and post.attrs["alpha"] == ALPHA

    near = diagnostics.summarize(
        diagnostics.to_inference_data(
            gaussian_model, gaussian_guide(loc + 0.1, scale * 1.2), num_episodes=N, seed=0
        )
    )
    # measured (seed 0): k-hat -0.67, ESS 824; IS -3.8029 +- 0.0146 vs closed form -3.8084 (z = 0.4)
    assert near["pareto_k"] < 0.5
    assert abs(z_score(near["log_evidence"], near["log_evidence_se"], log_z)) < 3
    far = diagnostics.summarize(
        diagnostics.to_inference_data(
            gaussian_model, gaussian_guide(-loc, scale * 0.5), num_episodes=N, seed=0
        )
    )
    assert far["pareto_k"] > 0.7  # measured 1.37 (seeds 0-3: 1.33-1.57)


def test_sample_episodes_rejects_models_off_the_convention():
    def guide_without_actions(n):
        with pyro.plate("episodes", n, dim=-1):
            pyro.sample("s_0", dist.Normal(0.0, 0.1))

    with pytest.raises(ValueError, match="no site 'a_0'"):
        diagnostics.sample_episodes(gaussian_model, guide_without_actions, 4)

    def model_with_global(n):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("episodes", n, dim=-1):
            pyro.sample("a_0", dist.Normal(g, 1.0))

    with pytest.raises(ValueError, match="per-episode importance weights are undefined"):
        diagnostics.sample_episodes(model_with_global, model_with_global, 4)


# ---------------------------------------------------------------------- plots
@pytest.mark.parametrize("which", ["tabular", "continuous"])
def test_plots_return_figures_and_save(which, solution, tmp_path):
    if which == "tabular":
        mdp, sol = solution
        model, guide = tabular_setup(mdp, sol.policy.log())
        idata = diagnostics.to_inference_data(model, guide, num_episodes=64, seed=0, history={"elbo": [1, 2]})
    else:
        _, loc, scale = gaussian_exact()
        idata = diagnostics.to_inference_data(
            gaussian_model, gaussian_guide(loc + 0.3, scale), num_episodes=64, seed=0
        )
    for plot in (
        diagnostics.plot_elbo,
        diagnostics.plot_actions,
        diagnostics.plot_states,
        diagnostics.plot_returns,
        diagnostics.plot_weights,
    ):
        fig = plot(idata)
        assert isinstance(fig, Figure)
        fig.savefig(tmp_path / f"{plot.__name__}.png", dpi=40)
        assert (tmp_path / f"{plot.__name__}.png").stat().st_size > 1000


def exact_idata(solution, num_episodes: int = 64, gamma: float = GAMMA, **kwargs):
    mdp, sol = solution
    model, guide = tabular_setup(mdp, sol.policy.log(), gamma=gamma)
    return diagnostics.to_inference_data(model, guide, num_episodes=num_episodes, seed=0, **kwargs)


def drawn(fig: Figure) -> Figure:
    fig.canvas.draw()  # tick labels, offsets and legend positions exist only once drawn
    return fig


def test_plot_weights_of_equal_weights_draws_one_bar_without_offset(undiscounted):
    """q* gives log w equal to ~1e-7 nats: one bar, absolute tick labels, labelled weight axis."""
    idata = exact_idata(undiscounted, gamma=1.0)
    assert idata.sample_stats["pareto_k"] == -math.inf
    left, middle, right = drawn(diagnostics.plot_weights(idata)).axes
    assert len(left.patches) == 1  # a single bar, not a histogram of float rounding
    assert any("all weights equal (k-hat -inf)" in t.get_text() for t in left.texts)
    assert left.xaxis.get_major_formatter().get_offset() == ""
    lw = float(idata.sample_stats["log_weight"].values[0].mean())
    lo, hi = left.get_xlim()
    assert lo < lw < hi and hi - lo >= 1.0  # a nats-wide window, not a 1e-7-wide one
    assert [t.get_text() for t in middle.get_yticklabels() if t.get_text()]
    assert middle.get_ylim() == pytest.approx((0.5 / 64, 1.5))
    assert "equal" in middle.get_title()


def test_plot_weights_of_degenerate_weights_has_data_limits(solution):
    idata = exact_idata(solution)
    lw = np.linspace(0.0, -200.0, 64)  # one weight carries nearly all the mass
    smoothed, _ = diagnostics._psis(lw)
    stats = idata.sample_stats.assign(
        log_weight=(("chain", "draw"), lw[None]), psis_log_weight=(("chain", "draw"), smoothed[None])
    )
    idata = az.InferenceData(posterior=idata.posterior, sample_stats=stats)
    _, middle, _ = drawn(diagnostics.plot_weights(idata)).axes
    w = np.exp(lw - lw.max())
    w /= w.sum()
    low, high = middle.get_ylim()
    assert high == pytest.approx(1.5)  # not 1e9 from log-scale margins
    assert low == pytest.approx(min(w.min(), np.exp(smoothed).min()) / 2)
    assert [t.get_text() for t in middle.get_yticklabels() if t.get_text()]


def test_plot_weights_right_panel_says_what_it_shows(undiscounted):
    idata = exact_idata(undiscounted, gamma=1.0)
    _, _, right = diagnostics.plot_weights(idata).axes
    assert right.get_title() == "cumulative log-weight contributions by time step"
    spread = right.lines[0].get_ydata()
    # the last point is sd(log w) (0 for q*); before it, partial sums lack V_{t+1}: not 0 for q*
    assert spread[-1] == pytest.approx(idata.sample_stats["log_weight"].values[0].std(), abs=1e-6)
    assert spread[:-1].max() > 0.1


def test_plot_elbo_drops_nan_returns_and_labels_units(solution):
    history = {"elbo": [1.0, 2.0, 2.5, 3.0], "return": [np.nan, 5.0, np.nan, 6.0], "env_steps": [1, 2, 3, 4]}
    fig = diagnostics.plot_elbo(exact_idata(solution, history=history))
    ax, twin = fig.axes
    (line,) = twin.lines
    np.testing.assert_array_equal(line.get_xdata(), [2, 4])
    np.testing.assert_array_equal(line.get_ydata(), [5.0, 6.0])
    assert line.get_marker() not in (None, "None", "")
    assert ax.get_xlabel() == "env_steps"
    assert "units not recorded" in ax.get_ylabel()  # a plain history: nobody said what it measures
    noted = exact_idata(
        solution, history=history, attrs={"elbo_history_note": "my note", "elbo_history_units": "nats"}
    )
    ax = diagnostics.plot_elbo(noted).axes[0]
    assert ax.get_ylabel() == "elbo_history (nats)" and ax.get_title() == "my note"


def test_names_label_the_plots_and_legends_sit_outside(solution, tmp_path):
    idata = exact_idata(solution, action_names=["left", "stay", "right"])
    assert idata.posterior.attrs["action_names"] == ["left", "stay", "right"]
    fig = drawn(diagnostics.plot_actions(idata))
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["a=0: left", "a=1: stay", "a=2: right"]
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # beside the data, not on it
    fig = drawn(diagnostics.plot_states(idata))  # no state names: s=k
    ax = fig.axes[0]
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    assert "s=0" in [t.get_text() for t in ax.get_legend().get_texts()]
    with pytest.raises(ValueError, match="action_names has 2 names; expected 3"):
        exact_idata(solution, action_names=["left", "right"])
    # continuous dims without names keep s[i] / a[i]
    _, loc, scale = gaussian_exact()
    gauss = diagnostics.to_inference_data(gaussian_model, gaussian_guide(loc, scale), num_episodes=16, seed=0)
    assert "state_names" not in gauss.posterior.attrs
    assert drawn(diagnostics.plot_states(gauss)).axes[0].get_ylabel() == "s[0]"


def test_arviz_takes_the_inference_data_as_returned(solution, tmp_path):
    # episodes are the draws of one chain: ArviZ's own functions need no conversion
    idata = exact_idata(solution)
    returns = idata.posterior["return"].values[0].ravel()
    table = az.summary(idata, var_names=["return", "discounted_return"], kind="stats")
    assert list(table.index) == ["return", "discounted_return"]
    assert table.loc["return", "mean"] == pytest.approx(float(returns.mean()), abs=1e-3)
    assert table.loc["return", "sd"] == pytest.approx(float(returns.std(ddof=1)), abs=1e-3)
    assert float(az.ess(idata, var_names=["return"])["return"]) > 0
    # az.psislw on the draws, as ArviZ documents it (stacked sample dims), gives the stored k-hat
    smoothed, k = az.psislw(idata.sample_stats["log_weight"].stack(__sample__=("chain", "draw")))
    assert float(k) == pytest.approx(float(idata.sample_stats["pareto_k"]), abs=1e-9) or (
        not np.isfinite(float(k)) and not np.isfinite(float(idata.sample_stats["pareto_k"]))
    )
    # one panel per variable (not one per episode), and a trace plot of a chain of N draws
    axes = np.atleast_1d(az.plot_posterior(idata, var_names=["return"]))
    assert axes.size == 1
    assert np.atleast_2d(az.plot_trace(idata, var_names=["return"])).shape == (1, 2)
    assert np.atleast_1d(az.plot_forest(idata, var_names=["return"])).size == 1
    # and on every variable, as a first call would be (the bool alive mask made numpy refuse)
    assert np.atleast_1d(az.plot_forest(idata)).size == 1
    assert np.atleast_2d(az.plot_trace(idata)).shape[1] == 2
    assert "alive" in az.summary(idata).index.str.split("[").str[0]
    path = diagnostics.to_netcdf(idata, tmp_path / "p.nc")
    back = az.from_netcdf(str(path))
    assert back.posterior["return"].dims == ("chain", "draw")
    np.testing.assert_array_equal(back.posterior["return"].values[0], idata.posterior["return"].values[0])
    with pytest.warns(DeprecationWarning, match="no longer needed"):
        assert diagnostics.to_arviz_samples(idata).posterior["return"].dims == ("chain", "draw")


# ---------------------------------------------------------------------- run directories and the CLI
def write_run(path, env_id: str = "Pendulum-v1", policy: str = "TanhGaussianMLP", algo: str = "sac"):
    """A run directory as rlai train writes it, with an untrained 16-unit policy (no training: fast)."""
    path.mkdir(parents=True)
    probe = gym.make(env_id)
    torch.manual_seed(0)
    module = getattr(guides, policy)(
        probe.observation_space, probe.action_space, hidden=(16,), activation=torch.nn.Tanh
    )
    torch.save(
        {
            "format": runs.RUN_FORMAT,
            "algo": algo,
            "env": env_id,
            "policy": {"class": policy, "hidden": [16], "activation": "Tanh"},
            "state_dict": module.state_dict(),
            "env_steps": 300,
        },
        path / "checkpoint.pt",
    )
    (path / "config.toml").write_text(f'algo = "{algo}"\nenv = "{env_id}"\ngamma = 0.99\nseed = 0\n')
    (path / "metrics.csv").write_text(
        "env_steps,return,elbo,alpha\n100,-1200.5,-3.2,0.9\n200,-1100.0,-2.5,0.8\n300,-1000.0,-2.0,0.7\n"
    )
    return path


def test_from_run_reads_the_run_directory(tmp_path):
    run = write_run(tmp_path / "run")
    pyro.get_param_store()["policy.net.0.weight"] = torch.zeros(3)  # a stale entry must not leak in
    idata = diagnostics.from_run(run, num_episodes=8, seed=0, horizon=20)
    assert list(pyro.get_param_store().keys()) == ["policy.net.0.weight"]
    attrs = idata.posterior.attrs
    assert attrs["env"] == "Pendulum-v1" and attrs["horizon"] == 20 and attrs["objective"] == "maxent"
    assert attrs["alpha"] == 0.7 and attrs["gamma"] == 0.99  # learned alpha: the last metrics.csv row
    assert idata.posterior["action"].dims == ("chain", "draw", "time", "action_dim")
    assert idata.posterior["state"].dims == ("chain", "draw", "time", "state_dim")
    np.testing.assert_array_equal(idata.sample_stats["step"].values, [100, 200, 300])
    np.testing.assert_allclose(idata.sample_stats["elbo_history"].values, [-3.2, -2.5, -2.0])
    # SAC's "elbo" column is minus its actor loss in reward units, and the plot says so
    assert attrs["algo"] == "sac" and attrs["elbo_history_units"] == "reward units"
    assert "actor loss" in attrs["elbo_history_note"] and attrs["history_step"] == "env_steps"
    ax = diagnostics.plot_elbo(idata).axes[0]
    assert ax.get_ylabel() == "elbo_history (reward units)" and "actor loss" in ax.get_title()
    # state and action dims named from Pendulum's layout (the state is not the observation)
    assert attrs["state_names"][0].startswith("theta (rad, unwrapped") and attrs["action_names"] == ["torque"]
    back = diagnostics.from_netcdf(diagnostics.to_netcdf(idata, tmp_path / "p.nc"))  # 1-name list -> str
    assert diagnostics.plot_actions(back).axes[0].get_ylabel() == "torque\na[0]"
    assert diagnostics.plot_states(back).axes[1].get_ylabel() == "theta_dot (rad/s)\ns[1]"
    # ArviZ's own plots of every variable, on the object and on its netCDF round trip
    for data in (idata, back):
        assert np.atleast_2d(az.plot_trace(data, compact=True)).shape[1] == 2
        assert np.atleast_1d(az.plot_forest(data, var_names=["return", "alive"], combined=True)).size == 1
    a = idata.posterior["action"].values[0]
    assert np.all(np.abs(a) <= 2.0)  # inside Pendulum's action box
    # default horizon: the environment's time limit
    assert diagnostics.from_run(run, num_episodes=2, seed=0).posterior.attrs["horizon"] == 200


def test_from_run_scores_an_unbounded_gaussian_policy_with_a_finite_elbo(tmp_path):
    """Fails on the code before the flat extension: a Gaussian policy's actions leave the action
    box (the env clips them), and the proper uniform prior gave log w = -inf to most episodes."""
    run = write_run(tmp_path / "run", "MountainCarContinuous-v0", policy="GaussianMLP", algo="vmpo")
    idata = diagnostics.from_run(run, num_episodes=32, seed=0, horizon=50)
    a = idata.posterior["action"].values[0]
    assert (np.abs(a) > 1).any(axis=(1, 2)).mean() > 0.5  # most episodes leave the box [-1, 1]
    lw = idata.sample_stats["log_weight"].values[0]
    assert np.isfinite(lw).all() and np.isfinite(float(idata.sample_stats["elbo"]))
    assert "extended flat beyond the box" in idata.posterior.attrs["prior"]
    # the bounded (tanh) policy keeps the proper uniform prior
    bounded = diagnostics.from_run(write_run(tmp_path / "tanh"), num_episodes=4, seed=0, horizon=5)
    assert bounded.posterior.attrs["prior"].startswith("uniform on the action space")


def test_from_run_reads_the_temperature_each_algorithm_declares(tmp_path):
    """Fails on the code before the registrations: a V-MPO run's alpha was its M-step KL multiplier
    (the 'alpha' column), not its E-step temperature."""
    run = write_run(tmp_path / "run", "CartPole-v1", policy="CategoricalMLP", algo="vmpo")
    (run / "config.toml").write_text('algo = "vmpo"\nenv = "CartPole-v1"\ngamma = 0.99\nreward_scale = 0.1\n')
    (run / "metrics.csv").write_text(
        "env_steps,return,alpha,temperature\n100,20.0,7.0,0.5\n200,30.0,8.0,0.3\n"
    )
    attrs = diagnostics.from_run(run, num_episodes=4, seed=0, horizon=5).posterior.attrs
    assert attrs["alpha"] == pytest.approx(0.3 / 0.1)  # eta over the scaled advantages, in reward units
    assert "M-step KL multipliers" in attrs["alpha_source"]
    assert "elbo_history_note" not in attrs  # V-MPO logs no ELBO
    # every registered algorithm declares a temperature and, where it logs one, what its ELBO is
    for name, algorithm in algos.REGISTRY.items():
        assert algorithm.name == name and algorithm.temperature_note
        assert runs.ALGORITHMS[name] == (algorithm.config, algorithm.train)


def test_inspect_writes_posterior_and_plots(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    out = tmp_path / "inspect"
    assert main(["inspect", str(run), "--out", str(out), "--episodes", "16", "--horizon", "50"]) == 0
    printed = capsys.readouterr().out
    for label in ("ELBO", "log p(O)", "k-hat", "ESS", "return"):
        assert label in printed
    back = az.from_netcdf(str(out / "posterior.nc"))
    assert back.posterior.sizes["draw"] == 16 and back.posterior.sizes["time"] == 50
    for name in diagnostics.PLOTS:
        assert (out / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent-run"], "is not a run directory"),
        (["RUN", "--episodes", "1"], "episodes must be an int >= 2, got 1"),
        (["RUN", "--horizon", "0"], "horizon must be an int >= 1, got 0"),
        (["RUN", "--out", "FILE"], "exists and is not a directory"),
    ],
)
def test_inspect_bad_input_gives_a_one_line_error(args, message, tmp_path, capsys):
    run = write_run(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    replace = {"RUN": str(run), "FILE": str(tmp_path / "file")}
    argv = ["inspect", *(replace.get(a, a) for a in args)]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlai: error: ") and message in err and err.count("\n") == 1


def test_public_names_have_docstrings_and_type_hints():
    assert diagnostics.__doc__
    for name in diagnostics.__all__:
        obj = getattr(diagnostics, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
        if inspect.isfunction(obj):
            assert "return" in obj.__annotations__, name


@pytest.mark.gpu
def test_tabular_diagnostics_on_cuda():
    """Everything stays on the env's device until the InferenceData is built (then it is CPU numpy)."""
    base = deterministic_mdp()
    mdp = envs.TabularMDP(base.transition, base.reward, base.initial, device="cuda")
    sol = exact.solve(mdp, horizon=HORIZON, alpha=ALPHA, gamma=1.0)  # gamma = 1: q* is the posterior
    model, guide = tabular_setup(mdp, sol.policy.log(), gamma=1.0)
    idata = diagnostics.to_inference_data(model, guide, num_episodes=256, seed=0)
    assert np.allclose(idata.sample_stats["log_weight"].values[0], sol.log_evidence, atol=1e-5)


def test_pareto_k_per_step_is_each_columns_psis_k_hat():
    from rl_as_inference.diagnostics import importance_diagnostics, pareto_k_per_step

    gen = np.random.default_rng(0)
    lw = gen.standard_normal((3, 200, 2)) * np.array([0.1, 3.0])  # mild and heavy-tailed weights
    k = pareto_k_per_step(lw)
    assert k.shape == (3, 2)
    for s in range(3):
        for e in range(2):
            assert k[s, e] == importance_diagnostics(lw[s, :, e]).pareto_k
    assert (k[:, 1] > k[:, 0]).all()  # the wider log weights have the heavier tail
    with pytest.raises(ValueError, match=r"log_weights has shape \(200, 2\); pass \[steps, K, E\]"):
        pareto_k_per_step(lw[0])
