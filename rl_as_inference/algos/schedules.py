"""Learning-rate schedules of the training loops, tied to the env-step budget."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["decay_learning_rates"]


def decay_learning_rates(groups: Iterable[tuple[dict, float]], env_steps: int, total_env_steps: int) -> None:
    """Linear decay to 0 over the budget: each ``(param_group, base_lr)`` pair's group gets the
    learning rate ``base_lr * max(0, 1 - env_steps / total_env_steps)``. Late updates then stop
    moving a policy that already solves its task (the annealing of PPO and V-MPO setups)."""
    remaining = max(0.0, 1.0 - env_steps / total_env_steps)
    for group, base_lr in groups:
        group["lr"] = base_lr * remaining
