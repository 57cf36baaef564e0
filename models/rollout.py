"""The one rollout loop that serves both trajectory models and guides (layer 2 of the library: envs below, inference above).

A model is this loop with actions from the prior pi plus optimality factors; a guide is the same
loop with actions from the variational policy q. Because both run the same pure dynamics, q(tau)
shares p(s_0) and p(s_{t+1}|s_t, a_t) with the model (the source's eq. 12) and only the action sites differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.mask_messenger import MaskMessenger
from pyro.poutine.scale_messenger import ScaleMessenger
from torch.distributions import Distribution

from rl_as_inference.envs import FunctionalEnv, TabularMDP
from rl_as_inference.envs.base import check_num_envs

from .sites import EPISODES, action_site, factor_site, state_site

__all__ = [
    "InitialStateDistribution",
    "Optimality",
    "PyroSites",
    "Trajectory",
    "initial_distribution",
    "rollout",
]


class Trajectory(NamedTuple):
    """What a rollout returns (also the ``_RETURN`` value in a Pyro trace).

    Attributes:
        states: ``[H+1, N, *state_shape]``; frozen at the terminal state after termination.
        actions: ``[H, N, *action_shape]`` (garbage where ``alive`` is False).
        rewards: ``[H, N]`` undiscounted rewards r_t, zero after termination.
        alive: ``[H, N]`` bool, True where step t belongs to the episode.
        terminated: ``[H, N]`` bool, True where the episode ended at step t (a rollout always
            fills it; ``None`` only in a Trajectory built by hand).
    """

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    alive: torch.Tensor
    terminated: torch.Tensor | None = None

    @property
    def returns(self) -> torch.Tensor:
        """``[N]`` undiscounted return sum_t r_t of each episode."""
        return self.rewards.sum(0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # torch calls this when a Trajectory is handed to a torch function in place of a tensor:
        # Pyro's Predictive(return_sites=["_RETURN"]) stacks the model's return value, and a
        # Trajectory is not a tensor. Say what to ask for instead of torch's "expected Tensor".
        raise TypeError(
            f"torch.{getattr(func, '__name__', func)} got a Trajectory, the value a trajectory model "
            "returns (its _RETURN site), which is not a tensor: Predictive cannot stack it. Ask for "
            "the sample sites instead (return_sites=['a_0', 'a_1', ...], and 's_t' for stochastic "
            "transitions), or take the Trajectory itself from "
            "pyro.poutine.trace(model).get_trace(N).nodes['_RETURN']['value']"
        )


class Optimality(NamedTuple):
    """The optimality factors of a model: exp(r_t / alpha) at step t and the terminal exp(V(s_H) / alpha),
    each under the step's continuation probability gamma^t (``poutine.scale``)."""

    alpha: float
    gamma: float
    terminal_value: Callable[[torch.Tensor], torch.Tensor] | None = None


class InitialStateDistribution(dist.TorchDistribution):
    """p(s_0) of a continuous-state env as a Pyro distribution with batch shape ``[N]``.

    Sampling calls ``env.sample_initial`` (Pyro's seeded global RNG). ``log_prob`` is 0: the reset
    laws of the classic-control tasks are partly degenerate (MountainCar's zero velocity, Acrobot's
    float32 rounding), and since model and guide share this site its log-density cancels in every
    ELBO and importance weight, so the constant is irrelevant.
    """

    arg_constraints: dict = {}
    support = dist.constraints.real_vector
    # No parameters, so a draw is trivially reparameterized (its gradient is zero either way): this
    # lets Pyro's TraceMeanField_ELBO, which asks every guide site for rsample, take these guides.
    has_rsample = True

    def __init__(self, env: FunctionalEnv, num_episodes: int | torch.Size):
        self.env = env
        batch = torch.Size([num_episodes]) if isinstance(num_episodes, int) else torch.Size(num_episodes)
        super().__init__(batch, torch.Size(env.state_shape), validate_args=False)

    def sample(self, sample_shape=()):
        # one draw of batch_shape.numel() initial states, laid out in the batch shape: [N], or
        # [P, N] under Pyro's vectorized particles or Predictive(parallel=True)
        shape = torch.Size(sample_shape) + self.batch_shape
        draws = self.env.sample_initial(max(shape.numel(), 1))
        return draws.reshape(shape + self.event_shape)

    def rsample(self, sample_shape=()):
        return self.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.zeros(
            value.shape[: value.dim() - len(self.event_shape)], device=value.device, dtype=value.dtype
        )

    def expand(self, batch_shape, _instance=None):
        return InitialStateDistribution(self.env, torch.Size(batch_shape))


