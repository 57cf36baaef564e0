"""Diagnostics of a variational policy: its trajectories as importance samples of p(tau | O), in ArviZ.

Each episode tau ~ q(tau) that the guide rolls out carries the importance weight of the source's eq. (2),

    log w(tau) = log p(tau, O) - log q(tau),   l_t = r_t / alpha + log pi(a_t|s_t) - log q(a_t|s_t)

(p(s_0) and the dynamics are shared by model and guide and cancel, the source's eq. (12)). Without
discounting log w = sum_t l_t (+ V(s_H) / alpha). With gamma < 1, a continuation probability, the
episode also draws a death time that model and guide share; it is marginalized exactly, so that
E_q[w] = p(O): log w = logsumexp_t [log(gamma^t - gamma^{t+1}) + sum_{k <= t} l_k] (the site ledger,
:mod:`rl_as_inference.ledger`). From N episodes:

- the ELBO, E_q[sum_t gamma^t l_t] <= log p(O), estimated by the mean of those per-episode sums
  (mean(log w) without discounting) with its standard error;
- the importance-sampling estimate of the evidence, log p(O) ~= logsumexp(log w) - log N, with the
  delta-method standard error sd(w) / (sqrt(N) mean(w)) = sqrt((N / ESS - 1) / (N - 1));
- Kish's effective sample size ESS = (sum w)^2 / sum w^2 of the weights;
- the Pareto k-hat of PSIS (``arviz.psislw``): the shape of the weights' upper tail. k-hat < 0.5: q
  covers p(tau | O) well and the IS estimate is reliable; k-hat > 0.7: q misses mass of the posterior,
  the IS estimate (and its standard error) cannot be trusted and the ELBO gap is large. Weights
  equal to float precision (q is the posterior) get k-hat = -inf. The tail fit assumes continuous
  weights: when they take few distinct values (the optimal q of a deterministic MDP with a random
  initial state has log w = V_0(s_0), one value per initial state) k-hat is erratic.

Trajectories are read from Pyro traces through the site-naming convention of
:mod:`rl_as_inference.models.sites` (actions ``a_t``, states ``s_t``, factors ``O_t``), so any model and
guide that follow it work, not only ``TrajectoryModel``. Every ArviZ call of the library lives in this
module (a move to ArviZ 1.x, where ``InferenceData`` becomes an ``xarray.DataTree``, is one file).

The ``InferenceData`` follows ArviZ's conventions: the N episodes drawn from q are the draws of one
chain (dims ``chain`` of size 1 and ``draw``, :data:`SAMPLE_DIMS`), so ``az.summary``, ``az.ess``,
``az.plot_trace``, ``az.plot_posterior``, ``az.plot_forest`` and ``az.psislw`` take it as returned.
The episodes are independent draws, so the statistics (``az.summary(idata, kind="stats")``) are
exact under q, while the MCMC convergence columns (``r_hat`` and the like) mean nothing; they are
statistics under q, not under p(tau | O). Further dims: ``time`` (action step t = 0..H-1),
``action_dim`` and ``state_dim`` (continuous spaces), and ``step`` (training history). Groups:
``posterior`` (action, state, final_state, reward, alive, return, discounted_return) and
``sample_stats`` (log_weight, log_weight_step, psis_log_weight per draw; the scalars elbo,
elbo_se, log_evidence, log_evidence_se, pareto_k, ess, psis_ess; ``*_history`` over ``step`` from
a fit or a run). In ArviZ 1.x the same object is an ``xarray.DataTree`` with the same groups and
dims, and ``sample_dims`` lets its functions take other layouts; the layout here needs no change.
Attributes ``state_names``/``action_names`` (when known: the ported environments, or an env's own
attributes of those names) label the plots; ``elbo_history_note``/``elbo_history_units`` say what a
recorded ``elbo_history`` is (a training objective is not always the trajectory ELBO of eq. 2).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import tempfile
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from pyro import poutine

from rl_as_inference.algos import REGISTRY
from rl_as_inference.algos.collect import constructed
from rl_as_inference.config import read_toml
from rl_as_inference.ledger import from_traces
from rl_as_inference.models.priors import UniformPrior
from rl_as_inference.models.rollout import Trajectory
from rl_as_inference.models.sites import parse_site, sample_sites, state_site
from rl_as_inference.planning import kish_ess

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.23 announces its 1.x refactor on import
    import arviz as az

__all__ = [
    "SAMPLE_DIMS",
    "EpisodeSample",
    "ImportanceDiagnostics",
    "from_netcdf",
    "from_run",
    "importance_diagnostics",
    "pareto_k_per_step",
    "plot_actions",
    "plot_elbo",
    "plot_returns",
    "plot_states",
    "plot_weights",
    "sample_episodes",
    "save_plots",
    "summarize",
    "to_arviz_samples",
    "to_inference_data",
    "to_netcdf",
]

PLOTS = ("elbo", "actions", "states", "returns", "weights")
# ArviZ's sample dims: the N episodes drawn from q are the draws of one chain (they are independent,
# so one chain of N draws is exact; the MCMC convergence columns of az.summary mean nothing here)
SAMPLE_DIMS = ("chain", "draw")
_EQUAL_TOL = 1e-5  # relative spread below which log weights count as equal (float32 rounding)

# Names of the state and action dims of the ported environments (their docstrings give the layouts).
# The state is what the dynamics integrate, not the observation: Pendulum's theta is never wrapped.
_ENV_LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "Pendulum-v1": {
        "state_names": ("theta (rad, unwrapped; 0 = up)", "theta_dot (rad/s)"),
        "action_names": ("torque",),
    },
    "CartPole-v1": {
        "state_names": ("x (m)", "x_dot (m/s)", "theta (rad)", "theta_dot (rad/s)"),
        "action_names": ("push left", "push right"),
    },
    "MountainCar-v0": {
        "state_names": ("position", "velocity"),
        "action_names": ("push left", "no push", "push right"),
    },
    "MountainCarContinuous-v0": {"state_names": ("position", "velocity"), "action_names": ("force",)},
    "Acrobot-v1": {
        "state_names": ("theta1 (rad)", "theta2 (rad)", "dtheta1 (rad/s)", "dtheta2 (rad/s)"),
        "action_names": ("torque -1", "torque 0", "torque +1"),
    },
}


# ---------------------------------------------------------------------- importance weights
@dataclass
class ImportanceDiagnostics:
    """What N importance log weights log w_i = log p(tau_i, O) - log q(tau_i) say (the source's eq. 2).

    Attributes:
        num_samples: N.
        elbo: the Monte-Carlo ELBO of eq. (2) (a lower bound of log p(O) in expectation): mean_i log w_i
            without discounting, the mean of the per-episode ELBO terms with it.
        elbo_se: its standard error (standard deviation of those terms / sqrt(N)).
        log_evidence: logsumexp_i(log w_i) - log N, the importance-sampling estimate of log p(O).
        log_evidence_se: delta-method standard error sd(w) / (sqrt(N) mean(w)) of that estimate
            (meaningful only when ``pareto_k`` < 0.7).
        pareto_k: PSIS k-hat of the weights' upper tail (``arviz.psislw`` with r_eff = 1).
        ess: Kish's effective sample size (sum w)^2 / sum w^2 of the raw weights.
        psis_ess: the same of the Pareto-smoothed weights.
    """

    num_samples: int
    elbo: float
    elbo_se: float
    log_evidence: float
    log_evidence_se: float
    pareto_k: float
    ess: float
    psis_ess: float

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict."""
        return asdict(self)


def _as_log_weights(log_weights) -> np.ndarray:
    if isinstance(log_weights, torch.Tensor):
        log_weights = log_weights.detach().to("cpu", torch.float64).numpy()
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 1 or lw.size < 2:
        raise ValueError(f"log_weights must be a 1-D array of at least 2 weights, got shape {lw.shape}")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise ValueError("log_weights must not contain NaN or +inf")
    return lw


def _all_equal(finite: np.ndarray) -> bool:
    """True when finite log weights differ by float rounding only (no tail to fit)."""
    return finite.size > 0 and bool(np.ptp(finite) <= _EQUAL_TOL * (1.0 + np.abs(finite).max()))


def _psis(lw: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed, normalized log weights and k-hat (``arviz.psislw``, r_eff = 1).

    Weights equal to float precision (spread <= 1e-5 (1 + max |log w|) nats, e.g. float32 rounding
    of an exact posterior) have no tail to fit: k-hat is then -inf and the weights are only
    normalized. No finite weight at all: k-hat is +inf.
    """
    finite = lw[np.isfinite(lw)]
    if finite.size == 0:
        return np.full_like(lw, -np.inf), math.inf
    if _all_equal(finite):
        top = finite.max()
        return lw - (top + np.log(np.exp(lw - top).sum())), -math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # psislw warns above k = 0.7; the caller reports k
        smoothed, k = az.psislw(lw, reff=1.0)
    return np.asarray(smoothed, dtype=np.float64), float(k)


def pareto_k_per_step(log_weights) -> np.ndarray:
    """PSIS k-hat of each step's and env's importance weights: ``[steps, K, E]`` log weights (a
    planner's, :meth:`rl_as_inference.planning.MPC.diagnostics` with ``record=True``) -> ``[steps, E]``."""
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 3:
        raise ValueError(f"log_weights has shape {lw.shape}; pass [steps, K, E]")
    return np.array([[_psis(lw[s, :, e])[1] for e in range(lw.shape[2])] for s in range(lw.shape[0])])


def _kish(lw: np.ndarray) -> float:
    if not np.isfinite(lw).any():  # no sample has weight: none is effective (not 0 / 0)
        return 0.0
    return float(kish_ess(torch.as_tensor(lw, dtype=torch.float64)))


def importance_diagnostics(log_weights, elbo_terms=None) -> ImportanceDiagnostics:
    """ELBO, IS estimate of log p(O), PSIS k-hat and ESS from log weights log p(tau_i, O) - log q(tau_i).

    Args:
        log_weights: ``[N]`` log importance weights of eq. (2) (numpy or torch), N >= 2; -inf is
            allowed (a trajectory impossible under the model).
        elbo_terms: optional ``[N]`` per-episode ELBO terms whose mean is the ELBO (with
            discounting, :attr:`EpisodeSample.elbo_terms`: the log weights with the death time
            averaged out of the log rather than marginalized inside it); default the log weights
            themselves, whose mean is the ELBO when gamma = 1.

    Returns:
        An :class:`ImportanceDiagnostics`.
    """
    lw = _as_log_weights(log_weights)
    n = lw.size
    finite = np.isfinite(lw).any()
    terms = lw if elbo_terms is None else _as_log_weights(elbo_terms)
    if terms.size != n:
        raise ValueError(f"elbo_terms has {terms.size} values for {n} log weights")
    elbo = float(terms.mean())
    elbo_se = float(terms.std(ddof=1) / math.sqrt(n)) if np.isfinite(terms).all() else math.nan
    smoothed, k = _psis(lw)
    if finite:
        top = lw.max()
        v = np.exp(lw - top)  # w / max w: the same ratios, no overflow
        log_evidence = float(top + np.log(v.mean()))
        log_evidence_se = float(v.std(ddof=1) / (math.sqrt(n) * v.mean()))
    else:
        log_evidence, log_evidence_se = -math.inf, math.nan
    return ImportanceDiagnostics(
        num_samples=n,
        elbo=elbo,
        elbo_se=elbo_se,
        log_evidence=log_evidence,
        log_evidence_se=log_evidence_se,
        pareto_k=k,
        ess=_kish(lw),
        psis_ess=_kish(smoothed),
    )


# ---------------------------------------------------------------------- sampling from traces
@dataclass
class EpisodeSample:
    """Episodes drawn from a guide and scored by the model, read from the Pyro traces by site name.

    Attributes:
        actions: ``[H, N, *action_shape]`` values of the guide's ``a_t`` sites.
        alive: ``[H, N]`` bool, True where step t belongs to the episode (the mask of ``a_t``).
        log_weight_steps: ``[H, N]`` the unscaled part l_t of log p(tau, O) - log q(tau) booked at
            step t by the site ledger (:mod:`rl_as_inference.ledger`): the sites ``a_t``,
            ``s_{t+1}`` and ``O_t`` (``s_0`` and per-episode latents at t = 0; ``O_H`` and
            observations outside the convention at t = H - 1), model minus guide.
        continuation: ``[H]`` (or ``[H, N]``) c_t, the probability that the episode still runs at
            step t: the scale gamma^t of step t's sites (all ones without discounting).
        log_weights: ``[N]`` log w of each episode with the death time marginalized,
            logsumexp_t [log(c_t - c_{t+1}) + sum_{k <= t} l_k]: E_q[w] = p(O) (with c = 1, the
            plain sum of ``log_weight_steps``).
        elbo_terms: ``[N]`` sum_t c_t l_t: their mean is the ELBO of eq. (2), discounted.
        states: ``[H+1, N, *state_shape]`` s_0..s_H (from a returned ``Trajectory`` or the ``s_t``
            sites), or None when neither model nor guide exposes them.
        rewards: ``[H, N]`` rewards r_t (from a returned ``Trajectory``, else recovered from the
            ``O_t`` factors as r_t = alpha log O_t), zero after termination, or None.
        latents: the guide's other per-episode latent sites, ``[N, ...]`` each.
    """

    actions: torch.Tensor
    alive: torch.Tensor
    log_weight_steps: torch.Tensor
    continuation: torch.Tensor
    log_weights: torch.Tensor
    elbo_terms: torch.Tensor
    states: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    latents: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        """H, the number of action steps."""
        return self.actions.shape[0]

    @property
    def num_episodes(self) -> int:
        """N, the size of the ``episodes`` plate."""
        return self.actions.shape[1]


def _mask(site, n: int, device) -> torch.Tensor:
    mask = site["mask"]
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.as_tensor(mask, device=device).to(torch.bool).expand(n)


def sample_episodes(
    model,
    guide,
    num_episodes: int,
    *args,
    alpha: float | None = None,
    **kwargs,
) -> EpisodeSample:
    """Roll out ``num_episodes`` episodes from the guide, replay them in the model, read them by site name.

    Traces ``guide(num_episodes, *args, **kwargs)``, replays ``model`` on that trace, and books each
    site's log-probability (model minus guide) at its step through the site ledger, so the log
    weights are those of eq. (2), log p(tau, O) - log q(tau), with the death time of a discounted
    model marginalized. Works with any model/guide pair that follows
    :mod:`rl_as_inference.models.sites`; no gradients are recorded.

    Args:
        model, guide: Pyro callables taking ``(num_episodes, *args, **kwargs)``.
        num_episodes: N, the size of the ``episodes`` plate.
        alpha: used only to recover rewards from the ``O_t`` factors of a model that does not
            return a ``Trajectory`` (default: the model's ``alpha`` attribute, else 1).

    Raises:
        ValueError: the guide has no ``a_t`` sites, misses a latent site of the model, or has a latent
            site outside the ``episodes`` plate (per-episode weights are then undefined).
    """
    n = _check_positive_int("num_episodes", num_episodes)
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(n, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(n, *args, **kwargs)
    for name, _ in sample_sites(model_trace, latent_only=True):
        if name not in guide_trace.nodes:
            raise ValueError(
                f"the guide has no site {name!r}, a latent site of the model: every action (and "
                "stochastic transition) site of the model must be sampled in the guide"
            )
    action_sites = {}
    for name, site in sample_sites(guide_trace, latent_only=True):
        info = parse_site(name)
        if info.role == "action":
            action_sites[info.time] = site
    if not action_sites:
        raise ValueError(
            "the guide has no action sites a_0, a_1, ...: it does not follow the site convention"
        )
    horizon = max(action_sites) + 1
    missing = sorted(set(range(horizon)) - set(action_sites))
    if missing:
        raise ValueError(
            f"the guide has a_{horizon - 1} but no a_{missing[0]}: action sites must be a_0..a_H-1"
        )
    actions = torch.stack([action_sites[t]["value"] for t in range(horizon)])
    if actions.shape[1] != n:
        raise ValueError(
            f"a_0 has shape {tuple(actions.shape[1:])}; expected {n} episodes first (pyro.plate('episodes', N))"
        )
    device = actions.device
    g_ret = guide_trace.nodes.get("_RETURN", {}).get("value")
    m_ret = model_trace.nodes.get("_RETURN", {}).get("value")
    g_traj = g_ret if isinstance(g_ret, Trajectory) else None
    m_traj = m_ret if isinstance(m_ret, Trajectory) else None
    traj = g_traj if g_traj is not None else m_traj

    if traj is not None and tuple(traj.alive.shape) == (horizon, n):
        alive = traj.alive.to(torch.bool)
    else:
        alive = torch.stack([_mask(action_sites[t], n, device) for t in range(horizon)])

    # ---- log weights, booked per step by the site ledger
    ledger = from_traces(model_trace, guide_trace)
    log_weights = ledger.log_weights()  # raises for a latent outside the plate
    log_ratios, survival, _ = ledger.discounted()
    if log_ratios.shape[1] != n:
        raise ValueError(
            f"the sites have {log_ratios.shape[1]} episodes; expected {n} (pyro.plate('episodes', {n}))"
        )
    # Rows past the last action (the terminal factor, observations outside the convention) are shown
    # with the last step.
    log_weight_steps = torch.cat((log_ratios[: horizon - 1], log_ratios[horizon - 1 :].sum(0, keepdim=True)))
    latents = {
        name: site["value"]
        for name, site in sample_sites(guide_trace, latent_only=True)
        if parse_site(name).role == "global" and site["value"].dim() >= 1 and site["value"].shape[0] == n
    }

    # ---- states s_0..s_H
    states = None
    if traj is not None:
        states = traj.states
    else:
        sites = [guide_trace.nodes.get(state_site(t)) for t in range(horizon + 1)]
        if all(s is not None for s in sites):
            states = torch.stack([s["value"] for s in sites])

    # ---- rewards
    rewards = None
    if traj is not None:
        rewards = traj.rewards
    else:
        a = float(alpha if alpha is not None else getattr(model, "alpha", 1.0))
        found = {}
        for name, site in sample_sites(model_trace, latent_only=False):
            info = parse_site(name)
            if info.role == "factor" and info.time is not None and info.time < horizon:
                fn = site["fn"]
                lf = fn.log_factor if hasattr(fn, "log_factor") else fn.log_prob(site["value"])
                found[info.time] = a * lf.to(torch.float64).expand(n)
        if found:
            zero = torch.zeros(n, dtype=torch.float64, device=device)
            rewards = torch.stack([found.get(t, zero) for t in range(horizon)])
            rewards = torch.where(alive, rewards, torch.zeros_like(rewards))
    return EpisodeSample(
        actions=actions,
        alive=alive,
        log_weight_steps=log_weight_steps,
        continuation=survival[:horizon, 0]
        if bool((survival == survival[:, :1]).all())
        else survival[:horizon],
        log_weights=log_weights,
        elbo_terms=ledger.elbo_terms(),
        states=states,
        rewards=rewards,
        latents=latents,
    )


# ---------------------------------------------------------------------- InferenceData
def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


# Bytes per episode and step that drawing episodes and building their InferenceData takes, per
# number in a step's state, observation and action, plus the per-step scalars (log-probabilities,
# reward, factor, weights): measured on Pendulum-v1 (2 + 3 + 1 numbers) at 190-550 bytes per
# episode-step (peak resident memory of from_run at 4,096 and 256 episodes of 200 steps), which
# 16 bytes x (numbers + 16) = 352 brackets.
_BYTES_PER_NUMBER = 16
_SCALARS_PER_STEP = 16


def _available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux, else physical)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**34  # unknown: assume 16 GiB


def _check_fits_in_memory(num_episodes: int, horizon: int, env, env_id: str) -> None:
    """Refuse a request whose episodes would not fit in half the available memory, naming both."""
    numbers = sum(
        math.prod(getattr(space, "shape", ()) or (1,)) for space in (env.observation_space, env.action_space)
    ) + math.prod(getattr(env, "state_shape", ()) or (1,))
    per_episode = horizon * (numbers + _SCALARS_PER_STEP) * _BYTES_PER_NUMBER
    need, budget = num_episodes * per_episode, _available_memory() // 2
    if need > budget:
        raise ValueError(
            f"num_episodes={num_episodes} needs about {need / 2**30:,.1f} GiB for {horizon}-step episodes "
            f"of {env_id}; half the memory available here is {budget / 2**30:,.1f} GiB: at most "
            f"{budget // per_episode:,} episodes fit"
        )


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device | None) -> Iterator[None]:
    """Seed torch's generator (Pyro samples from it) without disturbing the caller's stream."""
    if seed is None:
        yield
        return
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu").numpy()


def _episode_major(x: torch.Tensor) -> np.ndarray:
    """``[H, N, ...]`` -> ``[N, H, ...]`` numpy (on the CPU only now)."""
    return _numpy(x.movedim(1, 0))


def _feature_dims(name: str, ndim: int) -> list[str]:
    if ndim == 0:
        return []
    if ndim == 1:
        return [name]
    return [f"{name}_{i}" for i in range(ndim)]


def _objective(model, objective: str | None) -> str:
    if objective is not None:
        return str(objective)
    prior = getattr(model, "prior", None)
    if prior is None:
        return "unknown"
    return "maxent" if isinstance(prior, UniformPrior) else "kl"


def _history_from(fit_result, history: Mapping[str, Sequence[float]] | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if fit_result is not None:
        elbo = getattr(fit_result, "elbo", None)
        if elbo is None:
            raise TypeError(f"fit_result must be a FitResult (with .elbo), got {type(fit_result).__name__}")
        out["elbo"] = np.asarray(elbo, dtype=np.float64)
        returns = getattr(fit_result, "returns", None)
        if returns is not None and len(returns) == len(elbo):
            out["return"] = np.asarray(returns, dtype=np.float64)
    for key, values in (history or {}).items():
        out[str(key)] = np.asarray(values, dtype=np.float64)
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise ValueError(f"history columns differ in length: { {k: len(v) for k, v in out.items()} }")
    return out


def to_inference_data(
    model,
    guide,
    *,
    num_episodes: int,
    fit_result=None,
    history: Mapping[str, Sequence[float]] | None = None,
    init_state: torch.Tensor | None = None,
    alpha: float | None = None,
    gamma: float | None = None,
    objective: str | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    state_names: Sequence[str] | None = None,
    action_names: Sequence[str] | None = None,
) -> az.InferenceData:
    """Trajectories of the guide as an ``arviz.InferenceData``, with their importance weights (eq. 2).

    Draws ``num_episodes`` episodes tau_i ~ q (:func:`sample_episodes`) and records

    - ``posterior``: ``action`` (episode, time[, action_dim]), ``state`` s_t at which a_t is taken
      (episode, time[, state_dim]), ``final_state`` s_H, ``reward`` r_t, ``alive`` (1 while step t
      belongs to the episode, 0 after it ended; actions and states there are the absorbing
      continuation, rewards 0), ``return``
      sum_t r_t and ``discounted_return`` sum_t gamma^t r_t, plus any other per-episode latent of the
      guide (variables whose source is missing are left out);
    - ``sample_stats``: ``log_weight`` log p(tau_i, O) - log q(tau_i), ``log_weight_step`` (its terms
      per step), ``psis_log_weight`` (Pareto-smoothed, normalized), and the scalars ``elbo``,
      ``elbo_se``, ``log_evidence`` (logsumexp(log w) - log N), ``log_evidence_se``, ``pareto_k``,
      ``ess``, ``psis_ess`` of :func:`importance_diagnostics`; with ``fit_result`` or ``history``,
      ``{name}_history`` over dim ``step``;
    - attributes (on both groups): env, alpha, gamma, horizon, num_episodes, objective (``maxent``
      for a uniform prior, ``kl`` for another prior), ``state_names``/``action_names`` when known,
      ``history_step`` (what ``step`` counts) and ``elbo_history_note``/``elbo_history_units``
      with a history (with ``fit_result``: eq. 2's ELBO per episode, in nats; a plain ``history``
      gets none unless ``attrs`` gives them), and ``attrs``.

    Args:
        model, guide: Pyro callables ``(num_episodes, init_state=None)`` following the site
            convention (``TrajectoryModel`` and the guides of :mod:`rl_as_inference.guides`, or your own).
        num_episodes: N >= 2 episodes to draw.
        fit_result: a :class:`~rl_as_inference.fit.FitResult`: its ELBO (and return) history is stored.
        history: more history columns ``{name: values}`` (one value per step); a column named
            ``env_steps`` or ``step`` becomes the ``step`` coordinate.
        init_state: optional initial states passed to model and guide.
        alpha, gamma, objective: override what is read from the model's attributes.
        seed: seed of the episodes (torch's generator is forked: the caller's stream is untouched).
        attrs: extra attributes (numbers, strings, lists of strings); they override the defaults.
        state_names: a name per ``state_dim`` (continuous states) or per state (tabular); default
            the env's ``state_names`` attribute, else those of a ported environment, else none
            (the plots then say ``s[i]``).
        action_names: likewise per ``action_dim``, or per action of a discrete action space.

    Returns:
        The ``InferenceData``; tensors are moved to the CPU only here, at the end.
    """
    n = _check_positive_int("num_episodes", num_episodes)
    if n < 2:
        raise ValueError("num_episodes must be >= 2 to estimate standard errors and k-hat")
    env = getattr(model, "env", None)
    env = getattr(guide, "env", None) if env is None else env
    device = getattr(env, "device", None)
    alpha = alpha if alpha is not None else getattr(model, "alpha", None)
    gamma = gamma if gamma is not None else getattr(model, "gamma", None)
    kwargs = {} if init_state is None else {"init_state": init_state}
    with _seeded(seed, device):
        sample = sample_episodes(model, guide, n, alpha=alpha, **kwargs)
    H = sample.horizon

    posterior: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    action = _episode_major(sample.actions)
    posterior["action"] = action
    dims["action"] = [*SAMPLE_DIMS, "time", *_feature_dims("action_dim", action.ndim - 2)]
    if sample.states is not None:
        posterior["state"] = _episode_major(sample.states[:H])
        posterior["final_state"] = _numpy(sample.states[H])
        extra = _feature_dims("state_dim", posterior["state"].ndim - 2)
        dims["state"] = [*SAMPLE_DIMS, "time", *extra]
        dims["final_state"] = [*SAMPLE_DIMS, *extra]
    # 0/1 rather than bool: ArviZ's summaries and plots subtract and average every posterior
    # variable, which numpy refuses for booleans (az.plot_forest and az.plot_trace raised).
    posterior["alive"] = _episode_major(sample.alive).astype(np.int8)
    dims["alive"] = [*SAMPLE_DIMS, "time"]
    if sample.rewards is not None:
        rewards = sample.rewards.to(torch.float64)
        discount = float(gamma) if gamma is not None else 1.0
        weights = discount ** torch.arange(H, dtype=torch.float64, device=rewards.device)
        posterior["reward"] = _episode_major(rewards)
        posterior["return"] = _numpy(rewards.sum(0))
        posterior["discounted_return"] = _numpy((weights[:, None] * rewards).sum(0))
        dims |= {
            "reward": [*SAMPLE_DIMS, "time"],
            "return": list(SAMPLE_DIMS),
            "discounted_return": list(SAMPLE_DIMS),
        }
    for name, value in sample.latents.items():
        if name not in posterior:
            posterior[name] = _numpy(value)
            dims[name] = [*SAMPLE_DIMS, *_feature_dims(f"{name}_dim", value.dim() - 1)]

    lw = _numpy(sample.log_weights)
    diag = importance_diagnostics(lw, _numpy(sample.elbo_terms))
    smoothed, _ = _psis(lw)  # cheap: O(N log N) once more
    stats: dict[str, np.ndarray] = {
        "log_weight": lw,
        "log_weight_step": _episode_major(sample.log_weight_steps),
        "psis_log_weight": smoothed,
    }
    stat_dims: dict[str, list[str]] = {
        "log_weight": list(SAMPLE_DIMS),
        "log_weight_step": [*SAMPLE_DIMS, "time"],
        "psis_log_weight": list(SAMPLE_DIMS),
    }
    for key, value in diag.as_dict().items():
        if key != "num_samples":
            stats[key] = np.asarray(value, dtype=np.float64)
            stat_dims[key] = []
    hist = _history_from(fit_result, history)
    step_coord, step_name = None, "SVI step" if fit_result is not None else "step"
    for key in ("env_steps", "step"):
        if key in hist:
            step_coord, step_name = hist.pop(key), key
            if np.all(np.isfinite(step_coord)) and np.all(step_coord == np.round(step_coord)):
                step_coord = step_coord.astype(np.int64)
            break
    for key, values in hist.items():
        stats[f"{key}_history"] = values
        stat_dims[f"{key}_history"] = ["step"]

    meta: dict[str, Any] = {
        "env": getattr(env, "name", None) or "unknown",
        "horizon": H,
        "num_episodes": n,
        "objective": _objective(model, objective),
    }
    if alpha is not None:
        meta["alpha"] = float(alpha)
    if gamma is not None:
        meta["gamma"] = float(gamma)
    space = getattr(env, "action_space", None)
    if space is not None and hasattr(space, "n"):
        meta["num_actions"] = int(space.n)
    obs_space = getattr(env, "observation_space", None)
    if (
        sample.states is not None
        and sample.states.dim() == 2
        and obs_space is not None
        and hasattr(obs_space, "n")
    ):
        meta["num_states"] = int(obs_space.n)
    for key, given in (("state_names", state_names), ("action_names", action_names)):
        names = _default_names(env, key) if given is None else [str(v) for v in given]
        if names and len(names) == _label_count(key, posterior, meta):
            meta[key] = names
        elif given is not None:
            raise ValueError(f"{key} has {len(names)} names; expected {_label_count(key, posterior, meta)}")
    if hist:
        meta["history_step"] = step_name
    if fit_result is not None and "elbo" in hist:
        meta["elbo_history_note"] = "eq. 2's ELBO per episode: the SVI estimate of each step"
        meta["elbo_history_units"] = "nats"
    meta |= {k: v for k, v in (attrs or {}).items() if v is not None}
    meta = {k: _attr(v) for k, v in meta.items()}
    return _build(posterior, dims, stats, stat_dims, H, n, step_coord, meta)


def _attr(value):
    """A netCDF attribute: numbers and strings as they are, bools as 0/1, lists of strings, else str."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return str(value)


def _default_names(env, key: str) -> list[str]:
    names = getattr(env, key, None)
    if names is None:
        labels = _ENV_LABELS.get(getattr(env, "id", None) or getattr(env, "name", None) or "", {})
        names = labels.get(key)
    return [str(v) for v in names] if names is not None else []


def _label_count(key: str, posterior: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> int:
    """How many names ``state_names``/``action_names`` need: features, or values of a discrete space."""
    value = posterior.get("state" if key == "state_names" else "action")
    if value is None:
        return 0
    if np.issubdtype(value.dtype, np.integer) and value.ndim == 2:
        return int(meta.get("num_states" if key == "state_names" else "num_actions", -1))
    return int(np.prod(value.shape[2:]))


def _names(attrs: Mapping[str, Any], key: str, count: int) -> list[str] | None:
    """``attrs[key]`` as ``count`` names (netCDF reads back a one-name list as a string), else None."""
    value = attrs.get(key)
    if value is None:
        return None
    names = [value] if isinstance(value, str) else [str(v) for v in np.atleast_1d(value)]
    return names if len(names) == count else None


def _build(posterior, dims, stats, stat_dims, horizon, n, step_coord, meta) -> az.InferenceData:
    # the episodes are N independent draws of one "chain": arrays get a leading chain axis of 1
    for group, group_dims in ((posterior, dims), (stats, stat_dims)):
        for name, value in list(group.items()):
            if group_dims[name][:2] == list(SAMPLE_DIMS):
                group[name] = np.asarray(value)[None]
    coords: dict[str, np.ndarray] = {"chain": np.arange(1), "draw": np.arange(n), "time": np.arange(horizon)}
    for group, group_dims in ((posterior, dims), (stats, stat_dims)):
        for name, value in group.items():
            for dim, size in zip(group_dims[name], value.shape, strict=True):
                if dim not in coords:
                    coords[dim] = np.arange(size)
    if any(d == ["step"] for d in stat_dims.values()):
        size = next(v.shape[0] for k, v in stats.items() if stat_dims[k] == ["step"])
        coords["step"] = np.arange(size) if step_coord is None else step_coord
    groups = {}
    for group_name, group, group_dims in (("posterior", posterior, dims), ("sample_stats", stats, stat_dims)):
        used = {d for v in group_dims.values() for d in v}
        arrays = {k: v for k, v in group.items() if group_dims[k]}
        ds = az.dict_to_dataset(
            arrays,
            coords={k: v for k, v in coords.items() if k in used},
            dims={k: group_dims[k] for k in arrays},
            default_dims=[],
            attrs=dict(meta),
        )
        for name, value in group.items():
            if not group_dims[name]:  # ArviZ would give a scalar a dim of its own
                ds[name] = xr.DataArray(np.asarray(value))
        groups[group_name] = ds
    return az.InferenceData(**groups)


# ---------------------------------------------------------------------- run directories
def _read_metrics(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for key in rows[0] if rows else []:
        try:
            columns[key] = [float(r[key]) for r in rows]
        except (TypeError, ValueError):
            continue  # a non-numeric column
    return columns


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def from_run(
    run_dir: str | os.PathLike,
    *,
    num_episodes: int = 256,
    seed: int | None = 0,
    device: torch.device | str = "cpu",
    horizon: int | None = None,
    alpha: float | None = None,
    gamma: float | None = None,
) -> az.InferenceData:
    """:func:`to_inference_data` of the policy of a run directory written by ``rlai train``.

    The policy comes from ``checkpoint.pt`` (:func:`rl_as_inference.runs.load_policy`); the model is
    a ``TrajectoryModel`` on the torch port of the run's environment with the uniform prior (the
    maximum-entropy objective of the source's eq. (10)); the guide is a ``PolicyGuide`` of that policy. The
    columns of ``metrics.csv`` become the ``*_history`` variables under their csv names
    (``env_steps`` the ``step`` coordinate). They are what the algorithm logged, not quantities of
    eq. (2): SAC's ``elbo`` column is minus its actor loss (a one-step objective in reward units),
    segment SVI's and EM's the training objective per start state (nats); the attributes
    ``elbo_history_note``/``elbo_history_units`` say which, and :func:`plot_elbo` labels with them.
    Sampling happens in a scope of its own of Pyro's parameter store (the caller's is untouched).

    Args:
        run_dir: the run directory.
        num_episodes: episodes to draw from the policy.
        seed: seed of the episodes.
        device: where to load the policy and run the environment.
        horizon: steps per episode; default the environment's time limit (``max_episode_steps``),
            else the config's ``horizon``.
        alpha: temperature; default the one the run's algorithm declares
            (:attr:`rl_as_inference.algos.Algorithm.temperature`: e.g. a fixed or last logged
            ``alpha`` for sac/svi/em/softq, the E-step temperature for mpo and vmpo), else 1; the
            attribute ``alpha_source`` says which.
        gamma: discount; default the config's ``gamma``, else 1.
    """
    import pyro

    from rl_as_inference import envs, guides, models, runs

    run_dir = Path(run_dir)
    policy = runs.load_policy(run_dir, device=device)
    config_path = run_dir / "config.toml"
    config = read_toml(config_path, str(config_path)) if config_path.is_file() else {}
    metrics = _read_metrics(run_dir / "metrics.csv")
    if not envs.has_torch_env(policy.env_id):
        raise ValueError(
            f"{policy.env_id} runs only as Gymnasium's own env: the model's log-weights need the "
            "trajectories re-simulated in a torch env (a port, or one added with envs.register)"
        )
    with constructed(policy.env_id, policy.env_kwargs, "functional"):
        env = envs.make(policy.env_id, device=device, **policy.env_kwargs)
    if horizon is None:
        horizon = env.max_episode_steps or config.get("horizon")
        if horizon is None:
            raise ValueError(f"{policy.env_id} has no time limit and the config no horizon: pass horizon=")
    horizon = _check_positive_int("horizon", horizon)
    _check_fits_in_memory(num_episodes, horizon, env, policy.env_id)
    algorithm = REGISTRY.get(str(config.get("algo")))
    if alpha is None:
        alpha = algorithm.temperature(config, metrics) if algorithm is not None else None
        alpha_source = (
            algorithm.temperature_note if alpha is not None else "none declared by the run: alpha = 1"
        )
        alpha = alpha or 1.0
    else:
        alpha_source = "given by the caller"
    if gamma is None:
        gamma = _number(config.get("gamma")) or 1.0
    # A policy with unbounded support (a Gaussian; the env clips its actions) puts mass outside the
    # action box, where the proper uniform prior has none: score it against the flat extension.
    with torch.no_grad():
        probe = policy.module(env.observe(env.reset(1, seed=0)).to(policy.device))
    bounded = _bounded_support(probe)
    beyond = "impossible" if bounded or not hasattr(env.action_space, "low") else "flat"
    prior = models.UniformPrior(env.action_space, beyond_box=beyond)
    model = models.TrajectoryModel(env, prior, horizon=horizon, alpha=alpha, gamma=gamma)
    guide = guides.PolicyGuide(env, policy.module, horizon=horizon, name="policy", gamma=gamma)
    algo = config.get("algo")
    attrs: dict[str, Any] = {
        "run_dir": str(run_dir),
        "algo": algo,
        "seed": seed,
        "prior": _PRIOR_NOTES[beyond],
        "alpha_source": alpha_source,
    }
    if "elbo" in metrics:
        if algorithm is not None and algorithm.elbo_note is not None:
            note, units = algorithm.elbo_note, algorithm.elbo_units
        else:
            note, units = f"the 'elbo' column of metrics.csv as {algo or 'the run'} logged it", "as logged"
        attrs |= {"elbo_history_note": note, "elbo_history_units": units}
    if "return" in metrics:
        attrs["return_history_note"] = "mean return of the training episodes ended since the previous row"
    with pyro.get_param_store().scope():
        return to_inference_data(
            model, guide, num_episodes=num_episodes, history=metrics, seed=seed, attrs=attrs
        )


# ---------------------------------------------------------------------- summaries
_PRIOR_NOTES = {
    "impossible": "uniform on the action space (the source's eq. 10)",
    "flat": (
        "uniform density 1/vol(action box), extended flat beyond the box (improper): the policy's "
        "support is unbounded and the env clips its actions; the dropped constant is the prior's mass "
        "outside the box"
    ),
}


def _bounded_support(d) -> bool:
    """Whether an action distribution lives in a bounded set (discrete, or an interval per coordinate)."""
    support = d.support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return bool(support.is_discrete) or hasattr(support, "lower_bound") and hasattr(support, "upper_bound")


def _scalar(ds, name: str) -> float:
    return float(ds[name].values) if name in ds else math.nan


def _per_episode(da: xr.DataArray) -> np.ndarray:
    """The values of a variable with ArviZ's sample dims, episodes first: ``(chain, draw, ...)``
    flattened to ``(chain * draw, ...)``."""
    values = da.transpose(*SAMPLE_DIMS, ...).values
    return values.reshape(-1, *values.shape[2:])


def summarize(idata: az.InferenceData) -> dict[str, float]:
    """The headline numbers of an ``InferenceData`` from :func:`to_inference_data`.

    Returns:
        ``num_episodes``, ``elbo`` (eq. 2: the mean of sum_t gamma^t l_t; mean log w when gamma = 1) and ``elbo_se``, ``log_evidence``
        (logsumexp(log w) - log N) and ``log_evidence_se``, ``pareto_k``, ``ess``, ``psis_ess``,
        ``return_mean``, ``return_std``, ``return_q05``, ``return_q95`` (NaN where not recorded).
    """
    stats = idata.sample_stats
    out: dict[str, float] = {"num_episodes": float(stats.sizes.get("chain", 0) * stats.sizes.get("draw", 0))}
    for name in ("elbo", "elbo_se", "log_evidence", "log_evidence_se", "pareto_k", "ess", "psis_ess"):
        out[name] = _scalar(stats, name)
    if "return" in idata.posterior:
        r = _per_episode(idata.posterior["return"])
        out |= {
            "return_mean": float(np.mean(r)),
            "return_std": float(np.std(r)),
            "return_q05": float(np.quantile(r, 0.05)),
            "return_q95": float(np.quantile(r, 0.95)),
        }
    else:
        out |= {k: math.nan for k in ("return_mean", "return_std", "return_q05", "return_q95")}
    return out


# ---------------------------------------------------------------------- plots
def _figure(figsize) -> Figure:
    # A bare Figure (no pyplot): no global state, no GUI backend; savefig renders with Agg.
    return Figure(figsize=figsize, layout="constrained")


def _suptitle(fig: Figure, what: str, idata) -> None:
    attrs = idata.posterior.attrs
    parts = [str(attrs.get("env", ""))]
    for key in ("objective", "alpha", "gamma", "horizon"):
        if key in attrs:
            value = attrs[key]
            parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    fig.suptitle(f"{what}\n{', '.join(p for p in parts if p)}", fontsize="medium")


def _empty(fig: Figure, message: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()


def _history_line(ax, steps: np.ndarray, values: np.ndarray, color: str) -> int:
    """Plot the finite points of a history (NaN rows dropped) connected, with markers; returns their count."""
    ok = np.isfinite(values)
    count = int(ok.sum())
    if count:
        size = float(np.clip(300.0 / count, 1.5, 5.0))
        ax.plot(steps[ok], values[ok], color=color, marker="o", markersize=size, linewidth=1.2)
    return count


def plot_elbo(idata: az.InferenceData, *, figsize=(7, 4)) -> Figure:
    """The recorded history ``elbo_history`` over ``step`` and, on a twin axis, ``return_history``.

    What ``elbo_history`` measures depends on where it came from, and the plot says so: the y label
    gives its units (attribute ``elbo_history_units``) and the title its meaning
    (``elbo_history_note``). From a ``fit_result`` it is eq. (2)'s ELBO per episode (nats); from
    :func:`from_run` it is the run's ``elbo`` column of ``metrics.csv``, the algorithm's own
    training objective (SAC's is minus its actor loss, a one-step objective in reward units). NaN
    entries (rows where no training episode ended, say) are dropped and the remaining points drawn
    connected, with markers.

    Without a recorded history the figure shows this sample's ELBO (mean of eq. 2's log weights)
    and importance-sampling estimate of log p(O), with 2-standard-error bars.
    """
    fig = _figure(figsize)
    stats = idata.sample_stats
    attrs = stats.attrs
    ax = fig.add_subplot()
    if "elbo_history" in stats:
        steps = stats["step"].values
        if not _history_line(ax, steps, stats["elbo_history"].values, "C0"):
            ax.text(0.5, 0.5, "elbo_history: no finite value", ha="center", transform=ax.transAxes)
        ax.set_xlabel(str(attrs.get("history_step", "step")))
        ax.set_ylabel(f"elbo_history ({attrs.get('elbo_history_units', 'units not recorded')})", color="C0")
        note = attrs.get("elbo_history_note", "the history's 'elbo' column as given (no note of what it is)")
        ax.set_title(textwrap.fill(str(note), 95), fontsize="small")
        if "return_history" in stats:
            twin = ax.twinx()
            _history_line(twin, steps, stats["return_history"].values, "C1")
            twin.set_ylabel("return_history (mean return)", color="C1")
        what = "training history"
    else:
        values = [_scalar(stats, "elbo"), _scalar(stats, "log_evidence")]
        errors = np.nan_to_num([2 * _scalar(stats, "elbo_se"), 2 * _scalar(stats, "log_evidence_se")])
        ax.errorbar([0, 1], values, yerr=errors, fmt="o", capsize=4)
        ax.set_xticks([0, 1], ["ELBO (eq. 2)", "log p(O) ~ logmeanexp log w"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_ylabel("nats")
        title = "no ELBO history recorded: this sample's estimates (+- 2 SE)"
        k = _scalar(stats, "pareto_k")
        if k > 0.7:
            title += f"\nPSIS k-hat {k:.2f} > 0.7: the IS estimate and its SE are unreliable"
        ax.set_title(title, fontsize="small")
        what = "ELBO"
    _suptitle(fig, what, idata)
    return fig


def _bands(ax, times, values: np.ndarray, color, quantiles: Sequence[float], label: str) -> None:
    """Median line and nested quantile bands of ``values`` [N, T] (NaN = not alive) over time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns after every episode ended
        qs = sorted(quantiles)
        for i in range(len(qs) // 2):
            lo, hi = qs[i], qs[-1 - i]
            low, high = np.nanquantile(values, [lo, hi], axis=0)
            ax.fill_between(
                times, low, high, color=color, alpha=0.15 + 0.2 * i, linewidth=0, label=f"{lo:.0%}-{hi:.0%}"
            )
        ax.plot(times, np.nanmedian(values, axis=0), color=color, label="median")


def _masked(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    valid = valid.reshape(valid.shape + (1,) * (values.ndim - valid.ndim))
    return np.where(valid, values.astype(np.float64), np.nan)


def _outside_legend(ax) -> None:
    """The legend to the right of the axes, clear of the data (constrained layout makes room)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0)


def _discrete_occupancy(ax, values: np.ndarray, valid: np.ndarray, count, label: str, names) -> None:
    """P(value_t = k) among valid episodes over time: stacked steps for few values, else a heatmap.

    With few values, a dashed line shows the fraction of episodes still alive.
    """
    k = int(count) if count else int(values.max()) + 1
    names = names if names is not None and len(names) == k else None
    total = np.maximum(valid.sum(0), 1)
    probs = np.stack([((values == a) & valid).sum(0) / total for a in range(k)])  # [k, T]
    T = values.shape[1]
    if k <= 10:
        edges = np.arange(T + 1)  # value_t holds over [t, t + 1)
        ax.stackplot(
            edges,
            np.concatenate([probs, probs[:, -1:]], axis=1),
            labels=[f"{label}={a}" + (f": {names[a]}" if names else "") for a in range(k)],
            alpha=0.85,
            step="post",
        )
        alive = valid.mean(0)
        if alive.min() < 1:
            ax.step(
                edges, np.append(alive, alive[-1]), where="post", color="k", linestyle="--", label="alive"
            )
        ax.set_xlim(0, T)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"P({label}_t)")
        _outside_legend(ax)
    else:
        image = ax.imshow(
            probs,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            vmin=0,
            vmax=1,
            extent=(0, T, -0.5, k - 0.5),
        )
        ax.figure.colorbar(image, ax=ax, label=f"P({label}_t)")
        ax.set_ylabel(label)
        if names and k <= 30:
            ax.set_yticks(np.arange(k), names, fontsize="small")


def _ribbons(fig, values: np.ndarray, valid: np.ndarray, quantiles, label: str, count, names) -> None:
    """Quantile ribbons per feature of continuous ``values`` [N, T(, d)], occupancy for integers."""
    if np.issubdtype(values.dtype, np.integer):
        ax = fig.add_subplot()
        _discrete_occupancy(ax, values, valid, count, label, names)
        ax.set_xlabel("time t")
        return
    values = _masked(values, valid)
    values = values[..., None] if values.ndim == 2 else values.reshape(*values.shape[:2], -1)
    names = names if names is not None and len(names) == values.shape[2] else None
    axes = fig.subplots(values.shape[2], 1, sharex=True, squeeze=False)[:, 0]
    times = np.arange(values.shape[1])
    for d, ax in enumerate(axes):
        _bands(ax, times, values[..., d], f"C{d % 10}", quantiles, label)
        ax.set_ylabel(f"{names[d]}\n{label}[{d}]" if names else f"{label}[{d}]")
    _outside_legend(axes[0])
    axes[-1].set_xlabel("time t")


def _label_names(attrs: Mapping[str, Any], key: str, values: np.ndarray, count_key: str) -> list[str] | None:
    if np.issubdtype(values.dtype, np.integer) and values.ndim == 2:
        count = attrs.get(count_key)
        return None if count is None else _names(attrs, key, int(count))
    return _names(attrs, key, int(np.prod(values.shape[2:])))


def plot_actions(
    idata: az.InferenceData, *, quantiles: Sequence[float] = (0.05, 0.25, 0.75, 0.95), figsize=None
) -> Figure:
    """Actions a_t ~ q over time: quantile ribbons per ``action_dim``; for discrete actions P(a_t = a).

    Only steps where the episode is alive count. Dims and actions are labelled with the attribute
    ``action_names`` when it is there; legends sit outside the axes.
    """
    post = idata.posterior
    action, alive = _per_episode(post["action"]), _per_episode(post["alive"]).astype(bool)
    rows = (
        1 if action.ndim <= 2 or np.issubdtype(action.dtype, np.integer) else int(np.prod(action.shape[2:]))
    )
    fig = _figure(figsize or (8, 2.4 * rows + 1.0))
    names = _label_names(post.attrs, "action_names", action, "num_actions")
    _ribbons(fig, action, alive, quantiles, "a", post.attrs.get("num_actions"), names)
    _suptitle(fig, "actions of q", idata)
    return fig


def plot_states(
    idata: az.InferenceData, *, quantiles: Sequence[float] = (0.05, 0.25, 0.75, 0.95), figsize=None
) -> Figure:
    """States s_0..s_H of q's episodes: quantile ribbons per ``state_dim``; P(s_t = s) for tabular states.

    A state counts while its episode is alive, and so does the state that ends the episode. The
    states are what the dynamics integrate, which may differ from the observation (Pendulum's
    angle is not wrapped); dims are labelled with the attribute ``state_names`` when it is there,
    else ``s[i]``. Legends sit outside the axes.
    """
    post = idata.posterior
    if "state" not in post:
        fig = _figure(figsize or (7, 3))
        _empty(fig, "no states recorded (no s_t sites and no returned Trajectory)")
        return fig
    states = np.concatenate([_per_episode(post["state"]), _per_episode(post["final_state"])[:, None]], axis=1)
    alive = _per_episode(post["alive"]).astype(bool)
    valid = np.concatenate([np.ones_like(alive[:, :1]), alive], axis=1)  # s_t counts if step t-1 did
    rows = (
        1 if states.ndim <= 2 or np.issubdtype(states.dtype, np.integer) else int(np.prod(states.shape[2:]))
    )
    fig = _figure(figsize or (8, 2.2 * rows + 1.0))
    names = _label_names(post.attrs, "state_names", states, "num_states")
    _ribbons(fig, states, valid, quantiles, "s", post.attrs.get("num_states"), names)
    _suptitle(fig, "states under q", idata)
    return fig


def plot_returns(idata: az.InferenceData, *, figsize=(6, 4)) -> Figure:
    """Histogram of the episodes' undiscounted returns sum_t r_t, with ArviZ's KDE and the mean."""
    fig = _figure(figsize)
    if "return" not in idata.posterior:
        _empty(fig, "no rewards recorded")
        return fig
    ax = fig.add_subplot()
    r = _per_episode(idata.posterior["return"]).astype(np.float64)
    ax.hist(r, bins=min(40, max(5, r.size // 10)), density=True, color="C0", alpha=0.6)
    if np.ptp(r) > 0 and np.unique(r).size > 5:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ArviZ 0.23 uses an API matplotlib 3.11 deprecates
            az.plot_kde(r, ax=ax, plot_kwargs={"color": "C0"})
        ax.tick_params(labelsize="medium")
    ax.axvline(r.mean(), color="C3", linestyle="--", label=f"mean {r.mean():.4g}, sd {r.std():.3g}")
    ax.set_xlabel("return sum_t r_t")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    _suptitle(fig, f"returns of {r.size} episodes", idata)
    return fig


def _weights_histogram(ax, stats, lw: np.ndarray) -> None:
    """Left panel of :func:`plot_weights`: the distribution of log w with the ELBO and IS lines."""
    finite = lw[np.isfinite(lw)]
    ax.ticklabel_format(axis="x", useOffset=False)  # absolute nats, never "+4.58" on the axis
    if _all_equal(finite):
        value = float(finite.mean())
        ax.bar([value], [finite.size], width=0.08, color="C0", alpha=0.6)
        ax.set_xlim(value - 1.0, value + 1.0)
        ax.set_ylim(0, 1.7 * finite.size)
        ax.text(
            0.03,
            0.97,
            f"all weights equal (k-hat -inf):\n{finite.size} within {np.ptp(finite):.0e} nats (float rounding)",
            transform=ax.transAxes,
            va="top",
            fontsize="small",
        )
    elif finite.size:
        ax.hist(finite, bins=min(40, max(5, finite.size // 10)), color="C0", alpha=0.6)
    else:
        ax.text(0.5, 0.5, "no finite log weight", ha="center", transform=ax.transAxes)
    if finite.size < lw.size:
        ax.set_title(f"{lw.size - finite.size} episodes with log w = -inf not shown", fontsize="small")
    unreliable = " (k-hat > 0.7: unreliable)" if _scalar(stats, "pareto_k") > 0.7 else ""
    for name, color, style, label in (
        ("elbo", "C2", "--", "ELBO"),
        ("log_evidence", "C3", ":", "IS log p(O)"),
    ):
        value = _scalar(stats, name)
        if math.isfinite(value):
            suffix = unreliable if name == "log_evidence" else ""
            ax.axvline(value, color=color, linestyle=style, linewidth=2, label=f"{label} {value:.4g}{suffix}")
    ax.set_xlabel("log w (nats)")
    ax.set_ylabel("episodes")
    ax.legend(fontsize="small", loc="lower right" if _all_equal(finite) else "best")


def _weights_ranked(ax, stats, lw: np.ndarray) -> None:
    """Middle panel of :func:`plot_weights`: normalized weights by rank, raw and smoothed, log-log."""
    n = lw.size
    smallest = 1.0 / n
    for values, label, color in (
        (lw, "raw", "C0"),
        (_per_episode(stats["psis_log_weight"]), "PSIS-smoothed", "C1"),
    ):
        if np.isfinite(values).any():
            w = np.exp(values - values.max())
            w = np.sort(w / w.sum())[::-1]
            ax.plot(np.arange(1, n + 1), w, marker=".", markersize=3, color=color, label=label)
            if (w > 0).any():
                smallest = min(smallest, float(w[w > 0].min()))
    ax.axhline(1.0 / n, color="grey", linestyle=":", label="1/N (equal weights)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # limits from the data, not log-scale margins (which ran to 1e9 with one dominant weight)
    low = max(smallest / 2, 1e-300)
    ax.set_ylim(low, 1.5)
    ax.set_xlim(0.8, 1.25 * n)
    if math.log10(1.5 / low) >= 2:  # enough decades for labelled major ticks: drop minor labels
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("rank")
    ax.set_ylabel("normalized weight w_i / sum w")
    ax.legend(fontsize="small", loc="lower left")
    k = _scalar(stats, "pareto_k")
    if k == -math.inf:
        verdict = "-inf: all weights equal"
    else:
        verdict = f"{k:.2f} ({'good' if k < 0.5 else 'ok' if k < 0.7 else 'unreliable'})"
    ax.set_title(f"PSIS k-hat {verdict}, ESS {_scalar(stats, 'ess'):.1f} of {n}", fontsize="medium")


def plot_weights(idata: az.InferenceData, *, figsize=(13, 4)) -> Figure:
    """The importance weights log w = log p(tau, O) - log q(tau) of eq. (2), three panels.

    Left: the distribution of log w (nats, no axis offset), with the ELBO (their mean) and the IS
    estimate of log p(O) (their log-mean-exp): the distance between the two lines is a stochastic
    view of the gap KL(q || p(tau | O)). When every weight is equal to float rounding (q is the
    posterior), a single bar and a note "all weights equal (k-hat -inf)".
    Middle: the normalized weights w_i / sum w, raw and Pareto-smoothed, sorted, log-log, against
    1/N, titled with k-hat and Kish's ESS; the y range is [smallest positive weight / 2, 1.5].
    Right: the cumulative log-weight contributions by time step: the standard deviation over
    episodes of the sum of the terms of log w booked at steps 0..t (``log_weight_step``). At the
    last step it is sd(log w) without discounting (with it, the spread of the undiscounted sum,
    whose death-time mixture log w is). Before it, a partial sum lacks the soft value of the rest of the
    episode, so the curve is not zero even for the exact posterior: it shows how the spread of
    log w accumulates along the episode, not where q and p(tau | O) differ.
    """
    stats = idata.sample_stats
    fig = _figure(figsize)
    left, middle, right = fig.subplots(1, 3)
    lw = _per_episode(stats["log_weight"])
    _weights_histogram(left, stats, lw)
    _weights_ranked(middle, stats, lw)
    steps = _per_episode(stats["log_weight_step"])
    with np.errstate(invalid="ignore"):
        spread = np.nanstd(np.where(np.isfinite(steps), steps, np.nan).cumsum(axis=1), axis=0)
    times = stats["time"].values
    right.plot(times, spread, color="C4", marker="." if times.size <= 60 else None)
    right.set_ylim(bottom=0)
    right.set_xlabel("time t")
    right.set_ylabel("sd over episodes of the sum of\nthe log w terms of steps 0..t (nats)")
    right.set_title("cumulative log-weight contributions by time step", fontsize="medium")
    _suptitle(fig, "importance weights log p(tau, O) - log q(tau)", idata)
    return fig


def to_arviz_samples(idata: az.InferenceData) -> az.InferenceData:
    """A copy of ``idata``: it already has ArviZ's ``(chain, draw)`` sample dims.

    Kept for code written against the earlier layout (dim ``episode``), which needed this
    conversion before ``az.summary``; pass the ``InferenceData`` to ArviZ as it is instead.
    """
    warnings.warn(
        "to_arviz_samples is no longer needed: to_inference_data returns ArviZ's (chain, draw) layout",
        DeprecationWarning,
        stacklevel=2,
    )
    return idata.copy()


def save_plots(idata: az.InferenceData, out_dir: str | os.PathLike, *, dpi: int = 100) -> dict[str, Path]:
    """Write every plot as ``OUT_DIR/{elbo,actions,states,returns,weights}.png``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    makers = {
        "elbo": plot_elbo,
        "actions": plot_actions,
        "states": plot_states,
        "returns": plot_returns,
        "weights": plot_weights,
    }
    paths = {}
    for name in PLOTS:
        path = out / f"{name}.png"
        makers[name](idata).savefig(path, dpi=dpi)
        paths[name] = path
    return paths


def to_netcdf(idata: az.InferenceData, path: str | os.PathLike) -> Path:
    """Write ``idata`` to a netCDF file (read back with :func:`from_netcdf` or ``arviz.from_netcdf``).

    Atomically, as the run files are: written whole to a temporary file in the same folder, then
    renamed over ``path``, so an interrupted write never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)  # netCDF writers take a file name
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def from_netcdf(path: str | os.PathLike) -> az.InferenceData:
    """Read an ``InferenceData`` written by :func:`to_netcdf` (or ``rlai inspect``'s posterior.nc)."""
    return az.from_netcdf(str(path))
