"""Pendulum-v1 as a pure batched torch function (Gymnasium 1.x ``PendulumEnv``, g = 10)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from .base import FunctionalEnv, Step, stack_state

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05


def angle_normalize(theta: torch.Tensor) -> torch.Tensor:
    """Map an angle to [-pi, pi) with a floor modulo, as numpy's ``%`` does."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


class Pendulum(FunctionalEnv):
    """Pendulum-v1: state ``[*B, 2]`` = (theta, theta_dot), theta never wrapped; action ``[*B, 1]`` torque.

    The reward is computed from the PRE-step state: -(norm(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)
    with u = clip(action, -2, 2); semi-implicit Euler with the speed clipped to +-8. Never
    terminates. Differentiable in state and action (zero gradient where the clips bind), and the
    return is continuous (the clips are, and so is norm(theta)^2 where the wrap jumps), so
    pathwise gradients of the expected return are unbiased: ``differentiable`` is True.

    Terms in the action follow the action's dtype, as numpy does: a float32 action in a float64 env
    gives ``3*u`` and ``0.001*u^2`` in float32, exactly as Gymnasium computes them.
    """

    id = "Pendulum-v1"
    state_shape = (2,)
    differentiable = True
    reset_low = (-math.pi, -1.0)
    reset_high = (math.pi, 1.0)
    state_low = (-math.pi, -MAX_SPEED)  # theta is never wrapped, but every angle has a representative here
    state_high = (math.pi, MAX_SPEED)

    def __init__(self, *, device=None, dtype=None, g: float = 10.0):
        super().__init__(device=device, dtype=dtype)
        self.g = float(g)
        high = np.array([1.0, 1.0, MAX_SPEED], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Box(-MAX_TORQUE, MAX_TORQUE, shape=(1,), dtype=np.float32)

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> Step:
        th, thdot = state.unbind(-1)
        u = action[..., 0].clamp(-MAX_TORQUE, MAX_TORQUE)
        costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (3 * self.g / (2 * 1.0) * torch.sin(th) + 3.0 / (1.0 * 1.0**2) * u) * DT
        newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED)
        newth = th + newthdot * DT
        next_state = stack_state((newth, newthdot)).to(self.dtype)
        return Step(next_state, (-costs).to(self.dtype), torch.zeros_like(th, dtype=torch.bool))

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        theta, thetadot = state.unbind(-1)
        return torch.stack((torch.cos(theta), torch.sin(theta), thetadot), dim=-1)