def _factor(name: str, log_factor: torch.Tensor) -> None:
    """``pyro.factor`` without argument validation: validating would stop a NaN reward with a
    message about ``Unit(log_factor)``; ``TrajectoryELBO`` instead names the step whose reward is
    NaN (and validation costs a check per site per step)."""
    unit = dist.Unit(log_factor, validate_args=False)
    pyro.sample(name, unit, obs=unit.sample(), infer={"is_auxiliary": True})


def initial_distribution(env: FunctionalEnv, num_episodes: int) -> Distribution:
    """p(s_0) for ``num_episodes`` episodes: a Categorical for a tabular MDP, else the env's reset law."""
    if isinstance(env, TabularMDP):
        return env.initial_dist(num_episodes)
    return InitialStateDistribution(env, num_episodes)


class PyroSites:
    """The site statements of a rollout as Pyro primitives: the rollout is then a Pyro model or guide.

    Enters ``pyro.plate("episodes", N)``, one mask handler whose mask is the alive flag of the
    current step and one scale handler whose scale is the step's continuation probability gamma^t
    (a fresh ``poutine.mask``/``poutine.scale`` per step would cost more Python than a small
    batch's step).
    """

    def __init__(self, num_episodes: int):
        self._plate = pyro.plate(EPISODES, num_episodes, dim=-1)
        self._mask = MaskMessenger(mask=True)
        self._scale = ScaleMessenger(scale=1.0)

    def __enter__(self) -> PyroSites:
        self._plate.__enter__()
        self._scale.__enter__()
        self._mask.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mask.__exit__(*exc)
        self._scale.__exit__(*exc)
        self._plate.__exit__(*exc)

    def set_alive(self, alive: torch.Tensor) -> None:
        self._mask.mask = alive

    def set_scale(self, scale: float) -> None:
        # Set directly: ScaleMessenger's constructor refuses 0, which gamma**t reaches by underflow
        # only after thousands of steps, where the step's weight is 0 anyway.
        self._scale.scale = scale

    def initial(self, d: Distribution) -> torch.Tensor:
        return pyro.sample(state_site(0), d)

    def action(self, t: int, state: torch.Tensor, d: Distribution) -> torch.Tensor:
        return pyro.sample(action_site(t), d)

    def transition(self, t: int, d: Distribution) -> torch.Tensor:
        return pyro.sample(state_site(t + 1), d)

    def factor(self, t: int, log_factor: torch.Tensor) -> None:
        _factor(factor_site(t), log_factor)


