"""Prior policies pi(a|s) of trajectory models.

The prior decides which ELBO a trajectory model has (:class:`~rl_as_inference.models.TrajectoryModel`): ``UniformPrior`` gives the
maximum-entropy ELBO of the source's eq. (10), E_q[sum_t gamma^t (r_t / alpha + H(q(.|s_t)))] - const;
``PolicyPrior`` gives the KL-regularized ELBO of the source's eq. (2) against a fixed reference policy (a
frozen previous policy for trust-region and EM methods); ``GaussianPrior`` is a soft action
penalty for continuous actions.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions import Distribution, register_kl

from rl_as_inference.envs import FunctionalEnv
from rl_as_inference.envs.tabular import probability_table

__all__ = ["GaussianPrior", "PolicyPrior", "Prior", "TablePrior", "UniformPrior", "as_pyro_distribution"]


class ClosedBoxUniform(dist.Uniform):
    """Uniform on the closed box [low, high]: torch's Uniform excludes ``high``, where a squashed
    (tanh) action saturates in float32, which would make log pi = -inf for a legal action.

    ``flat=True`` extends the density 1 / (high - low) beyond the box: an improper prior whose
    restriction to the box is the uniform one (samples stay in the box). It serves policies with
    unbounded support, such as a Gaussian whose out-of-box actions the env clips.
    """

    arg_constraints = {"low": constraints.dependent, "high": constraints.dependent}

    def __init__(self, low, high, validate_args=None, *, flat: bool = False):
        self.flat = flat
        super().__init__(low, high, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.real if self.flat else constraints.interval(self.low, self.high)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        density = -torch.log(self.high - self.low)
        if self.flat:
            return density.expand(torch.broadcast_shapes(density.shape, value.shape))
        inside = (value >= self.low) & (value <= self.high)
        return torch.where(inside, density, torch.full_like(density, -float("inf")))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ClosedBoxUniform, _instance)
        new.flat = self.flat
        return super().expand(batch_shape, _instance=new)


def _kl_to_closed_box(q: Distribution, p: ClosedBoxUniform) -> torch.Tensor:
    # KL(q || p) = -H(q) - E_q[log p(a)]. The flat prior's log-density is -log(high - low) on the
    # whole line, so the expectation is that constant for any q; the proper uniform is -inf outside
    # the box, where q puts mass unless its support lies in [low, high].
    width = (p.high - p.low).log()
    kl = width - q.entropy()
    if p.flat:
        return kl
    if isinstance(q, torch.distributions.Uniform):
        inside = (q.low >= p.low) & (q.high <= p.high)
    else:  # a Normal: positive mass beyond every bounded box
        inside = torch.zeros_like(kl, dtype=torch.bool)
    return torch.where(inside, kl, torch.full_like(kl, float("inf")))


# torch's own (Normal, Uniform) and (Uniform, Uniform) rules know nothing of the flat extension;
# these more specific entries take precedence for the closed box.
register_kl(torch.distributions.Normal, ClosedBoxUniform)(_kl_to_closed_box)
register_kl(torch.distributions.Uniform, ClosedBoxUniform)(_kl_to_closed_box)


def as_pyro_distribution(d: Distribution, where: str) -> TorchDistributionMixin:
    """Return ``d`` as a Pyro distribution (Pyro can only sample its own subclasses of torch's)."""
    if isinstance(d, TorchDistributionMixin):
        return d
    if not isinstance(d, Distribution):
        raise TypeError(f"{where} must return a torch or Pyro distribution, got {type(d).__name__}")
    pyro_cls = getattr(dist, type(d).__name__, None)
    if not (isinstance(pyro_cls, type) and issubclass(pyro_cls, type(d))):
        raise TypeError(
            f"{where} returned a torch {type(d).__name__}, which has no Pyro counterpart: return a "
            "pyro.distributions distribution instead"
        )
    # Pyro's wrapper classes add behaviour, not state: the same attributes make a valid instance.
    new = pyro_cls.__new__(pyro_cls)
    new.__dict__.update(d.__dict__)
    return new


def check_action_distribution(d: Distribution, space: gym.Space, where: str) -> None:
    """Raise ValueError unless ``d`` is a distribution over ``space`` (checked on metadata only)."""
    if isinstance(space, gym.spaces.Discrete):
        if d.event_shape != () or not d.support.is_discrete:
            raise ValueError(
                f"{where} gives a distribution with event shape {tuple(d.event_shape)} and support "
                f"{d.support}, but the action space is {space}: use a discrete distribution over "
                f"{{0, ..., {space.n - 1}}} (e.g. Categorical with {space.n} classes)"
            )
        num = getattr(d, "_num_events", None)
        if num is not None and num != space.n:
            raise ValueError(
                f"{where} is a Categorical over {num} actions, but the action space has {space.n}"
            )
    elif isinstance(space, gym.spaces.Box):
        if tuple(d.event_shape) != tuple(space.shape) or d.support.is_discrete:
            raise ValueError(
                f"{where} gives a distribution with event shape {tuple(d.event_shape)} and support "
                f"{d.support}, but the action space is {space}: use a continuous distribution with "
                f"event shape {tuple(space.shape)} (e.g. Normal(...).to_event(1))"
            )
    else:
        raise TypeError(f"action spaces of type {type(space).__name__} are not supported")


class Prior:
    """A prior policy pi(a|s). ``dist(state, env)`` returns the action distribution for a batch of
    states; a time-dependent prior pi_t(a|s) overrides ``dist_at(t, state, env)`` instead."""

    def check(self, env: FunctionalEnv) -> None:
        """Raise ValueError if this prior cannot serve ``env``'s action space."""

    def dist(self, state: torch.Tensor, env: FunctionalEnv) -> Distribution:
        raise NotImplementedError

    def dist_at(self, t: int, state: torch.Tensor, env: FunctionalEnv) -> Distribution:
        """pi_t(a | s_t), what the trajectory model samples at step ``t`` (default: ``dist``)."""
        return self.dist(state, env)


def _batch_shape(state: torch.Tensor, env: FunctionalEnv) -> torch.Size:
    return state.shape[: state.dim() - len(env.state_shape)]


class UniformPrior(Prior):
    """pi uniform over the action space: the source's eq. (10), the maximum-entropy ELBO.

    Discrete(n): Categorical with probabilities 1/n, so KL(q || pi) = log n - H(q). A bounded Box:
    uniform on the closed box, so KL(q || pi) = log vol(box) - H(q). An unbounded Box has no
    uniform distribution: use ``GaussianPrior`` or bound the space.

    ``beyond_box="flat"`` (Box only) keeps the density 1 / vol(box) outside the box as well: an
    improper prior for policies with unbounded support (a Gaussian, whose actions the env clips).
    Their ELBO is then E[sum_t gamma^t (r_t / alpha + H(q(.|s_t)) - log vol)], finite, where the
    proper uniform gives -inf for every episode with an action outside the box; the dropped
    constant is the prior mass outside the box. The default ``"impossible"`` is the proper uniform:
    under it a guide with unbounded support has KL(q || pi) = +inf for every parameter value, so
    ``TrajectoryELBO`` refuses the pair, naming the site (Pyro's ``Trace_ELBO`` returns an infinite
    loss). Against the flat prior, ``kl_divergence(q, pi)`` is the closed form log vol - H(q), which
    the analytic-KL estimators (``TrajectoryELBO``, ``TraceMeanField_ELBO``) use.
    """

    BEYOND_BOX = ("impossible", "flat")

    def __init__(self, action_space: gym.Space, *, beyond_box: str = "impossible"):
        if beyond_box not in self.BEYOND_BOX:
            raise ValueError(f"beyond_box={beyond_box!r} is not allowed; use one of {self.BEYOND_BOX}")
        self.beyond_box = beyond_box
        if isinstance(action_space, gym.spaces.Box):
            if not action_space.is_bounded():
                raise ValueError(
                    f"UniformPrior needs a bounded action space, got {action_space}: a uniform prior on an "
                    "unbounded box is improper; use GaussianPrior(scale) instead"
                )
        elif not isinstance(action_space, gym.spaces.Discrete):
            raise TypeError(
                f"UniformPrior supports Discrete and Box spaces, got {type(action_space).__name__}"
            )
        elif beyond_box != "impossible":
            raise ValueError(f"beyond_box={beyond_box!r} applies to Box action spaces, not {action_space}")
        self.action_space = action_space
        self._cache: dict = {}

    def check(self, env: FunctionalEnv) -> None:
        if self.action_space != env.action_space:
            raise ValueError(
                f"UniformPrior is over {self.action_space} but {env.name}'s action space is {env.action_space}"
            )

    def dist(self, state: torch.Tensor, env: FunctionalEnv) -> Distribution:
        batch = _batch_shape(state, env)
        key = (state.device, env.dtype)
        if key not in self._cache:  # built once per device: no host-to-device copy per step
            space = self.action_space
            if isinstance(space, gym.spaces.Discrete):
                self._cache[key] = dist.Categorical(
                    logits=torch.zeros(space.n, device=state.device, dtype=env.dtype)
                )
            else:
                low = torch.as_tensor(space.low, device=state.device, dtype=env.dtype)
                high = torch.as_tensor(space.high, device=state.device, dtype=env.dtype)
                flat = self.beyond_box == "flat"
                self._cache[key] = ClosedBoxUniform(low, high, validate_args=False, flat=flat).to_event(1)
        return self._cache[key].expand(batch)

    def __repr__(self) -> str:
        flat = ", beyond_box='flat'" if self.beyond_box == "flat" else ""
        return f"UniformPrior({self.action_space}{flat})"


class GaussianPrior(Prior):
    """pi(a|s) = Normal(0, scale^2) per action dimension, for continuous actions.

    KL(q || pi) then penalizes large actions; analytic when q is Gaussian.
    """

    def __init__(self, scale: float = 1.0):
        scale = float(scale)
        if not (scale > 0 and scale < float("inf")):
            raise ValueError(f"GaussianPrior scale must be positive and finite, got {scale}")
        self.scale = scale

    def check(self, env: FunctionalEnv) -> None:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(
                f"GaussianPrior needs continuous actions, but {env.name}'s action space is {env.action_space}"
            )

    def dist(self, state: torch.Tensor, env: FunctionalEnv) -> Distribution:
        shape = _batch_shape(state, env) + tuple(env.action_space.shape)
        zero = torch.zeros((), device=state.device, dtype=env.dtype)
        return dist.Normal(zero, self.scale).expand(shape).to_event(len(env.action_space.shape))

    def __repr__(self) -> str:
        return f"GaussianPrior(scale={self.scale})"


class PolicyPrior(Prior):
    """pi(a|s) = ``fn(state)``: a fixed reference policy, giving the KL-regularized ELBO of the source's eq. (2).

    ``fn`` takes a batch of states (integer states for tabular MDPs, ``[*B, k]`` tensors otherwise)
    and returns a torch or Pyro distribution with batch shape ``[*B]``; with ``time_indexed=True``
    it is called as ``fn(state, t)`` and may depend on the step t (a time-dependent pi_t). Use it with a frozen copy of
    a previous guide's policy for trust-region / EM iterations. Gradients do not flow into ``fn``
    unless its parameters are registered with Pyro.
    """

    def __init__(self, fn: Callable[..., Distribution], *, time_indexed: bool = False):
        if not callable(fn):
            raise TypeError(f"PolicyPrior needs a callable state -> distribution, got {type(fn).__name__}")
        self.fn, self.time_indexed = fn, bool(time_indexed)
        self._checked: set = set()

    def dist(self, state: torch.Tensor, env: FunctionalEnv) -> Distribution:
        if self.time_indexed:
            raise TypeError("this PolicyPrior is time-indexed (fn(state, t)): use dist_at(t, state, env)")
        return self._checked_dist(self.fn(state), env)

    def dist_at(self, t: int, state: torch.Tensor, env: FunctionalEnv) -> Distribution:
        """``fn(state, t)`` when ``time_indexed``, else ``fn(state)``."""
        return self._checked_dist(self.fn(state, t) if self.time_indexed else self.fn(state), env)

    def _checked_dist(self, d, env: FunctionalEnv) -> Distribution:
        d = as_pyro_distribution(d, "PolicyPrior's fn")
        if id(env) not in self._checked:  # metadata checks, once per env
            check_action_distribution(d, env.action_space, "PolicyPrior's fn")
            self._checked.add(id(env))
        return d

    def __repr__(self) -> str:
        return f"PolicyPrior({getattr(self.fn, '__name__', type(self.fn).__name__)})"


class TablePrior(Prior):
    """pi_t(a|s) from a table of probabilities: ``[S, A]`` (the same at every step) or ``[T, S, A]``
    (one table per step, the shape of ``TabularGuide.policy()`` and ``exact.solve(...).policy``).

    With a guide's policy as the next round's prior, ELBO (2) iterated is the seed's EM on a finite
    MDP: ``prior = TablePrior(guide.policy())``, a new model and guide, fit, repeat; and
    ``exact.solve(mdp, ..., prior=table)`` solves the same objective exactly.
    """

    def __init__(self, probs: torch.Tensor):
        probs = torch.as_tensor(probs)
        if probs.dim() not in (2, 3) or not probs.dtype.is_floating_point:
            raise ValueError(
                f"TablePrior needs a float [S, A] or [T, S, A] table of probabilities, got shape "
                f"{tuple(probs.shape)} and dtype {probs.dtype}"
            )
        probability_table("TablePrior's probs", probs, rows="each row over actions")
        self.probs = probs

    def check(self, env: FunctionalEnv) -> None:
        n_states = getattr(env, "num_states", None)
        if not isinstance(env.action_space, gym.spaces.Discrete) or n_states is None:
            raise ValueError(f"TablePrior needs a tabular MDP (envs.TabularMDP), got {env.name}")
        if tuple(self.probs.shape[-2:]) != (n_states, env.action_space.n):
            raise ValueError(
                f"TablePrior's table has shape {tuple(self.probs.shape)}; {env.name} needs "
                f"[S, A] = [{n_states}, {env.action_space.n}] (or [T, S, A])"
            )

    def dist(self, state: torch.Tensor, env: FunctionalEnv) -> Distribution:
        if self.probs.dim() == 3:
            raise TypeError("this TablePrior is time-dependent ([T, S, A]): use dist_at(t, state, env)")
        return self.dist_at(0, state, env)

    def dist_at(self, t: int, state: torch.Tensor, env: FunctionalEnv) -> Distribution:
        if self.probs.dim() == 3 and t >= self.probs.shape[0]:
            raise ValueError(f"TablePrior has {self.probs.shape[0]} steps; step {t} was asked for")
        table = self.probs[t] if self.probs.dim() == 3 else self.probs
        return dist.Categorical(probs=table.to(device=state.device)[state])

    def __repr__(self) -> str:
        return f"TablePrior({list(self.probs.shape)})"
