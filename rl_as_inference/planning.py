"""Planning as inference: model-predictive control on a functional env's known dynamics.

At every control step the planner infers the posterior over the next H actions given optimality,

    p(a_{0:H} | s, O)  proportional to  prod_t pi(a_t | s_t) exp( (sum_{t<H} gamma^t r_t + gamma^H V(s_H)) / alpha ),

with the states s_t rolled out from s by the env's own pure ``step`` (the trajectory model's
dynamics; no terminal value V unless one is given, and nothing after a termination), acts with
the plan's first action, shifts the plan one step and repeats. Here gamma discounts the rewards
of the plan (a planner's usual discount; 1 by default), and pi is a :class:`~rl_as_inference.models.Prior`
(uniform on a bounded box or over discrete actions, Gaussian otherwise, or any prior the
trajectory models take).

Methods (``method=``):

- ``"mppi"``: importance sampling with the current plan as proposal q, a Gaussian per step and
  action coordinate (truncated to a bounded action box, so every sample is a valid action and
  q's density is exact) or a categorical per step. The log weights are

      log w_k = R_k / alpha + sum_t log pi(a_{k,t} | s_{k,t}) - sum_t log q(a_{k,t}),

  self-normalized over the K samples; the new plan is the weighted mean of the samples (Box) or
  the weighted frequencies of each step's actions (Discrete). MPPI's update (Williams et al.
  2017) is this estimator with a Gaussian prior on the proposal's noise.
- ``"cem"``: the cross-entropy method, the elite fraction of the samples by R / alpha + log pi,
  refitting the proposal's mean and scale (or probabilities) to them.
- ``"svi"``: the variational form: Adam steps on the plan's parameters (per step mean and log
  scale, or probabilities) ascending the ELBO E_q[R / alpha + log pi - log q], pathwise through
  a differentiable env, by the score function otherwise.
- ``"smc"``: sequential Monte Carlo over the horizon (Piché et al. 2019): particles weighted step
  by step and resampled where their ESS falls below half, so partial plans that are already
  poor stop being extended.

The temperature is ``alpha`` fixed, or, with ``target_ess`` (a fraction of K), chosen at every
step and for every env by bisection on log alpha so that the Kish effective sample size of the
weights, (sum w)^2 / sum w^2, is ``target_ess * K`` (as near as the weights allow): the knob an
importance sampler is tuned by, in place of MPPI's hand-set lambda. Each step's ESS and alpha
stay on the device (no host sync per step) and are read with :meth:`MPC.diagnostics`, with the
log weights themselves where ``record=True`` (their PSIS k-hat:
:func:`rl_as_inference.diagnostics.pareto_k_per_step`).

Everything is batched over E envs at once (the state ``[E, ...]``) and over the K samples
(``[K, E, ...]`` through the env), on the env's device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from rl_as_inference import models
from rl_as_inference.envs import FunctionalEnv, Step
from rl_as_inference.envs.base import stream_from

__all__ = ["METHODS", "MPC", "kish_ess", "temperature_for_ess"]

METHODS = ("mppi", "cem", "svi", "smc")
# bisection on log alpha: a 28-nat bracket halved 24 times is narrower than 2e-6 nats (a grid
# of points per round took fewer operations for one env but far more work for many)
_BISECTION_STEPS = 24


def kish_ess(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """(sum w)^2 / sum w^2 of unnormalized log weights along ``dim`` (Kish's effective sample size)."""
    return torch.exp(2 * torch.logsumexp(log_weights, dim) - torch.logsumexp(2 * log_weights, dim))


def temperature_for_ess(returns: torch.Tensor, log_ratio: torch.Tensor, target: float) -> torch.Tensor:
    """alpha per column such that ``kish_ess(returns / alpha + log_ratio)`` is ``target`` samples.

    Bisection on log alpha over ``[log spread - 14, log spread + 14]`` (spread: each column's range
    of returns), a fixed number of halvings, all on the device (no host sync). Where
    ``log_ratio`` is zero (q is pi, as with ``prior="plan"``) the ESS grows with alpha from 1 to
    K and every target is reached. Otherwise, as alpha grows the ESS rises from 1 and then tends
    to the ESS of ``log_ratio`` alone, which can be far lower (a uniform prior against a narrow
    plan: a few samples of 1000); a target above what a column reaches ends at the bracket's top,
    weights near pi / q, and the plan wanders (on Pendulum-v1 with the uniform prior, target 0.05
    of K = 1000 scored -1207 against -145 at alpha 0.1): target an ESS with ``prior="plan"``.

    Args:
        returns: ``[K, E]`` discounted returns of K samples for each of E envs.
        log_ratio: ``[K, E]`` log pi - log q of the samples (zeros when q is the prior).
        target: the wanted ESS, in samples (1 <= target <= K).

    Returns:
        ``[E]`` temperatures.
    """
    spread = (returns.amax(0) - returns.amin(0)).clamp_min(1e-12)
    low, high = spread.log() - 14.0, spread.log() + 14.0  # [E]
    # env-major, samples last: the reductions over K then run along contiguous memory
    r, lr = returns.T.contiguous(), log_ratio.T.contiguous()  # [E, K]
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        too_few = kish_ess(r * (-mid).exp()[:, None] + lr, dim=-1) < target
        low = torch.where(too_few, mid, low)  # too few effective samples: alpha must grow
        high = torch.where(too_few, high, mid)
    return ((low + high) / 2).exp()


def _standard_normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def _truncated_normal_sample(loc, scale, low, high, shape, generator):
    """Samples of Normal(loc, scale) restricted to [low, high], by inverting its CDF, and their
    log densities (both ``shape``).

    The inverse is sqrt(2) erfinv(2p - 1) (several times faster than ``torch.special.ndtri`` here),
    with p kept a machine epsilon away from 0 and 1 so that it stays finite, and so do its
    gradients in loc and scale (``"svi"`` differentiates through the draw). The density comes
    from the draw itself: with e = erfinv(2p - 1) the standardized value is sqrt(2) e, so

        log q(x) = -e^2 - log scale - log(2 pi) / 2 - log(Phi(b) - Phi(a)),

    one pass over the samples where evaluating the Normal's density at x took several (and was
    about a quarter of a 1,024-env Pendulum command)."""
    a = _standard_normal_cdf((low - loc) / scale)
    b = _standard_normal_cdf((high - loc) / scale)
    u = torch.rand(shape, generator=generator, device=loc.device, dtype=loc.dtype)
    eps = torch.finfo(loc.dtype).eps
    # 2p - 1 for p = a + u (b - a), in one fused multiply-add over the samples
    e = torch.erfinv(torch.addcmul(2 * a - 1, u, 2 * (b - a)).clamp(2 * eps - 1, 1 - 2 * eps))
    x = torch.addcmul(loc, e, math.sqrt(2.0) * scale).clamp(low, high)
    log_norm = scale.log() + 0.5 * math.log(2 * math.pi) + (b - a).clamp_min(1e-30).log()
    return x, -(e * e) - log_norm


def _truncated_normal_log_prob(x, loc, scale, low, high):
    normal = torch.distributions.Normal(loc, scale)
    mass = (normal.cdf(high) - normal.cdf(low)).clamp_min(1e-30)
    return normal.log_prob(x) - mass.log()


class MPC:
    """A model-predictive controller that plans by inference on ``env``'s dynamics.

    Args:
        env: a :class:`~rl_as_inference.envs.FunctionalEnv` (a torch port, a user's env, a
            finite MDP) whose ``step`` the planner rolls out, or a trajectory model (a
            ``TrajectoryModel``, or a Pyro function following :mod:`rl_as_inference.models.sites`
            called as ``model(num_episodes, init_state)``, with its functional env at
            ``model.env``); Box or Discrete actions.
        method: ``"mppi"``, ``"cem"``, ``"svi"`` or ``"smc"`` (see the module docstring).
        horizon: H >= 1, the actions planned ahead.
        num_samples: K >= 2 sampled plans per env and iteration.
        alpha: the fixed temperature (reward units), unless ``target_ess`` is given.
        target_ess: a fraction in (0, 1]: alpha is set every step so that the weights' ESS is
            ``target_ess * K``.
        prior: pi, a :class:`~rl_as_inference.models.Prior`; default uniform (Discrete or a
            bounded Box), ``GaussianPrior(1.0)`` for an unbounded Box. ``"plan"``: the current
            plan itself (the proposal), so each round is the KL-regularized step
            q_new proportional to q exp(R / alpha) (the source's eq. 7 with pi_k the last plan, a mirror-descent
            step), whose weights are exp(R / alpha) alone: MPPI's usual weights, and the form in
            which ``target_ess`` tunes how far one step may move.
        noise_std: the proposal's initial scale per action coordinate (Box), in action units;
            default half of the box's width (1 for an unbounded box). ``"mppi"`` keeps it,
            ``"cem"`` refits it each iteration (not below ``min_std``).
        iterations: inference rounds per control step (each proposes from the last one's plan).
        elite_fraction: ``"cem"``'s share of samples it refits to.
        gamma: the discount of the plan's rewards, in (0, 1].
        terminal_value: V(s_H) in reward units, a callable of ``[K, E, ...]`` states returning
            ``[K, E]`` (a trained critic's value, say); None: 0.
        min_std: floor of the scale ``"cem"`` refits and ``"svi"`` learns.
        lr: ``"svi"``'s Adam learning rate on the plan's mean (action units) and log scale.
        proposal: ``"plan"`` (the open-loop plan, warm-started) or ``"prior"`` (``"mppi"`` only):
            every sampled plan draws a_t ~ pi(.|s_t) along its own rollout, closed loop, so a
            trained policy as ``PolicyPrior`` is the proposal and the weights are exp(R / alpha);
            the first action is their weighted mean (Box) or most weighted (Discrete).
        seed: seeds the planner's own generator (None: drawn from torch's global stream).
        record: keep every control step's log weights (:meth:`diagnostics`), for PSIS k-hat.
        compile: run the rollout of the sampled plans (H env steps and the returns) as one
            ``torch.compile``'d function, which fuses the env's elementwise operations into a few
            kernels: on a deterministic env with the uniform prior (the path every ``"mppi"``,
            ``"cem"`` and ``"svi"`` control step takes). The first control step pays the
            compilation (0.6-9.9 s measured for Pendulum-v1 on a 2-CPU VM); the plans and actions are
            those of the eager rollout to rounding.
    """

    def __init__(
        self,
        env: FunctionalEnv | Callable,
        method: str = "mppi",
        *,
        horizon: int = 15,
        num_samples: int = 1000,
        alpha: float = 1.0,
        target_ess: float | None = None,
        prior: models.Prior | str | None = None,
        noise_std: float | None = None,
        iterations: int = 1,
        elite_fraction: float = 0.1,
        gamma: float = 1.0,
        terminal_value: Callable[[torch.Tensor], torch.Tensor] | None = None,
        min_std: float = 1e-3,
        lr: float = 0.1,
        proposal: str = "plan",
        seed: int | None = None,
        record: bool = False,
        compile: bool = False,
    ):
        self.model = None
        if not isinstance(env, FunctionalEnv):
            if not callable(env):
                raise TypeError(
                    "MPC plans on a functional env (rl_as_inference.envs.make(ID)) or a trajectory model "
                    f"(a callable model(num_episodes, init_state)), got {type(env).__name__}"
                )
            self.model = env
            model_env = getattr(env, "env", None)
            if not isinstance(model_env, FunctionalEnv):
                raise TypeError(
                    f"{env!r} has no functional env at .env: a custom trajectory model needs one there "
                    "(for its action space, state layout and device)"
                )
            env = model_env
            if prior is None:
                prior = getattr(self.model, "prior", None)
        if method not in METHODS:
            raise ValueError(
                f"method={method!r} is not available; use one of {', '.join(map(repr, METHODS))}"
            )
        self.env, self.method = env, method
        self.horizon = _check_int("horizon", horizon, 1)
        self.num_samples = _check_int("num_samples", num_samples, 2)
        self.iterations = _check_int("iterations", iterations, 1)
        if target_ess is None:
            if isinstance(alpha, bool) or not (isinstance(alpha, int | float) and 0 < alpha < math.inf):
                raise ValueError(f"alpha={alpha!r} is not allowed; use a positive finite number")
        elif isinstance(target_ess, bool) or not (
            isinstance(target_ess, int | float) and 0 < target_ess <= 1
        ):
            raise ValueError(
                f"target_ess={target_ess!r} is not allowed; use a fraction in (0, 1] of num_samples"
            )
        if not (isinstance(gamma, int | float) and 0 < gamma <= 1):
            raise ValueError(f"gamma={gamma!r} is not allowed; use a number in (0, 1]")
        if not 0 < elite_fraction <= 1 or int(elite_fraction * num_samples) < 1:
            raise ValueError(
                f"elite_fraction={elite_fraction!r} is not allowed with num_samples={num_samples}: use a "
                "fraction in (0, 1] that keeps at least one sample"
            )
        if proposal not in ("plan", "prior"):
            raise ValueError(f"proposal={proposal!r} is not allowed; use 'plan' or 'prior'")
        if proposal == "prior" and (method != "mppi" or not isinstance(env, FunctionalEnv)):
            raise ValueError(
                "proposal='prior' samples the prior along an env's rollouts: use method='mppi' on an env"
            )
        self.proposal = proposal
        if not (isinstance(lr, int | float) and 0 < lr < math.inf):
            raise ValueError(f"lr={lr!r} is not allowed; use a positive finite number")
        self.lr = float(lr)
        self.alpha, self.target_ess = float(alpha), target_ess
        self.gamma, self.terminal_value = float(gamma), terminal_value
        self.elite_fraction, self.min_std, self.record = float(elite_fraction), float(min_std), record
        space = env.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        device, dtype = env.device, env.dtype
        if self.discrete:
            self.num_actions = int(space.n)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            self.bounded = bool(space.is_bounded())
            self.low = torch.as_tensor(space.low, device=device, dtype=dtype)
            self.high = torch.as_tensor(space.high, device=device, dtype=dtype)
            if noise_std is None:
                init = (self.high - self.low) / 2 if self.bounded else torch.ones_like(self.low)
            else:
                if not (isinstance(noise_std, int | float) and 0 < noise_std < math.inf):
                    raise ValueError(f"noise_std={noise_std!r} is not allowed; use a positive finite number")
                init = torch.full_like(self.low, float(noise_std))
            self.init_std = init
            self.center = (self.high + self.low) / 2 if self.bounded else torch.zeros_like(self.low)
        else:
            raise TypeError(f"MPC plans Discrete and 1-D Box actions, got {space}")
        self.prior_is_plan = isinstance(prior, str) and prior == "plan"
        if isinstance(prior, str) and not self.prior_is_plan:
            raise ValueError(f"prior={prior!r} is not allowed; use a models.Prior, 'plan' or None")
        if self.prior_is_plan and self.model is not None:
            raise ValueError("prior='plan' plans on an env; a trajectory model brings its own prior")
        if prior is None or self.prior_is_plan:
            prior = models.UniformPrior(space) if self.discrete or self.bounded else models.GaussianPrior(1.0)
        prior.check(env)
        self.prior = prior
        self._uniform_log_density: float | None = None
        if isinstance(prior, models.UniformPrior):
            if self.discrete:
                self._uniform_log_density = -math.log(self.num_actions)
            else:
                self._uniform_log_density = -float(torch.log(self.high - self.low).sum())
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(torch.randint(0, 2**62, (1,))) if seed is None else int(seed))
        self._returns_fn = _returns_of_plans
        if compile:
            if env.stochastic or self.model is not None or self._uniform_log_density is None:
                raise ValueError(
                    "compile=True compiles the rollout of a deterministic functional env under the uniform "
                    f"prior; {env.name} {'is stochastic' if env.stochastic else 'has another prior or a model'}: "
                    "use compile=False"
                )
            self._returns_fn = _compiled_returns_of_plans()
        self._plan: dict[str, torch.Tensor] | None = None
        self._history: dict[str, list[torch.Tensor]] = {"ess": [], "alpha": [], "log_weights": []}
        self.last_first_action_probs: torch.Tensor | None = None

    # ------------------------------------------------------------------ the plan
    def reset(self, state: torch.Tensor | None = None) -> None:
        """Forget the plan (the next :meth:`act` starts from the prior) and the diagnostics.

        ``state`` (optional) only fixes the batch of envs now; otherwise the first ``act`` does."""
        self._plan = None
        self._history = {"ess": [], "alpha": [], "log_weights": []}
        if state is not None:
            self._fresh_plan(self._batch(state))

    def _batch(self, state: torch.Tensor) -> int:
        self.env.check_state(state)
        event = len(self.env.state_shape)
        if state.dim() != event + 1:
            raise ValueError(
                f"state has shape {tuple(state.shape)}; MPC.act takes a batch of E states, "
                f"[E{', ' if event else ''}{', '.join(map(str, self.env.state_shape))}]"
            )
        return state.shape[0]

    def _fresh_plan(self, num_envs: int) -> None:
        h, device, dtype = self.horizon, self.env.device, self.env.dtype
        if self.discrete:
            probs = torch.full(
                (num_envs, h, self.num_actions), 1.0 / self.num_actions, device=device, dtype=dtype
            )
            self._plan = {"probs": probs}
        else:
            self._plan = {
                "loc": self.center.expand(num_envs, h, -1).clone(),
                "scale": self.init_std.expand(num_envs, h, -1).clone(),
            }

    def _shift(self) -> None:
        """Warm start: the plan moves one step ahead; its new last step starts from the prior's."""
        fresh = (
            {"probs": 1.0 / self.num_actions}
            if self.discrete
            else {"loc": self.center, "scale": self.init_std}
        )
        for key, value in self._plan.items():
            value[:, :-1] = value[:, 1:].clone()
            value[:, -1] = fresh[key]

    # ------------------------------------------------------------------ one round of inference
    def _propose(self, num_envs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K plans ``[K, E, H(, d)]`` from the current plan and their log q per step ``[K, E, H]``
        (Box samples and densities are differentiable in its loc and scale: the inverse-CDF draw
        of a truncated normal, or loc + scale * noise)."""
        k, plan = self.num_samples, self._plan
        if self.discrete:
            flat = plan["probs"].detach().reshape(-1, self.num_actions)
            draws = torch.multinomial(flat, k, replacement=True, generator=self.generator)  # [E H, K]
            actions = draws.T.reshape(k, num_envs, self.horizon)
            return actions, self._log_q_per_step(actions)
        loc, scale = plan["loc"], plan["scale"]
        shape = (k, *loc.shape)
        if self.bounded:
            actions, log_q = _truncated_normal_sample(loc, scale, self.low, self.high, shape, self.generator)
            return actions, log_q.sum(-1)
        noise = torch.randn(shape, generator=self.generator, device=loc.device, dtype=loc.dtype)
        log_q = -0.5 * noise.square() - scale.log() - 0.5 * math.log(2 * math.pi)
        return loc + scale * noise, log_q.sum(-1)

    def _log_q_per_step(self, actions: torch.Tensor) -> torch.Tensor:
        """log q_t(a_t) of each step of K plans under the current plan, ``[K, E, H]``."""
        plan, k = self._plan, actions.shape[0]
        if self.discrete:
            log_probs = plan["probs"].log().unsqueeze(0).expand(k, -1, -1, -1)
            return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        loc, scale = plan["loc"], plan["scale"]
        if self.bounded:
            return _truncated_normal_log_prob(actions, loc, scale, self.low, self.high).sum(-1)
        return torch.distributions.Normal(loc, scale).log_prob(actions).sum(-1)

    def _log_q(self, actions: torch.Tensor) -> torch.Tensor:
        """log q of K whole plans, ``[K, E]``."""
        return self._log_q_per_step(actions).sum(-1)

    def _log_prior_at(self, t: int, s: torch.Tensor, a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """log pi(a_t | s_t), ``like``'s shape and dtype: a uniform prior's is one constant (the
        samples lie in the box or are valid discrete actions), not a density evaluation."""
        if self._uniform_log_density is not None:
            return torch.full_like(like, self._uniform_log_density)
        return self.prior.dist_at(t, s, self.env).log_prob(a).to(like.dtype)

    def _rollout(
        self, state: torch.Tensor, actions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K rollouts per env of ``actions`` ``[K, E, H(, d)]``, or, with None, of actions drawn from
        pi(.|s_t) at the states each rollout reaches (``proposal="prior"``): the actions, the
        discounted returns (plus gamma^H V(s_H)) and sum_t log pi, ``[K, E]`` each."""
        env, k = self.env, self.num_samples
        s = state.unsqueeze(0).expand(k, *state.shape)
        if actions is not None and self._uniform_log_density is not None and not env.stochastic:
            per_step = actions.movedim(2, 0)  # [H, K, E, ...]: each step's actions are one slab
            per_step = per_step if self.discrete else per_step.contiguous()
            returns, s, alive, discount = self._returns_fn(env, s, per_step, self.horizon, self.gamma)
            log_prior = torch.full_like(returns, self.horizon * self._uniform_log_density)
            return self._finish_rollout(actions, returns, log_prior, s, alive, discount)
        returns = torch.zeros(k, state.shape[0], device=state.device, dtype=env.dtype)
        log_prior = torch.zeros_like(returns)
        # a differentiable env never terminates (its contract), so it needs no survival mask
        alive = None if env.differentiable else torch.ones_like(returns)
        discount, taken = 1.0, []
        if actions is not None:
            per_step = actions.movedim(2, 0)  # [H, K, E, ...]: each step's actions are one slab
            if not self.discrete:
                per_step = per_step.contiguous()
        # a prior's distributions draw from torch's stream only: forked and seeded from the
        # planner's generator, so a seeded planner repeats (one read of the seed per control step)
        drawing = stream_from(self.generator, state.device) if actions is None else contextlib.nullcontext()
        with drawing:
            for t in range(self.horizon):
                if actions is None:
                    d = self.prior.dist_at(t, s, env)
                    a = d.sample()
                    log_prior = log_prior + d.log_prob(a).to(returns.dtype)
                    taken.append(a)
                else:
                    a = per_step[t]
                    if self._uniform_log_density is None:
                        log_prior = log_prior + self._log_prior_at(t, s, a, returns)
                # the state was checked by act and the actions are drawn in the env's space, so the
                # pure step runs directly; the returns are checked once below
                step = self._pure_step(s, a)
                returns, alive = _add_step(returns, alive, discount, step)
                s = step.state
                discount *= self.gamma
        if actions is None:
            actions = torch.stack(taken, dim=2)
        elif self._uniform_log_density is not None:  # added once, not evaluated H times
            log_prior = log_prior + self.horizon * self._uniform_log_density
        return self._finish_rollout(actions, returns, log_prior, s, alive, discount)

    def _finish_rollout(self, actions, returns, log_prior, s, alive, discount):
        """Add gamma^H V(s_H) where there is a terminal value, and check the returns."""
        if self.terminal_value is not None:
            value = self.terminal_value(s).to(returns.dtype)
            returns = returns + discount * (value if alive is None else alive * value)
        _check_finite_returns(returns, self.env)
        return actions, returns, log_prior

    def _rollout_model(
        self, state: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The trajectory model run with its action sites fixed to the K x E plans: the sum of its
        optimality factors (``O_t``, ``O_H``: r_t / alpha_model, so ``alpha`` here tempers them
        once more, 1 by default) and of its actions' prior log densities, ``[K, E]`` each, under the
        model's own scales and masks. Every other site (a stochastic transition, a per-episode
        latent such as an unknown parameter) is drawn from the model itself, so its density
        cancels from the weights: the plan's posterior marginalizes them."""
        from pyro import poutine
        from pyro.poutine.util import site_is_subsample

        from rl_as_inference.models import sites

        k, e = actions.shape[:2]
        flat = actions.flatten(0, 1)  # episode k * E + e
        data = {sites.action_site(t): flat[:, t] for t in range(self.horizon)}
        init = state.unsqueeze(0).expand(k, *state.shape).flatten(0, 1)
        # the model's own draws (transitions, latents) come from torch's stream: forked and seeded
        # from the planner's generator, so a seeded planner repeats (one read of the seed per step)
        with poutine.block(), stream_from(self.generator, state.device):
            trace = poutine.trace(poutine.condition(self.model, data=data)).get_trace(k * e, init)
        factors = torch.zeros(k * e, device=state.device, dtype=self.env.dtype)
        log_prior = torch.zeros_like(factors)
        seen = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            info = sites.parse_site(name)
            if info.role == "action":
                log_prior = log_prior + _per_episode(sites.site_log_prob(site), k * e)
                seen += 1
            elif info.role == "factor":
                factors = factors + _per_episode(sites.site_log_prob(site), k * e)
        if seen != self.horizon:
            raise ValueError(
                f"the model has {seen} action sites a_t, the planner's horizon is {self.horizon}: "
                "give MPC the model's horizon"
            )
        return actions, factors.reshape(k, e), log_prior.reshape(k, e)

    def _temperature(self, returns, log_prior, log_q) -> torch.Tensor:
        if self.target_ess is None:
            return torch.full(returns.shape[1:], self.alpha, device=returns.device, dtype=returns.dtype)
        return temperature_for_ess(returns, log_prior - log_q, self.target_ess * self.num_samples)

    def _infer_svi(self, state: torch.Tensor) -> None:
        """``iterations`` Adam steps on the plan's parameters, ascending the ELBO
        E_q[R / alpha + log pi - log q] estimated from K samples: pathwise through the env where
        it is differentiable (Box actions), by the score function with the samples' mean as
        baseline otherwise."""
        num_envs, plan = state.shape[0], self._plan
        if self.discrete:
            params = [plan["probs"].log().clone().requires_grad_(True)]
        else:
            params = [
                plan["loc"].clone().requires_grad_(True),
                plan["scale"].log().clone().requires_grad_(True),
            ]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        pathwise = self.model is None and not self.discrete and self.env.differentiable
        rollout = self._rollout if self.model is None else self._rollout_model
        with torch.enable_grad():
            for _ in range(self.iterations):
                if self.discrete:
                    plan["probs"] = params[0].softmax(-1)
                else:
                    plan["loc"], plan["scale"] = params[0], params[1].exp()
                actions, log_q_per_step = self._propose(num_envs)
                if pathwise:
                    log_q = log_q_per_step.sum(-1)
                else:  # the score function: log q of the drawn plans, differentiated in q's parameters
                    actions = actions.detach()
                    log_q = self._log_q(actions)
                _, returns, log_prior = rollout(state, actions)
                if self.prior_is_plan:
                    log_prior = log_q.detach()  # pi is the plan at the start of the step
                alpha = self._temperature(returns.detach(), log_prior.detach(), log_q.detach())
                elbo_terms = returns / alpha + log_prior - log_q  # [K, E]
                if pathwise:
                    loss = -elbo_terms.mean(0).sum()
                else:
                    centred = (elbo_terms - elbo_terms.mean(0)).detach()
                    loss = -(centred * log_q).mean(0).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if not self.discrete:
                    with torch.no_grad():  # projected steps: the mean stays in the action box
                        if self.bounded:
                            params[0].copy_(torch.maximum(torch.minimum(params[0], self.high), self.low))
                        params[1].clamp_(min=math.log(self.min_std))
        if self.discrete:
            plan["probs"] = params[0].detach().softmax(-1)
            self.last_first_action_probs = plan["probs"][:, 0].clone()
        else:
            plan["loc"] = params[0].detach()
            plan["scale"] = params[1].detach().exp().clamp_min(self.min_std)
        self._log_step(elbo_terms.detach(), alpha)

    def _log_step(self, log_weights: torch.Tensor, alpha: torch.Tensor) -> None:
        self._history["ess"].append(kish_ess(log_weights))
        self._history["alpha"].append(alpha)
        if self.record:
            self._history["log_weights"].append(log_weights)

    def _infer_smc(self, state: torch.Tensor) -> None:
        """Sequential Monte Carlo over the horizon (Piché et al. 2019): K particles per env draw
        a_t from the plan's step-t proposal, step the env and take the incremental weight
        exp(r_t / alpha) pi(a_t) / q_t(a_t); whenever an env's ESS falls below K / 2 its particles
        are resampled (systematically: their states and the actions taken so far) and their weights
        equalized, and each copy goes on with its own next actions. The final weights (with
        gamma^H V(s_H) / alpha) weight the surviving action histories, from which the plan is
        refitted as by ``"mppi"``.

        The open-loop proposal's steps are independent of one another, so every particle's actions
        are drawn up front and only the steps already taken move with a resampled particle: its
        later steps stay the fresh draws of the slot it lands in (copies of one particle explore
        different continuations, the point of resampling)."""
        env, k, num_envs = self.env, self.num_samples, state.shape[0]
        # every slot's proposal, drawn up front, and its log q [K, E, H]: only step t's column is
        # read at step t, from the slot's own fresh draw
        actions, per_step_log_q = self._propose(num_envs)
        alpha = torch.full((num_envs,), self.alpha, device=state.device, dtype=env.dtype)
        s = state.unsqueeze(0).expand(k, *state.shape)
        log_w = torch.zeros(k, num_envs, device=state.device, dtype=env.dtype)
        alive = torch.ones_like(log_w)
        history = actions.clone()
        rows = torch.arange(num_envs, device=state.device)
        discount = 1.0
        for t in range(self.horizon):
            a = history[:, :, t]
            log_prior = per_step_log_q[:, :, t] if self.prior_is_plan else self._log_prior_at(t, s, a, log_w)
            step = self._pure_step(s, a)
            log_w = log_w + discount * alive * step.reward.to(log_w.dtype) / alpha
            log_w = log_w + log_prior - per_step_log_q[:, :, t]
            alive = alive * (~step.terminated).to(log_w.dtype)
            s = step.state
            discount *= self.gamma
            if t + 1 < self.horizon:  # resample where the weights have degenerated (on the device)
                degenerate = kish_ess(log_w) < k / 2  # [E]
                picks = _systematic_resample(log_w, self.generator)
                keep = torch.arange(k, device=state.device).expand(num_envs, k)
                index = torch.where(degenerate[:, None], picks, keep).T  # [K, E]
                history = torch.cat((history[index, rows][:, :, : t + 1], history[:, :, t + 1 :]), dim=2)
                s, alive = s[index, rows], alive[index, rows]
                mean_w = torch.logsumexp(log_w, 0) - math.log(k)
                log_w = torch.where(degenerate, mean_w, log_w)
        if self.terminal_value is not None:
            log_w = log_w + discount * alive * self.terminal_value(s).to(log_w.dtype) / alpha
        _check_finite_returns(log_w, env)
        self._update(history, torch.softmax(log_w, 0))
        self._log_step(log_w, alpha)

    def _pure_step(self, s: torch.Tensor, a: torch.Tensor):
        if self.env.stochastic:
            return self.env._step(s, a, self.env.sample_next(s, a, self.generator))
        return self.env._step(s, a)

    def _infer(self, state: torch.Tensor) -> None:
        if self.method == "svi":
            return self._infer_svi(state)
        if self.method == "smc":
            if self.model is not None:
                raise ValueError(
                    "method='smc' steps a functional env; plan a trajectory model with 'mppi', 'cem' or 'svi'"
                )
            if self.target_ess is not None:
                raise ValueError(
                    "method='smc' takes a fixed alpha (its weights are built step by step); drop target_ess"
                )
            return self._infer_smc(state)
        num_envs = state.shape[0]
        for _ in range(self.iterations):
            if self.proposal == "prior":
                actions, returns, log_prior = self._rollout(state, None)
                log_q = log_prior  # q is pi: the weights are exp(R / alpha)
            else:
                rollout = self._rollout if self.model is None else self._rollout_model
                actions, log_q_per_step = self._propose(num_envs)
                actions, returns, log_prior = rollout(state, actions)
                log_q = log_q_per_step.sum(-1)
            if self.prior_is_plan:
                log_prior = log_q  # pi is the plan that proposed: the weights are exp(R / alpha)
            alpha = self._temperature(returns, log_prior, log_q)
            log_target = returns / alpha + log_prior
            log_weights = log_target - log_q
            if self.method == "mppi":
                weights = torch.softmax(log_weights, dim=0)  # [K, E]
            else:  # cem: equal weights on the elites by the target density
                elites = max(1, int(self.elite_fraction * self.num_samples))
                top = log_target.topk(elites, dim=0).indices
                weights = torch.zeros_like(log_target).scatter_(0, top, 1.0 / elites)
            self._update(actions, weights)
        self._log_step(log_weights, alpha)

    def _update(self, actions: torch.Tensor, weights: torch.Tensor) -> None:
        plan = self._plan
        if self.discrete:
            one_hot = torch.nn.functional.one_hot(actions, self.num_actions).to(weights.dtype)
            probs = (weights[:, :, None, None] * one_hot).sum(0)  # [E, H, A]
            self.last_first_action_probs = probs[:, 0].clone()
            # every action keeps some probability, so the next round's proposal covers the prior
            plan["probs"] = 0.99 * probs + 0.01 / self.num_actions
            return
        w = weights[:, :, None, None]
        loc = (w * actions).sum(0)
        plan["loc"] = loc
        if self.method == "cem":
            var = (w * (actions - loc).square()).sum(0)
            plan["scale"] = var.sqrt().clamp_min(self.min_std)

    # ------------------------------------------------------------------ control
    @torch.no_grad()
    def act(self, state: torch.Tensor) -> torch.Tensor:
        """Plan from ``state`` (``[E, ...]``, E envs at once) and return the first actions ``[E(, d)]``.

        Box actions: the plan's (weighted) mean first action; Discrete: its most probable one.
        The plan is then shifted, so the next call warm-starts from it."""
        num_envs = self._batch(state)
        if self._plan is None or next(iter(self._plan.values())).shape[0] != num_envs:
            self._fresh_plan(num_envs)
        self._infer(state)
        first = self._plan["probs"][:, 0].argmax(-1) if self.discrete else self._plan["loc"][:, 0].clone()
        self._shift()
        return first

    def diagnostics(self) -> dict[str, np.ndarray]:
        """Per control step since :meth:`reset`: ``ess`` and ``alpha`` ``[steps, E]`` and, with
        ``record=True``, the last round's ``log_weights`` ``[steps, K, E]`` (their PSIS k-hat:
        :func:`rl_as_inference.diagnostics.pareto_k_per_step`)."""
        keys = ("ess", "alpha", "log_weights")
        return {key: torch.stack(self._history[key]).cpu().numpy() for key in keys if self._history[key]}


def _returns_of_plans(
    env: FunctionalEnv, s: torch.Tensor, per_step: torch.Tensor, horizon: int, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """The discounted returns ``[K, E]`` of given per-step actions ``[H, K, E, ...]`` on a
    deterministic env, the final states, the survival mask (None: the env never terminates) and
    gamma^H: the loop that ``compile=True`` hands to ``torch.compile``."""
    returns = torch.zeros(s.shape[:2], device=s.device, dtype=env.dtype)
    # a differentiable env never terminates (its contract), so it needs no survival mask
    alive = None if env.differentiable else torch.ones_like(returns)
    discount = 1.0
    for t in range(horizon):
        # the state was checked by act and the actions are drawn in the env's space, so the pure
        # step runs directly; the returns are checked once after the loop
        step = env._step(s, per_step[t])
        returns, alive = _add_step(returns, alive, discount, step)
        s = step.state
        discount *= gamma
    return returns, s, alive, discount


def _add_step(
    returns: torch.Tensor, alive: torch.Tensor | None, discount: float, step: Step
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step's reward, discounted and masked after termination, added to the returns; the
    survival mask advanced (None: an env that never terminates needs none). Both rollout loops."""
    reward = step.reward if alive is None else alive * step.reward
    returns = returns + (reward if discount == 1.0 else discount * reward)
    if alive is not None:
        alive = alive * (~step.terminated).to(returns.dtype)
    return returns, alive


_COMPILED: list[Callable] = []  # one compiled function for every planner: its cache serves them all


def _compiled_returns_of_plans() -> Callable:
    """:func:`_returns_of_plans` under ``torch.compile`` (built once; recompiled per env and shape)."""
    if not _COMPILED:
        with _keeping_validation():
            compiled = torch.compile(_returns_of_plans, dynamic=False)

        def returns_of_plans(*args):
            with _keeping_validation():
                return compiled(*args)

        _COMPILED.append(returns_of_plans)
    return _COMPILED[0]


@contextlib.contextmanager
def _keeping_validation():
    # torch.compile patches torch for the whole process, once, and one of its patches turns off
    # every distribution's argument validation (torch._dynamo's TorchPatcher): the caller's
    # setting is put back, so a NaN parameter still raises after a compiled plan
    validate = torch.distributions.Distribution._validate_args
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def _systematic_resample(log_weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Systematic resampling of each column of ``log_weights`` ``[K, E]``: indices ``[E, K]``.

    One uniform u per column; sample j is the particle whose cumulative weight first exceeds
    (u + j) / K. Each particle is copied floor(K w) or ceil(K w) times (less variance than a
    multinomial draw, which copies it Binomial(K, w) times), by one search per column."""
    k, e = log_weights.shape
    cumulative = torch.softmax(log_weights, 0).T.cumsum(-1)  # [E, K]
    offsets = torch.rand(e, 1, generator=generator, device=log_weights.device, dtype=log_weights.dtype)
    points = (offsets + torch.arange(k, device=log_weights.device, dtype=log_weights.dtype)) / k
    # the last cumulative weight is 1 up to rounding: clamp so a point above it picks the last particle
    return torch.searchsorted(cumulative, points, right=True).clamp_max(k - 1)


def _check_finite_returns(returns: torch.Tensor, env: FunctionalEnv) -> None:
    """A NaN or infinite planned return is the env's own (its reward or its terminal value), named
    here rather than as NaN weights; one sum read back per control step on the CPU, none on an
    accelerator (a device synchronization per step would cost more than the check is worth)."""
    if returns.device.type == "cpu" and not math.isfinite(float(returns.detach().sum())):
        bad = (~torch.isfinite(returns)).nonzero()[0].tolist()
        raise ValueError(
            f"{env.name}: a planned rollout returned {returns[tuple(bad)].item()} (sample {bad[0]}, env "
            f"{bad[1]}) from a finite state: the env's reward (or the terminal value) is not finite there"
        )


def _per_episode(log_prob: torch.Tensor, num_episodes: int) -> torch.Tensor:
    """A site's log density as one value per episode (the episodes plate is the last batch dim)."""
    if log_prob.dim() == 0:
        return log_prob.expand(num_episodes)
    if log_prob.shape[-1] != num_episodes:
        raise ValueError(
            f"a site's log density has shape {tuple(log_prob.shape)}; inside the episodes plate of "
            f"{num_episodes} episodes its last dimension should be {num_episodes}"
        )
    return log_prob.reshape(-1, num_episodes).sum(0)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; use an int >= {minimum}")
    return value
