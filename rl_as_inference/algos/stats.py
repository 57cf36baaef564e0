"""Per-learner-step statistics averaged over each logging interval, kept on the device.

A statistic read only at the logging step aliases with anything periodic in the loop: with pi_k
refreshed every K learner steps and rows every multiple of K, MPO's KL(pi_k || pi) reads exactly 0 in
every row. Averaging every learner step of the interval shows what the constraints actually did.
"""

from __future__ import annotations

import torch

__all__ = ["IntervalMeans"]


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
        values = [torch.as_tensor(self.sums[k]).double().cpu() for k in keys]
        means = (torch.stack(values) / self.count).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(keys, means, strict=True))

    def state_dict(self) -> dict:
        """The partial sums (a resumed run logs the same means)."""
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.sums, self.count = dict(state["sums"]), int(state["count"])
