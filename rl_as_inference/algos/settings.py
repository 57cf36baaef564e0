"""Settings every training algorithm shares, declared once.

Each algorithm's config dataclass subclasses :class:`RunSettings` and adds its own hyperparameters;
it redeclares a shared field only to change its default (the field keeps its place), so the
meaning of ``seed`` or ``exploring_starts`` is written in one place for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunSettings"]


@dataclass
class RunSettings:
    """What to train on, for how long, from which starts, with which inputs, where, and how often to log."""

    env: str = "Pendulum-v1"  # a ported Gymnasium id
    total_env_steps: int = 20_000  # the training budget, in environment steps
    num_envs: int = 1  # parallel functional envs collecting data
    exploring_starts: float = 0.0  # share of training resets drawn anywhere in the state box (0: p(s_0))
    rescale_obs: bool = False  # map bounded observation coordinates onto [-1, 1] (ObservationEncoder)
    seed: int = 0
    device: str = "cpu"
    log_every: int = 1_000  # env steps between metric rows
