"""Metric rows of the training loops: when a row is due, what every row holds, and per-learner-step
statistics averaged over each logging interval, kept on the device.

A statistic read only at the logging step aliases with anything periodic in the loop: with pi_k
refreshed every K learner steps and rows every multiple of K, MPO's KL(pi_k || pi) reads exactly 0 in
every row. Averaging every learner step of the interval shows what the constraints actually did.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from rl_as_inference import distributed as dp

__all__ = ["IntervalMeans", "check_finite", "emit_row", "finish", "row_due"]


def row_due(loop: dict, env_steps: int, config) -> bool:
    """Whether a metric row is due: at each multiple of ``config.log_every`` env steps and at the end
    of the budget. Moves ``loop["next_log"]`` to the next multiple past ``env_steps``, so the steps
    skipped before ``learning_starts`` leave no catch-up rows one step apart."""
    if env_steps < loop["next_log"] and env_steps < config.total_env_steps:
        return False
    loop["next_log"] = (env_steps // config.log_every + 1) * config.log_every
    return True


def check_finite(policy: torch.nn.Module, env_steps: int) -> None:
    """Raise a ValueError naming the first non-finite parameter of ``policy``, if there is one.

    One host read for all parameters. On the CPU a NaN already raises where it arises (the policy's
    distributions validate their arguments); on an accelerator they do not (``validate_on``), and
    this check, made at every metric row, is what stops a diverged run with a clear message.
    """
    params = list(policy.parameters())
    if not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        return
    name = next(n for n, p in policy.named_parameters() if not bool(torch.isfinite(p).all()))
    raise ValueError(
        f"training diverged by env step {env_steps}: the policy's parameter {name!r} holds NaN or "
        "inf; lower the learning rates"
    )


def emit_row(result, callback: Callable[[dict], None] | None, data, start: float, stats: dict) -> None:
    """Append the row ``env_steps, wall_time, return`` + ``stats`` to ``result.metrics`` and hand it
    to ``callback``; ``return`` is the mean of the episodes ``data`` finished since the last row.
    First checks that ``result.policy`` is finite (:func:`check_finite`)."""
    check_finite(result.policy, data.env_steps)
    row = {
        "env_steps": data.env_steps,
        "wall_time": time.perf_counter() - start,
        "return": data.pop_mean_return(),
    } | stats
    if dp.world_size() > 1:  # a data-parallel run logs the mean over ranks (of those with episodes)
        numbers = {k: v for k, v in row.items() if k != "env_steps" and isinstance(v, int | float)}
        row |= dp.mean_of_finite(numbers)
    result.metrics.append(row)
    if callback is not None:
        callback(row)


def finish(result, data, checkpointer, start: float):
    """End a training loop: record steps and time in ``result``, write the final training state
    (a resume of a finished run then stops at once), close the envs; returns ``result``."""
    result.env_steps, result.wall_time = data.env_steps, time.perf_counter() - start
    checkpointer.save(data.env_steps, result.wall_time)
    data.close()
    return result


class IntervalMeans:
    """Running sums of named statistics since the last :meth:`pop`; adding never reads the device."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0

    def add(self, stats: dict[str, torch.Tensor | float]) -> None:
        """Add one learner step's statistics (detached tensors or floats)."""
        for key, value in stats.items():
            value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1

    def pop(self) -> dict[str, float]:
        """The means since the last call (one host read for all of them), then start over."""
        if not self.count:
            return {}
        keys = list(self.sums)
        # Stack where the sums live and copy once: a .cpu() per statistic would sync once per key.
        device = next((v.device for v in self.sums.values() if isinstance(v, torch.Tensor)), None)
        values = [torch.as_tensor(self.sums[k], dtype=torch.float64, device=device) for k in keys]
        means = (torch.stack(values) / self.count).cpu().tolist()
        self.sums, self.count = {}, 0
        return dict(zip(keys, means, strict=True))

    def state_dict(self) -> dict:
        """The partial sums (a resumed run logs the same means)."""
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.sums, self.count = dict(state["sums"]), int(state["count"])
