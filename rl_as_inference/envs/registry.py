"""``envs.make``: build a ported functional environment by its Gymnasium id."""

from __future__ import annotations

import gymnasium as gym
import torch

from .acrobot import Acrobot
from .base import FunctionalEnv
from .cartpole import CartPole
from .mountain_car import MountainCar, MountainCarContinuous
from .pendulum import Pendulum

PORTED: dict[str, type[FunctionalEnv]] = {
    cls.id: cls for cls in (CartPole, Pendulum, MountainCar, MountainCarContinuous, Acrobot)
}


def make(
    id: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs,
) -> FunctionalEnv:
    """Build the torch port of a Gymnasium environment.

    Args:
        id: a Gymnasium id among :data:`PORTED` (CartPole-v1, Pendulum-v1, MountainCar-v0,
            MountainCarContinuous-v0, Acrobot-v1).
        device: torch device for states and actions (default CPU; ``"auto"`` picks CUDA when present).
        dtype: torch.float32 (default, fast) or torch.float64 (bit-faithful to Gymnasium on CPU).
        **kwargs: environment parameters (e.g. ``g`` for Pendulum-v1), and ``exploring_starts``:
            the share of resets drawn uniformly from the state box
            (:meth:`FunctionalEnv.use_exploring_starts`; 0 by default).

    Returns:
        A :class:`FunctionalEnv` whose ``max_episode_steps`` is the time limit of Gymnasium's registry.
    """
    if not isinstance(id, str):
        raise TypeError(f"env id must be a string, got {type(id).__name__}")
    if id not in PORTED:
        raise ValueError(
            f"unknown environment id {id!r}: ported ids are {sorted(PORTED)}; any other Gymnasium "
            f"environment can be wrapped (without re-simulation) by envs.from_gymnasium({id!r}, num_envs)"
        )
    exploring_starts = kwargs.pop("exploring_starts", 0.0)
    try:
        env = PORTED[id](device=device, dtype=dtype, **kwargs)
    except TypeError as exc:
        raise TypeError(f"invalid arguments for {id}: {exc}") from exc
    env.max_episode_steps = gym.spec(id).max_episode_steps
    return env.use_exploring_starts(exploring_starts)
