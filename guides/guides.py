"""Guides: the variational policy q rolled out through the same dynamics as the model (the source's eq. 12)."""

from __future__ import annotations

import weakref

import gymnasium as gym
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from rl_as_inference.envs import FunctionalEnv, TabularMDP
from rl_as_inference.models.priors import as_pyro_distribution, check_action_distribution
from rl_as_inference.models.rollout import Trajectory, rollout
from rl_as_inference.models.trajectory import check_gamma, check_horizon

from .policies import is_bounded_box, squashed_gaussian

__all__ = ["OpenLoopGuide", "PolicyGuide", "TabularGuide", "TrajectoryGuide"]


class TrajectoryGuide:
    """Base class: ``guide(num_episodes, init_state=None)`` rolls out q with the model's signature.

    ``gamma`` is the continuation probability of the model that this guide approximates: step t's
    sites run under ``poutine.scale(gamma**t)`` here as in the model (q shares the dynamics and the
    death time, the source's eq. 12), which is what makes Pyro's own ELBOs compute the discounted ELBO.
    """

    env: FunctionalEnv
    horizon: int
    gamma: float = 1.0

    def action_dist(self, t: int, state: torch.Tensor):
        """q(a_t | s_t) for a batch of states."""
        raise NotImplementedError

    def register(self) -> None:
        """Register parameters with Pyro's param store (called at the start of every rollout)."""

    def __call__(self, num_episodes: int, init_state: torch.Tensor | None = None) -> Trajectory:
        self.register()
        return self.rollout(num_episodes, init_state)

    def rollout(self, num_episodes: int, init_state=None, *, optimality=None, sites=None) -> Trajectory:
        """The shared rollout loop under q (``optimality``/``sites`` serve the fused ELBO evaluation)."""
        return rollout(
            self.env,
            self._checked_dist,
            horizon=self.horizon,
            num_episodes=num_episodes,
            init_state=init_state,
            gamma=self.gamma,
            optimality=optimality,
            sites=sites,
        )

    def _checked_dist(self, t: int, state: torch.Tensor):
        d = self.action_dist(t, state)
        if t == 0:
            check_action_distribution(d, self.env.action_space, f"{type(self).__name__}'s q(a|s)")
        return d


# name -> the module a PolicyGuide registered under it (weak: a dropped module frees its name)
_REGISTERED: weakref.WeakValueDictionary[str, nn.Module] = weakref.WeakValueDictionary()


# param-store prefix -> the TabularGuide or OpenLoopGuide whose parameters live under it
_PARAM_OWNERS: weakref.WeakValueDictionary[str, object] = weakref.WeakValueDictionary()


def _owned_param(owner, name: str, init, shape: tuple[int, ...], **kwargs) -> torch.Tensor:
    """``pyro.param(f"{owner.name}.{name}", init)``, refusing what Pyro would do silently: hand a
    second guide under the same name the first one's parameter (shared, or of another shape)."""
    full = f"{owner.name}.{name}"
    store = pyro.get_param_store()
    if full not in store:
        _PARAM_OWNERS[owner.name] = owner
    elif _PARAM_OWNERS.get(owner.name, owner) is not owner:
        raise ValueError(
            f"another guide already keeps its parameters in Pyro's param store under name={owner.name!r}; "
            "give this guide its own name=..., or call pyro.clear_param_store() first"
        )
    value = pyro.param(full, init, **kwargs)
    if tuple(value.shape) != shape:
        raise ValueError(
            f"Pyro's param store holds {full!r} of shape {tuple(value.shape)}, but this guide needs {shape}: "
            "give it its own name=..., or call pyro.clear_param_store() first"
        )
    return value


class PolicyGuide(TrajectoryGuide):
    """Closed-loop q(a_t|s_t) = ``policy(observe(s_t))`` for a torch module ``policy``.

    The module (e.g. ``GaussianMLP``, ``TanhGaussianMLP``, ``CategoricalMLP``) takes Gymnasium
    observations and returns a distribution; it is registered with ``pyro.module(name, policy)``
    so SVI optimizes it. Observations are those of the env (float32 by default), so the trained
    policy runs unchanged on Gymnasium's own environment.
    """

    def __init__(
        self, env: FunctionalEnv, policy: nn.Module, *, horizon: int, name: str = "policy", gamma: float = 1.0
    ):
        if not isinstance(env, FunctionalEnv):
            raise TypeError(f"env must be a functional env, got {type(env).__name__}")
        if not isinstance(policy, nn.Module):
            raise TypeError(
                f"policy must be a torch.nn.Module returning a distribution, got {type(policy).__name__}"
            )
        self.env, self.policy, self.name = env, policy, name
        self.horizon = check_horizon(horizon)
        self.gamma = check_gamma(gamma)

    def register(self) -> None:
        """Register the policy with ``pyro.module(name, policy)``; a second module under a name that
        another live module holds in the param store is an error (Pyro would silently hand it the
        first module's parameters, and training it would change nothing)."""
        other = _REGISTERED.get(self.name)
        store = pyro.get_param_store()
        if (
            other is not None
            and other is not self.policy
            and any(key.startswith(f"{self.name}$$$") for key in store)
        ):
            raise ValueError(
                f"another module is already registered in Pyro's param store as {self.name!r}; "
                f"give this guide its own name=..., or call pyro.clear_param_store() first"
            )
        _REGISTERED[self.name] = self.policy
        pyro.module(self.name, self.policy)

    def action_dist(self, t: int, state: torch.Tensor):
        return as_pyro_distribution(self.policy(self.env.observe(state)), f"{self.name}(obs)")