def rollout(
    env: FunctionalEnv,
    action_dist: Callable[[int, torch.Tensor], Distribution],
    *,
    horizon: int,
    num_episodes: int,
    init_state: torch.Tensor | None = None,
    gamma: float | None = None,
    optimality: Optimality | None = None,
    sites=None,
) -> Trajectory:
    """Roll out ``num_episodes`` episodes of ``horizon`` steps as a Pyro program.

    Step t's sites (``a_t``, a stochastic transition ``s_{t+1}``, the factor ``O_t = r_t / alpha``)
    run under ``poutine.scale(gamma**t)``, and the terminal factor ``O_H = V(s_H) / alpha`` under
    gamma^H: gamma is the probability that the episode continues after each step (it ends in an
    absorbing state with zero reward otherwise), the same in a model and in its guide. The ELBO of
    Pyro's ``Trace_ELBO`` is then E_q[sum_t gamma^t (r_t / alpha - KL(q(.|s_t) || pi(.|s_t)))]
    (+ gamma^H V(s_H) / alpha).

    Args:
        env: the functional environment (its pure ``step`` is the dynamics).
        action_dist: ``(t, state) -> distribution`` of ``a_t`` (the prior in a model, q in a guide).
        horizon: number of action steps H.
        num_episodes: size of the ``episodes`` plate.
        init_state: optional ``[N, *state_shape]`` initial states given by the caller (no site);
            otherwise ``s_0`` is sampled from p(s_0).
        gamma: the continuation probability in (0, 1]; default ``optimality.gamma`` in a model,
            1 otherwise. A guide passes its own, which must equal its model's.
        optimality: add the factor sites of a model (``None`` in a guide).
        sites: what the site statements do; default :class:`PyroSites` (Pyro primitives).
            ``TrajectoryELBO`` passes a recorder that evaluates model and guide in one pass.

    Returns:
        The :class:`Trajectory` (stacked states, actions, rewards and alive masks).
    """
    check_num_envs(num_episodes)
    if gamma is None:
        gamma = 1.0 if optimality is None else optimality.gamma
    elif optimality is not None and float(gamma) != float(optimality.gamma):
        raise ValueError(
            f"the guide runs under gamma={gamma} but the model under gamma={optimality.gamma}: q shares "
            "the model's continuation probability, so build the guide with the model's gamma"
        )
    event_dim = len(env.state_shape)
    alive = torch.ones(num_episodes, dtype=torch.bool, device=env.device)
    with PyroSites(num_episodes) if sites is None else sites as sites:
        if init_state is None:
            state = sites.initial(initial_distribution(env, num_episodes))
        else:
            env.check_state(init_state)
            if init_state.shape[: init_state.dim() - event_dim] != (num_episodes,):
                raise ValueError(
                    f"init_state has shape {tuple(init_state.shape)}; expected [{num_episodes}, "
                    f"{', '.join(map(str, env.state_shape))}] for {num_episodes} episodes"
                )
            state = init_state
        # alive takes the batch shape of the states: [N], or [P, N] under vectorized particles
        alive = torch.ones(state.shape[: state.dim() - event_dim], dtype=torch.bool, device=env.device)
        states, actions, rewards, alives, ends = [state], [], [], [], []
        for t in range(horizon):
            sites.set_alive(alive)
            sites.set_scale(gamma**t)
            action = sites.action(t, state, action_dist(t, state))
            try:
                if env.stochastic:
                    next_state = sites.transition(t, env.transition_dist(state, action))
                    step = env.step(state, action, next_state=next_state)
                else:
                    step = env.step(state, action)
            except ValueError as exc:  # the env's own check names the entry; add the step and site
                raise ValueError(f"{exc} (at step {t} of the rollout: sites a_{t}, O_{t})") from None
            if optimality is not None:
                sites.factor(t, step.reward / optimality.alpha)
            # Freeze finished episodes at their terminal state: their later steps are masked out,
            # and a frozen state keeps the (unused) dynamics finite: no NaN reaches a gradient.
            keep = alive.reshape(alive.shape + (1,) * event_dim)
            state = torch.where(keep, step.state, state)
            states.append(state)
            actions.append(action)
            rewards.append(torch.where(alive, step.reward, torch.zeros_like(step.reward)))
            alives.append(alive)
            ends.append(alive & step.terminated)
            alive = alive & ~step.terminated
        if optimality is not None and optimality.terminal_value is not None:
            sites.set_alive(alive)
            sites.set_scale(gamma**horizon)
            value = optimality.terminal_value(state)
            batch = tuple(state.shape[: state.dim() - event_dim])
            if tuple(value.shape) != batch:
                raise ValueError(
                    f"terminal_value must return one value per episode, shape {batch} (the states' "
                    f"batch); got {tuple(value.shape)}"
                )
            sites.factor(horizon, value / optimality.alpha)
    return Trajectory(
        _stack(states, event_dim),
        _stack(actions, len(_action_event(env))),
        _stack(rewards, 0),
        _stack(alives, 0),
        _stack(ends, 0),
    )


def _action_event(env: FunctionalEnv) -> tuple[int, ...]:
    space = env.action_space
    return () if isinstance(space, gym.spaces.Discrete) else tuple(space.shape)


def _stack(steps: list[torch.Tensor], event_dim: int) -> torch.Tensor:
    """``torch.stack`` of per-step tensors whose batch shapes may differ but broadcast: under Pyro's
    parallel enumeration every enumerated site adds a dimension on the left, so a step's batch is
    ``[A, 1, ..., N]`` where the step before had ``[..., N]``."""
    batches = [x.shape[: x.dim() - event_dim] for x in steps]
    if all(b == batches[0] for b in batches):
        return torch.stack(steps)
    batch = torch.broadcast_shapes(*batches)
    return torch.stack([x.expand(batch + x.shape[x.dim() - event_dim :]) for x in steps])
