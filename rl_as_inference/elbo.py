"""``TrajectoryELBO``: the ELBO of the source's eqs. (2) and (10) for trajectory models, with the right gradients.

Pyro's stock ELBOs do not fit trajectories: ``Trace_ELBO`` credits every action
with the whole episode's cost and syncs the GPU at every site; ``TraceGraph_ELBO`` gives exact
reward-to-go credit but is quadratic in the horizon. This loss reads the trace through the site-naming
convention (:mod:`rl_as_inference.models.sites`) instead: it traces the guide, replays the model,
stacks the per-step costs into a ``[T, N]`` tensor, and forms one surrogate in O(T):

    ELBO = E_q[ sum_t gamma^t ( r_t / alpha + log pi(a_t|s_t) - log q(a_t|s_t) ) + gamma^H V(s_H) / alpha ]

(gamma a continuation probability: step t's sites run under ``poutine.scale(gamma**t)``). Every
site is booked through the one site ledger (:mod:`rl_as_inference.ledger`):

- pathwise gradients flow through reparameterized actions and differentiable dynamics;
- every non-reparameterized guide site x_t of step t (discrete actions, all actions with
  ``estimator="score"``, a stochastic transition s_{t+1} whose law depends on a pathwise action)
  adds the score-function term log q(x_t) * (sum_{t' >= t} cost_t' - b_t): reward-to-go credit,
  so a_t is never blamed for costs incurred before it;
- baselines b_t: none, a running average per time step, or a learned state-value baseline
  V(s_t) of the step's own state (never of a later one: the estimate stays unbiased);
- where torch has the analytic KL(q(.|s_t) || pi(.|s_t)) it replaces the Monte-Carlo
  log q - log pi (same expectation, less variance).

No host-device synchronization happens inside the rollout; ``loss`` and ``loss_and_grads`` read
one scalar back at the end, as Pyro's SVI expects.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.trace_messenger import TraceMessenger
from torch.distributions.kl import kl_divergence

from rl_as_inference import distributed as dp
from rl_as_inference.guides import TrajectoryGuide
from rl_as_inference.ledger import FusedSites, check_support_inside, from_traces, without_rsample
from rl_as_inference.models import TrajectoryModel
from rl_as_inference.models.rollout import Trajectory
from rl_as_inference.models.sites import parse_site, sample_sites, state_site

__all__ = ["ELBOTerms", "TrajectoryELBO"]

ESTIMATORS = ("auto", "pathwise", "score")
BASELINES = ("none", "mean", "value")
REDUCTIONS = ("mean", "sum")


class _ScoreFunctionActions(Messenger):
    """Makes the guide's action sites non-reparameterized, forcing score-function gradients."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and parse_site(msg["name"]).role == "action" and msg["fn"].has_rsample:
            msg["fn"] = without_rsample(msg["fn"])


@dataclass
class ELBOTerms:
    """The pieces of one ELBO evaluation (all per episode unless noted).

    Attributes:
        costs: ``[H+1, N]`` cost of each step t: gamma^t (r_t / alpha + log pi - log q (or -KL)) of
            the sites booked at t (:mod:`rl_as_inference.ledger`); row H holds the terminal factor
            gamma^H V(s_H) / alpha and observed sites outside the convention.
        global_cost: scalar cost of sites outside the episodes plate (global latents), summed.
        elbo: the ELBO estimate, reduced over episodes (mean or sum).
        surrogate: a differentiable scalar whose value is -elbo and whose gradient is the ELBO
            gradient estimate (pathwise + score function + the value baseline's regression).
        num_episodes: N.
        trajectory: the model's return value when it is a ``Trajectory``, else None.
    """

    costs: torch.Tensor
    global_cost: torch.Tensor
    elbo: torch.Tensor
    surrogate: torch.Tensor
    num_episodes: int
    trajectory: Trajectory | None


