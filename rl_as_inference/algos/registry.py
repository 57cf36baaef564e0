"""One registration per algorithm: what the runs, the command line and the diagnostics know of it.

Each algorithm module ends with ``ALGORITHM = Algorithm(...)``; :data:`rl_as_inference.algos.REGISTRY`
collects them. Nothing above the algorithms keeps per-algorithm tables: a new algorithm is its
module (config dataclass, ``train``, this declaration) plus a recipe section.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Algorithm", "last_logged", "logged_or_configured"]

Metrics = Mapping[str, Sequence[float]]


def last_logged(metrics: Metrics, column: str) -> float | None:
    """The last finite positive value of a ``metrics.csv`` column (None if there is none)."""
    values = [v for v in metrics.get(column, []) if math.isfinite(v) and v > 0]
    return values[-1] if values else None


def _number(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def logged_or_configured(column: str) -> Callable[[Mapping, Metrics], float | None]:
    """A temperature read as the config's fixed ``alpha``, else the last logged ``column`` (a learned
    or scheduled one), else the config's ``initial_alpha``."""

    def temperature(config: Mapping, metrics: Metrics) -> float | None:
        fixed = _number(config.get("alpha"))
        if fixed is not None and config.get("alpha_final") is None:
            return fixed
        return last_logged(metrics, column) or fixed or _number(config.get("initial_alpha"))

    return temperature


@dataclass(frozen=True)
class Algorithm:
    """A training algorithm as the layers above it see it.

    Attributes:
        name: the ``--algo`` name.
        config: its hyperparameter dataclass.
        train: ``train(config, *, callback=None, checkpointer=None) -> TrainResult``.
        temperature: ``(config dict, metrics columns) -> alpha`` in reward units: the temperature of
            the trajectory model whose posterior the trained policy approximates (exp(r / alpha) per
            step), or None when the run does not determine one.
        temperature_note: where that temperature comes from, in words (shown by ``rlai inspect``).
        elbo_note: what the ``elbo`` column of its ``metrics.csv`` is (None: it logs none).
        elbo_units: the units of that column.
        needs_dynamics: it re-simulates or differentiates the env (a torch env: a port or one added
            with :func:`rl_as_inference.envs.register`), so Gymnasium's own envs cannot serve it.
        action_spaces: the Gymnasium action-space types it takes, by class name.
        unbounded_box: it takes a Box with infinite bounds (a Gaussian acting on all of R^d); the
            others squash their actions into the box or draw their warm-up actions uniformly from it.
    """

    name: str
    config: type
    train: Callable
    temperature: Callable[[Mapping, Metrics], float | None]
    temperature_note: str
    elbo_note: str | None = None
    elbo_units: str = "nats"
    needs_dynamics: bool = False
    action_spaces: tuple[str, ...] = ("Box",)
    unbounded_box: bool = False
