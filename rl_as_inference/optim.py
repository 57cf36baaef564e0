"""The optimizer every training loop of the library builds: Adam with torch's fused kernel, which
in a data-parallel run (``torch.distributed``) averages its gradients over the ranks first."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rl_as_inference import distributed as dp

__all__ = ["AveragingAdam", "adam"]

# Devices where torch.optim.Adam has a fused kernel for floating-point parameters.
_FUSED_DEVICES = ("cpu", "cuda")


def adam(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr=lr)``, fused into one kernel per step where torch has one.

    The algorithms here take one optimizer step per few hundred samples on small networks, where
    the default per-tensor Python loop of Adam costs more than the arithmetic: on one CPU thread a
    step of two 64x64 MLPs took 662 us per-tensor, 511 us with ``foreach`` and 224 us fused
    (torch 2.13). The fused kernel computes the same update up to float rounding; a run and its
    resumed continuation both use it, so resuming stays bit-identical. Parameters of any other
    device or dtype keep the default implementation.

    Args:
        params: tensors, or parameter groups (dicts with ``params`` and per-group options).
        lr: learning rate of groups that do not set their own.
    """
    params = list(params)
    if params and isinstance(params[0], dict):  # groups: their iterables are consumed once, here
        params = [dict(group, params=list(group["params"])) for group in params]
        tensors = [p for group in params for p in group["params"]]
    else:
        tensors = params
    fused = bool(tensors) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in tensors)
    cls = AveragingAdam if dp.active() and dp.world_size() > 1 else torch.optim.Adam
    return cls(params, lr=lr, fused=fused or None)


class AveragingAdam(torch.optim.Adam):
    """Adam whose ``step`` first replaces each gradient by its mean over the ranks of the process
    group (one all-reduce of all its parameters' gradients, flattened): data-parallel training,
    where every rank computes the gradient of its own share of the batch and all ranks then apply
    the same update to the same parameters. :func:`adam` builds one inside a process group."""

    def step(self, closure=None):
        dp.average_gradients([p for group in self.param_groups for p in group["params"]])
        return super().step(closure)