class TabularGuide(TrajectoryGuide):
    """Time-dependent tabular q_t(a|s) = softmax(logits[t, s]) for a finite MDP.

    ``policy()`` returns the probabilities ``[T, S, A]``, the shape of ``exact.solve(...).policy``.
    """

    def __init__(
        self,
        mdp: TabularMDP,
        *,
        horizon: int,
        name: str = "tabular_guide",
        init_scale: float = 0.0,
        gamma: float = 1.0,
    ):
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"TabularGuide needs an envs.TabularMDP, got {type(mdp).__name__}")
        self.env, self.name = mdp, name
        self.horizon = check_horizon(horizon)
        self.gamma = check_gamma(gamma)
        self.init_scale = float(init_scale)

    def _init_logits(self) -> torch.Tensor:
        shape = (self.horizon, self.env.num_states, self.env.num_actions)
        # the env's dtype: a float64 MDP gets float64 log-probabilities at every site
        return self.init_scale * torch.randn(shape, device=self.env.device, dtype=self.env.dtype)

    def logits(self) -> torch.Tensor:
        """The ``[T, S, A]`` logits parameter (created on first use)."""
        shape = (self.horizon, self.env.num_states, self.env.num_actions)
        return _owned_param(self, "logits", self._init_logits, shape)

    def register(self) -> None:
        self.logits()

    def action_dist(self, t: int, state: torch.Tensor):
        return dist.Categorical(logits=self.logits()[t][state])

    def policy(self) -> torch.Tensor:
        """q_t(a|s) as probabilities ``[T, S, A]`` (detached)."""
        return torch.softmax(self.logits().detach(), dim=-1)


class OpenLoopGuide(TrajectoryGuide):
    """Open-loop q(a_0..a_{H-1}): one action distribution per step, the same in every state.

    Planning as inference: the optimal open-loop plan of a deterministic task. Discrete actions
    get per-step logits; a bounded Box gets a per-step tanh-squashed Gaussian inside the box; an
    unbounded Box a per-step Gaussian.
    """

    def __init__(
        self,
        env: FunctionalEnv,
        *,
        horizon: int,
        name: str = "open_loop",
        init_std: float = 1.0,
        gamma: float = 1.0,
    ):
        if not isinstance(env, FunctionalEnv):
            raise TypeError(f"env must be a functional env, got {type(env).__name__}")
        self.env, self.name = env, name
        self.horizon = check_horizon(horizon)
        self.gamma = check_gamma(gamma)
        self.init_std = float(init_std)
        space = env.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if not self.discrete:
            if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
                raise TypeError(f"OpenLoopGuide supports Discrete and 1-D Box action spaces, got {space}")
            self.bounded = is_bounded_box(space)
            low = torch.as_tensor(space.low, dtype=env.dtype, device=env.device)
            high = torch.as_tensor(space.high, dtype=env.dtype, device=env.device)
            self._mid, self._half = (high + low) / 2, (high - low) / 2
            self._low, self._high = low, high  # the exact box: a saturated action is clamped into it

    def _params(self):
        device, h, dtype = self.env.device, self.horizon, self.env.dtype  # the env's dtype
        if self.discrete:
            n = int(self.env.action_space.n)
            return (
                _owned_param(self, "logits", lambda: torch.zeros(h, n, device=device, dtype=dtype), (h, n)),
            )
        d = self.env.action_space.shape[0]
        loc = _owned_param(self, "loc", lambda: torch.zeros(h, d, device=device, dtype=dtype), (h, d))
        scale = _owned_param(
            self,
            "scale",
            lambda: torch.full((h, d), self.init_std, device=device, dtype=dtype),
            (h, d),
            constraint=constraints.positive,
        )
        return loc, scale

    def register(self) -> None:
        self._params()

    def action_dist(self, t: int, state: torch.Tensor):
        batch = state.shape[: state.dim() - len(self.env.state_shape)]
        params = self._params()
        if self.discrete:
            return dist.Categorical(logits=params[0][t]).expand(batch)
        loc, scale = params[0][t], params[1][t]
        base = dist.Normal(loc, scale).to_event(1)
        if not self.bounded:
            return base.expand(batch)
        return squashed_gaussian(
            loc.expand(*batch, -1),
            scale.expand(*batch, -1),
            self._mid,
            self._half,
            low=self._low,
            high=self._high,
        )

    def plan(self) -> torch.Tensor:
        """The most likely action of each step: ``[T]`` (discrete) or ``[T, action_dim]``."""
        params = [p.detach() for p in self._params()]
        if self.discrete:
            return params[0].argmax(-1)
        return self._mid + self._half * torch.tanh(params[0]) if self.bounded else params[0]
