"""Learned state-value baselines for the score-function part of ``TrajectoryELBO``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rl_as_inference.envs import FunctionalEnv
from rl_as_inference.guides.policies import ObservationEncoder, mlp

__all__ = ["ValueBaseline"]


class ValueBaseline(nn.Module):
    """V(s_t, t): an MLP over the observation of s_t and the remaining fraction of the horizon.

    Regressed onto the reward-to-go sum_{t' >= t} cost_t' by ``TrajectoryELBO(baseline="value")``
    and subtracted from it in the score-function terms. It depends on the state, never on a_t, so
    the gradient estimate stays unbiased. The time input matters: with a finite horizon the value
    of a state shrinks as the end approaches.
    """

    def __init__(self, env: FunctionalEnv, *, horizon: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.env, self.horizon = env, int(horizon)
        self.encoder = ObservationEncoder(env.observation_space)
        self.net = mlp([self.encoder.dim + 1, *hidden, 1], nn.Tanh).to(env.device)

    def forward(self, states: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Values ``[T+1, N]`` of states ``[T+1, N, ...]`` at times ``[T+1]``."""
        dtype = self.net[0].weight.dtype
        features = self.encoder(self.env.observe(states), dtype)
        remaining = (1.0 - times.to(dtype) / self.horizon).reshape(-1, *([1] * (features.dim() - 2)), 1)
        remaining = remaining.expand(*features.shape[:-1], 1)
        return self.net(torch.cat((features, remaining), dim=-1)).squeeze(-1)