class TrajectoryELBO(ELBO):
    """The trajectory ELBO of the source's eq. (2) (eq. (10) with a uniform prior) as a Pyro loss.

    Use as ``pyro.infer.SVI(model, guide, optim, loss=TrajectoryELBO())``. The model and guide
    follow the site-naming convention (``TrajectoryModel`` / the guides of
    :mod:`rl_as_inference.guides`, or your own Pyro functions).

    Args:
        estimator: ``"auto"`` (default): pathwise for reparameterizable actions when the model's
            env is differentiable (``model.env.differentiable``; models without an ``env``
            attribute are assumed differentiable), score function otherwise; ``"pathwise"``:
            reparameterize every action that can be; ``"score"``: score function for every action.
        baseline: ``"mean"`` (default): an exponential running average of the reward-to-go per
            time step; ``"none"``; ``"value"``: a learned state-value baseline V(s_t, t) (a
            :class:`~rl_as_inference.baselines.ValueBaseline` built from ``model.env``), or pass
            your own module ``(states [H, N, ...], times [H]) -> [H, N]`` (V(s_t, t) for t < H). Baselines only
            reduce variance; every choice is unbiased.
        baseline_decay: decay of the running average (``baseline="mean"``).
        analytic_kl: use torch's analytic KL(q || pi) per action site where it is registered.
        reduction: ``"mean"`` (default): the ELBO of one episode, averaged over the batch, so its
            scale does not depend on N; ``"sum"``: the ELBO of the whole ``episodes`` plate, the
            value Pyro's Trace_ELBO reports.
        value_loss_weight: weight of the value baseline's squared-error loss in the surrogate.
        fused: ``"auto"`` (default): evaluate a ``TrajectoryModel`` with a ``TrajectoryGuide`` in one
            pass (same estimator, same random numbers, a fraction of the overhead) and trace
            anything else; ``False``: always trace the guide and replay the model; ``True``: fuse
            or raise.
        distributed: average the running baseline's batch statistics over the ranks of the
            ``torch.distributed`` process group (data-parallel SVI: every rank then subtracts the
            same baseline, as one process would with all ranks' episodes). ``fit(distributed=True)``
            sets it.
    """

    def __init__(
        self,
        *,
        estimator: str = "auto",
        baseline: str | torch.nn.Module = "mean",
        baseline_decay: float = 0.9,
        analytic_kl: bool = True,
        reduction: str = "mean",
        value_loss_weight: float = 1.0,
        fused: bool | str = "auto",
        distributed: bool = False,
    ):
        super().__init__(num_particles=1)
        if fused not in (True, False, "auto"):
            raise ValueError(f"fused={fused!r} is not allowed; use True, False or 'auto'")
        self.fused = fused
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator={estimator!r} is not allowed; choose one of {ESTIMATORS}")
        if isinstance(baseline, str):
            if baseline not in BASELINES:
                raise ValueError(
                    f"baseline={baseline!r} is not allowed; choose one of {BASELINES} or a module"
                )
            self.value_baseline: torch.nn.Module | None = None
        elif isinstance(baseline, torch.nn.Module):
            self.value_baseline, baseline = baseline, "value"
        else:
            raise TypeError(
                f"baseline must be one of {BASELINES} or a torch.nn.Module, got {type(baseline).__name__}"
            )
        if not 0.0 <= float(baseline_decay) < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not allowed; choose one of {REDUCTIONS}")
        self.estimator, self.baseline = estimator, baseline
        self.baseline_decay = float(baseline_decay)
        self.analytic_kl, self.reduction = bool(analytic_kl), reduction
        self.value_loss_weight = float(value_loss_weight)
        self._running: torch.Tensor | None = None  # running-average baseline per time step
        self._running_weight = 0.0
        # data-parallel SVI: the running baseline averages every rank's batch, so all ranks hold
        # the same baseline (set by fit(distributed=True))
        self.distributed = bool(distributed)
        self._kl_known: dict[tuple[type, type], bool] = {}
        self._support_checked: set[tuple[type, type]] = set()  # (guide fn, model fn) pairs seen
        self.last: ELBOTerms | None = None

    # ------------------------------------------------------------------ state (for checkpoints)
    def state_dict(self) -> dict:
        """The running baseline's state (a learned value baseline lives in Pyro's param store)."""
        return {"running": self._running, "running_weight": self._running_weight}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`, so a resumed run computes the same gradients."""
        self._running, self._running_weight = state["running"], float(state["running_weight"])

    # ------------------------------------------------------------------ Pyro's loss interface
    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO estimate (no gradients)."""
        with torch.no_grad():
            terms = self.terms(model, guide, *args, **kwargs)
        return -self._checked_value(terms)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO estimate; back-propagates the ELBO gradient estimate into the parameters."""
        terms = self.terms(model, guide, *args, **kwargs)
        value = self._checked_value(terms)
        if terms.surrogate.requires_grad:
            terms.surrogate.backward()
        return -value

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A scalar equal to -ELBO whose gradient is the ELBO gradient estimate (for custom loops)."""
        return self.terms(model, guide, *args, **kwargs).surrogate

    # ------------------------------------------------------------------ diagnostics
    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Per-episode log importance weights log p(tau, O) - log q(tau), shape ``[N]``, float64, no gradients.

        With gamma < 1 the death time is marginalized exactly (:meth:`SiteLedger.log_weights`), so
        E_q[w] = p(O): ``logsumexp(w) - log N`` is the importance-sampling estimate of log p(O), and
        mean(log w) a lower bound of it, at least as tight as the ELBO (equal when gamma = 1).
        Every latent site must be inside the episodes plate.
        """
        with torch.no_grad():
            return self._ledger(model, guide, args, kwargs, kl=False)[0].log_weights()

    # ------------------------------------------------------------------ the estimator
    def terms(self, model, guide, *args, **kwargs) -> ELBOTerms:
        """Evaluate the ELBO: costs per time step, the estimate and the surrogate.

        A ``TrajectoryModel`` with a ``TrajectoryGuide`` on the same env is evaluated in one fused
        pass of the shared rollout loop (actions from q, the model's log pi and factors at the same
        time): the same estimator as tracing the guide and replaying the model, with the model's
        dynamics run once and no per-site Pyro overhead. Anything else is traced.
        """
        ledger, trajectory, states = self._ledger(model, guide, args, kwargs, kl=True)
        costs, global_cost = ledger.costs(), ledger.global_cost()
        num_episodes, horizon = ledger.num_episodes, ledger.horizon
        total = costs.sum() + global_cost
        scale = 1.0 / num_episodes if self.reduction == "mean" else 1.0
        elbo = total * scale
        surrogate = -elbo
        if ledger.score_sites:
            score = self._score_term(ledger.score_sites, costs, total, states, model, horizon)
            surrogate = surrogate - (score - score.detach()) * scale
        terms = ELBOTerms(
            costs=costs,
            global_cost=global_cost,
            elbo=elbo,
            surrogate=surrogate,
            num_episodes=num_episodes,
            trajectory=trajectory,
        )
        self.last = terms
        return terms

    def _ledger(self, model, guide, args, kwargs, *, kl: bool):
        """The site ledger of one evaluation, the model's Trajectory (or None) and the states s_0..s_H.

        A ``TrajectoryModel`` with a ``TrajectoryGuide`` on the same env is booked during one fused
        rollout (:class:`~rl_as_inference.ledger.FusedSites`); anything else is traced and booked by
        :func:`~rl_as_inference.ledger.from_traces`. Both book every site by the same rules.
        """
        self._check_estimator(model)
        kl_fn = self._analytic_kl_of if kl else None
        fused = self._fused_call(model, guide, args, kwargs, kl_fn)
        if fused is not None:
            sites, trajectory = fused
            return sites.ledger, trajectory, trajectory.states
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        ledger = from_traces(model_trace, guide_trace, kl=kl_fn)
        ret = model_trace.nodes.get("_RETURN", {}).get("value")
        trajectory = ret if isinstance(ret, Trajectory) else None
        return ledger, trajectory, _trace_states(guide_trace)

    def _fused_call(self, model, guide, args, kwargs, kl_fn):
        """Run model and guide in one pass when their structure is known; None when it is not."""
        if self.fused is False or not (
            isinstance(model, TrajectoryModel) and isinstance(guide, TrajectoryGuide)
        ):
            return self._require_unfused("model and guide are not a TrajectoryModel and a TrajectoryGuide")
        if model.env is not guide.env or model.horizon != guide.horizon:
            return self._require_unfused("model and guide differ in env or horizon")
        if not all(isinstance(h, TraceMessenger) and h.param_only for h in _PYRO_STACK):
            return self._require_unfused("Pyro handlers other than SVI's parameter capture are active")
        names = ("num_episodes", "init_state")
        if len(args) > 2 or set(kwargs) - set(names[len(args) :]):
            return self._require_unfused("the arguments are not (num_episodes, init_state=None)")
        call = dict(zip(names, args, strict=False)) | kwargs
        sites = FusedSites(
            model.action_dist,
            kl=kl_fn,
            score_actions=self._use_score_for_actions(model),
            support_checked=self._support_checked,
        )
        guide.register()
        trajectory = guide.rollout(
            call["num_episodes"], call.get("init_state"), optimality=model.optimality, sites=sites
        )
        return sites, trajectory

    def _require_unfused(self, why: str):
        if self.fused is True:
            raise ValueError(f"fused=True but {why}; use fused='auto' to fall back to tracing")
        return None

    def _score_term(self, score_sites, costs, total, states, model, horizon) -> torch.Tensor:
        """Sum over non-reparameterized sites of log q(x_t) * (reward-to-go_t - b_t), detached weights.

        Score sites sit at rows 0..H-1 (the ledger books s_{t+1} at row t), so a baseline of row t
        is a function of s_t and the past only: unbiased for every site of the row.
        """
        to_go = costs.detach().flip(0).cumsum(0).flip(0)  # [R, N]: costs at rows >= t
        advantage = to_go
        value_loss = None
        if self.baseline == "mean":
            advantage = to_go - self._running_mean(to_go.mean(1))[:, None]
        elif self.baseline == "value":
            values = self._values(states, model, horizon, to_go[:horizon])
            advantage = to_go[:horizon] - values.detach()
            value_loss = self.value_loss_weight * (values - to_go[:horizon]).square().mean()
        score = torch.zeros((), dtype=costs.dtype, device=costs.device)
        for _, row, log_q in score_sites:
            weight = total.detach() if row is None else advantage[row]
            score = score + (log_q * weight).sum()
        if value_loss is not None:
            # Rides on the surrogate with zero value: only its gradient (regression of V) matters.
            score = score - (value_loss - value_loss.detach()) * costs.shape[1]
        return score

    def _running_mean(self, batch_mean: torch.Tensor) -> torch.Tensor:
        """Bias-corrected exponential average of previous batches (the current batch is not used: unbiased)."""
        if self._running is None or self._running.shape != batch_mean.shape:
            self._running = torch.zeros_like(batch_mean)
            self._running_weight = 0.0
        previous = (
            self._running / self._running_weight if self._running_weight > 0 else torch.zeros_like(batch_mean)
        )
        if self.distributed:
            batch_mean = dp.all_reduce_mean(batch_mean)
        d = self.baseline_decay
        self._running = d * self._running + (1 - d) * batch_mean
        self._running_weight = d * self._running_weight + (1 - d)
        return previous

    def _values(self, states, model, horizon: int, to_go: torch.Tensor) -> torch.Tensor:
        if self.value_baseline is None:
            env = getattr(model, "env", None)
            if env is None:
                raise ValueError(
                    "baseline='value' needs model.env to build a ValueBaseline; pass baseline=YourModule(...)"
                )
            from rl_as_inference.baselines import ValueBaseline

            # Built lazily, so keep the global RNG untouched: a run resumed from a checkpoint (where
            # the network is rebuilt mid-run) must draw the same random numbers as an uninterrupted one.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.value_baseline = ValueBaseline(env, horizon=horizon)
        # update_module_params: after a checkpoint is loaded the store holds the trained values.
        pyro.module("value_baseline", self.value_baseline, update_module_params=True)
        # Score sites sit at rows 0..H-1: row t is baselined by V(s_t, t).
        if states is None or len(states) < horizon:
            raise ValueError(
                f"baseline='value' needs the states s_0..s_{horizon - 1}: a guide returning a Trajectory, "
                "or state sites s_t in the guide"
            )
        times = torch.arange(horizon, device=states.device)
        values = self.value_baseline(states[:horizon].detach(), times)
        if values.shape != to_go.shape:
            raise ValueError(
                f"the value baseline returned shape {tuple(values.shape)}, expected {tuple(to_go.shape)}"
            )
        return values.to(to_go.dtype)

    def _analytic_kl_of(self, q, p) -> torch.Tensor | None:
        """KL(q || p) per batch element where torch has it in closed form (cached per type pair)."""
        if not self.analytic_kl:
            return None
        key = (type(q), type(p))
        if self._kl_known.get(key) is False:
            return None
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            self._kl_known[key] = False
            return None
        self._kl_known[key] = True
        return kl if kl.shape == q.batch_shape else None

    # ------------------------------------------------------------------ traces and checks
    def _get_trace(self, model, guide, args, kwargs):
        """Pyro's ELBO hook: the (model, guide) trace pair this loss evaluates."""
        return self._traces(model, guide, args, kwargs)

    def _traces(self, model, guide, args, kwargs):
        if self._use_score_for_actions(model):
            guide = _ScoreFunctionActions()(guide)
        with _naming_invalid_sites("guide"):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        with _naming_invalid_sites("model"):
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        for name, site in sample_sites(model_trace, latent_only=True):
            if name not in guide_trace.nodes:
                raise ValueError(
                    f"the guide has no site {name!r}, a latent site of the model: every action (and "
                    "stochastic transition) site of the model must be sampled in the guide"
                )
            check_support_inside(name, guide_trace.nodes[name]["fn"], site["fn"], self._support_checked)
        return model_trace, guide_trace

    def _check_estimator(self, model) -> None:
        env = getattr(model, "env", None)
        if self.estimator == "pathwise" and env is not None and not getattr(env, "differentiable", True):
            raise ValueError(
                f"estimator='pathwise' but {getattr(env, 'name', type(env).__name__)} is not pathwise-"
                "differentiable (env.differentiable is False): gradients through its dynamics would miss "
                "the jumps of its rewards or termination; use estimator='auto' or 'score'"
            )

    def _use_score_for_actions(self, model) -> bool:
        if self.estimator == "score":
            return True
        if self.estimator == "pathwise":
            return False
        env = getattr(model, "env", None)
        return env is not None and not getattr(env, "differentiable", True)

    def _checked_value(self, terms: ELBOTerms) -> float:
        value = terms.elbo.item()  # the one host read of the step
        if math.isnan(value):
            bad = torch.isnan(terms.costs).any(1).nonzero()
            if len(bad):
                t = int(bad[0, 0])
                raise ValueError(
                    f"the ELBO is NaN: the cost of step {t} is NaN (site O_{t}: a NaN reward r_{t}, or a NaN "
                    f"log-probability of a_{t}/s_{t}); check the environment and the policy at step {t}"
                )
            raise ValueError("the ELBO is NaN: a global latent site has a NaN log-probability")
        if value == math.inf:  # no finite reward or log-density gives +inf (-inf: an impossible episode)
            bad = (terms.costs == math.inf).any(1).nonzero()
            where = (
                f": the cost of step {int(bad[0, 0])} is +inf (site O_{int(bad[0, 0])})" if len(bad) else ""
            )
            raise ValueError(f"the ELBO is +inf{where}; a reward or log-factor is infinite")
        return value


@contextlib.contextmanager
def _naming_invalid_sites(program: str) -> Iterator[None]:
    """Re-raise the ValueError of Pyro's argument validation (a NaN factor, NaN logits) naming the
    site and its step: Pyro's own message names only the distribution's parameter, in many lines."""
    try:
        yield
    except ValueError as exc:
        if not str(exc).startswith("Expected parameter"):
            raise
        name = _site_being_created(exc.__traceback__)
        if name is None:
            raise
        info = parse_site(name)
        step = f" (step {info.time})" if info.time is not None else ""
        first = str(exc).splitlines()[0].rstrip(":")
        what = "a NaN or infinite log-factor" if "log_factor" in first else first
        raise ValueError(
            f"the {program}'s site {name!r}{step} got {what}; check what it computes at that step"
        ) from None


def _site_being_created(tb) -> str | None:
    """The ``name`` argument of the innermost ``pyro.sample``/``pyro.factor`` call on the traceback."""
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name in ("sample", "factor") and frame.f_code.co_filename.endswith(
            os.path.join("pyro", "primitives.py")
        ):
            found = frame.f_locals.get("name", found)
        tb = tb.tb_next
    return found if isinstance(found, str) else None


def _trace_states(guide_trace) -> torch.Tensor | None:
    """States s_0..s_H of a traced guide: its returned Trajectory, else its s_t sites (None if absent)."""
    returned = guide_trace.nodes.get("_RETURN", {}).get("value")
    if isinstance(returned, Trajectory):
        return returned.states
    states = []
    for t in range(len(guide_trace.nodes)):
        site = guide_trace.nodes.get(state_site(t))
        if site is None:
            break
        states.append(site["value"])
    return torch.stack(states) if states else None
