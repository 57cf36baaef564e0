"""``TrajectoryModel``: a trajectory under the prior policy with optimality factors, as a Pyro model."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rl_as_inference.envs import FunctionalEnv

from .priors import Prior, check_action_distribution
from .rollout import Optimality, Trajectory, rollout

__all__ = ["TrajectoryModel", "check_gamma", "check_horizon"]


def check_horizon(horizon: int) -> int:
    """A horizon is a Python int >= 1."""
    if isinstance(horizon, bool) or not isinstance(horizon, int):
        raise TypeError(f"horizon must be an int >= 1, got {horizon!r}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    return horizon


class TrajectoryModel:
    """p(tau, O) = p(s_0) prod_t pi(a_t|s_t) p(s_{t+1}|s_t, a_t) exp(r_t / alpha), gamma a continuation probability.

    After every step the episode ends with probability 1 - gamma in an absorbing state with zero
    reward: step t's sites run under ``poutine.scale(gamma**t)`` (the death time marginalized). With
    a guide q that shares the dynamics and gamma (``PolicyGuide(..., gamma=...)``), the ELBO of
    this model is the source's eq. (2), discounted,
    E_q[sum_t gamma^t (r_t / alpha - KL(q(.|s_t) || pi(.|s_t)))] (+ gamma^H V(s_H) / alpha)
    <= log p(O), which with ``UniformPrior`` is the maximum-entropy objective of the source's eq. (10); its
    optimum is the stationary soft value that the critics learn. gamma = 1 is the undiscounted
    eq. (2). Sites follow :mod:`rl_as_inference.models.sites`.

    Args:
        env: a functional env (``envs.make(...)`` or ``envs.TabularMDP``).
        prior: ``UniformPrior``, ``GaussianPrior`` or ``PolicyPrior``.
        horizon: H action steps.
        alpha: temperature > 0 (rewards are divided by it); a 0-d tensor (e.g. a learned temperature
            on the device) is used without reading it back.
        gamma: the continuation probability in (0, 1]: step t's sites run under
            ``poutine.scale(gamma**t)``.
        terminal_value: optional ``V(s_H) -> [N]`` soft value of the rest of the episode in reward
            units; adds the factor ``O_H = V(s_H) / alpha`` under scale gamma^H (truncated
            horizons, soft critics).

    Calling ``model(num_episodes, init_state=None)`` runs the episodes and returns a
    :class:`~rl_as_inference.models.rollout.Trajectory`.
    """

    def __init__(
        self,
        env: FunctionalEnv,
        prior: Prior,
        *,
        horizon: int,
        alpha: float | torch.Tensor = 1.0,
        gamma: float = 1.0,
        terminal_value: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if not isinstance(env, FunctionalEnv):
            raise TypeError(
                f"env must be a functional env (envs.make(id) or envs.TabularMDP), got {type(env).__name__}"
            )
        if not isinstance(prior, Prior):
            raise TypeError(
                "prior must be UniformPrior, GaussianPrior, PolicyPrior, TablePrior (or another "
                f"models.Prior), got {type(prior).__name__}"
            )
        prior.check(env)
        self.env, self.prior = env, prior
        self.horizon = check_horizon(horizon)
        self.alpha = _check_alpha(alpha)
        self.gamma = check_gamma(gamma)
        if terminal_value is not None and not callable(terminal_value):
            raise TypeError(
                f"terminal_value must be callable (state -> [N] values), got {type(terminal_value).__name__}"
            )
        self.terminal_value = terminal_value
        self._checked = False

    def action_dist(self, t: int, state: torch.Tensor):
        """pi(a_t | s_t) for a batch of states."""
        d = self.prior.dist_at(t, state, self.env)
        if not self._checked:
            check_action_distribution(d, self.env.action_space, f"the prior {self.prior!r}")
            self._checked = True
        return d

    @property
    def optimality(self) -> Optimality:
        """The factors exp(r_t / alpha) (and the terminal one) of this model, under scale gamma^t."""
        return Optimality(self.alpha, self.gamma, self.terminal_value)

    def __call__(self, num_episodes: int, init_state: torch.Tensor | None = None) -> Trajectory:
        return rollout(
            self.env,
            self.action_dist,
            horizon=self.horizon,
            num_episodes=num_episodes,
            init_state=init_state,
            optimality=self.optimality,
        )

    def __repr__(self) -> str:
        return (
            f"TrajectoryModel({self.env.name}, {self.prior!r}, horizon={self.horizon}, "
            f"alpha={self.alpha}, gamma={self.gamma})"
        )


def _check_alpha(alpha: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(alpha, torch.Tensor):
        # A 0-d tensor (a temperature learned on the device) is kept as is: reading it back to check
        # or convert it would be a host-device sync on every model built in a training loop.
        if alpha.dim() != 0 or not alpha.is_floating_point():
            raise TypeError(f"a tensor alpha must be a 0-d floating tensor, got shape {tuple(alpha.shape)}")
        if alpha.device.type == "cpu" and not (alpha > 0 and torch.isfinite(alpha)):
            raise ValueError(f"alpha must be positive and finite, got {alpha!r}")
        return alpha.detach()
    try:
        value = float(alpha)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"alpha must be a positive finite number, got {alpha!r}") from exc
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"alpha must be positive and finite, got {alpha!r}")
    return value


def check_gamma(gamma: float) -> float:
    """gamma, the per-step continuation probability, is a number in (0, 1]."""
    try:
        value = float(gamma)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"gamma must be a number in (0, 1], got {gamma!r}") from exc
    if not (0 < value <= 1):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    return value
