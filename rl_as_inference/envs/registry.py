"""``envs.make``: build a functional environment by id: a port of Gymnasium's, or one registered.

Users add their own ids with :func:`register`, or an installed package adds them through the
``rl_as_inference.envs`` entry-point group (``name = "package.module:factory"``), loaded the first
time an id is looked up that nothing else knows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.metadata import entry_points

import gymnasium as gym
import torch

from .acrobot import Acrobot
from .base import FunctionalEnv
from .cartpole import CartPole
from .mountain_car import MountainCar, MountainCarContinuous
from .pendulum import Pendulum

__all__ = ["ENTRY_POINT_GROUP", "PORTED", "has_torch_env", "make", "register", "registered_ids"]

PORTED: dict[str, type[FunctionalEnv]] = {
    cls.id: cls for cls in (CartPole, Pendulum, MountainCar, MountainCarContinuous, Acrobot)
}
ENTRY_POINT_GROUP = "rl_as_inference.envs"
_REGISTERED: dict[str, tuple[Callable[..., FunctionalEnv], int | None]] = {}
_ID = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_entry_points_loaded = False


def register(
    id: str,
    factory: Callable[..., FunctionalEnv],
    *,
    max_episode_steps: int | None = None,
    override: bool = False,
) -> None:
    """Add a functional env under ``id``: :func:`make`, ``make_vec``, ``rlai train --env`` and
    every algorithm then build it with ``factory(device=..., dtype=..., **kwargs)``.

    Args:
        id: a name without ``:`` (e.g. ``"mypkg/PointMass-v0"``); a ported id cannot be replaced.
        factory: a ``FunctionalEnv`` subclass or a callable returning an instance.
        max_episode_steps: the time limit of an episode (None: the env's own attribute, if any).
        override: replace an id registered before (otherwise that is an error).

    Raises:
        ValueError: naming the id, if it is malformed, ported, or taken; TypeError if ``factory``
            is not callable.
    """
    if not isinstance(id, str) or not _ID.match(id):
        raise ValueError(f"env id {id!r} is not allowed; use letters, digits and _ . - / (no ':')")
    if id in PORTED:
        raise ValueError(f"env id {id!r} is a ported environment and cannot be replaced; pick another id")
    if id in _REGISTERED and not override:
        raise ValueError(f"env id {id!r} is already registered; pass override=True to replace it")
    if not callable(factory):
        raise TypeError(f"factory for {id!r} must be callable, got {type(factory).__name__}")
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1
    ):
        raise ValueError(f"max_episode_steps must be an int >= 1 or None, got {max_episode_steps!r}")
    _REGISTERED[id] = (factory, max_episode_steps)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in PORTED and point.name not in _REGISTERED:
            # the package is installed: loading its factory is the user's choice, like a Gymnasium plugin
            _REGISTERED[point.name] = (_LazyFactory(point), None)


class _LazyFactory:
    def __init__(self, point):
        self.point, self.factory = point, None

    def __call__(self, **kwargs) -> FunctionalEnv:
        if self.factory is None:
            self.factory = self.point.load()
        return self.factory(**kwargs)


def registered_ids() -> list[str]:
    """The ids :func:`make` builds besides the ported ones: registered, or from entry points."""
    _load_entry_points()
    return sorted(_REGISTERED)


def has_torch_env(id: str) -> bool:
    """Whether :func:`make` builds ``id``: a port, or an id registered here or by an entry point."""
    if id in PORTED:
        return True
    _load_entry_points()
    return id in _REGISTERED


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
            MountainCarContinuous-v0, Acrobot-v1), or one added by :func:`register` or an entry point.
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
    if not has_torch_env(id):
        raise ValueError(
            f"unknown environment id {id!r}: ported ids are {sorted(PORTED)}, registered ones "
            f"{registered_ids()} (add yours with envs.register(id, factory)); any other Gymnasium "
            f"environment can be wrapped (without re-simulation) by envs.from_gymnasium({id!r}, num_envs)"
        )
    exploring_starts = kwargs.pop("exploring_starts", 0.0)
    factory, limit = (PORTED[id], gym.spec(id).max_episode_steps) if id in PORTED else _REGISTERED[id]
    try:
        env = factory(device=device, dtype=dtype, **kwargs)
    except TypeError as exc:
        raise TypeError(f"invalid arguments for {id}: {exc}") from exc
    if not isinstance(env, FunctionalEnv):
        raise TypeError(f"the factory of {id!r} returned a {type(env).__name__}, not a FunctionalEnv")
    if limit is not None or id in PORTED:
        env.max_episode_steps = limit
    if id not in PORTED:
        env.id = id  # its name in runs, diagnostics and messages is the id it was made by
    return env.use_exploring_starts(exploring_starts)
