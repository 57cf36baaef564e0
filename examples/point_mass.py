"""A user's own differentiable task, start to finish: a point mass steered past two obstacles.

Not one of Gymnasium's: it exists to show the :class:`~rl_as_inference.envs.FunctionalEnv`
contract on a fresh problem. Importing this module registers it as ``examples/PointMass-v0``, so

    rlai train --env examples.point_mass:examples/PointMass-v0 --algo svi

(run from the repository root, where ``examples`` is importable) trains it with trajectory SVI
through its dynamics, as ``rlai train --env examples.point_mass:PointMass --algo svi`` does with
the class itself as the factory.

The task: a unit mass at position p in the plane, velocity v, force a in [-1, 1]^2. Each step of
dt = 0.1, semi-implicit Euler with linear drag k = 0.5:

    v' = v + dt (a - k v),    p' = clip(p + dt v', -2, 2)

The reward, computed at the pre-step state, is

    r = -|p - g|^2 - 0.01 |a|^2 - sum_j w exp(-|p - c_j|^2 / (2 s^2))

with the goal g = (1, 0), two Gaussian obstacles c_j = (0, +-0.25) of weight w = 2 and width
s = 0.2 between the start region and the goal, so the shortest path is blocked. Episodes start at
rest at p ~ U([-1.1, -0.9] x [-0.1, 0.1]) and last 100 steps; nothing terminates. Every term is a
continuous function of (state, action), differentiable almost everywhere (the position clip is
continuous), so pathwise gradients of the expected return are unbiased: ``differentiable = True``,
which is what lets ``svi`` differentiate through the dynamics.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from rl_as_inference import envs
from rl_as_inference.envs import FunctionalEnv, Step

DT = 0.1
DRAG = 0.5
BOUND = 2.0
GOAL = (1.0, 0.0)
OBSTACLES = ((0.0, 0.25), (0.0, -0.25))
OBSTACLE_WEIGHT = 2.0
OBSTACLE_WIDTH = 0.2


class PointMass(FunctionalEnv):
    """State ``[*B, 4]`` = (x, y, vx, vy); action ``[*B, 2]`` force in [-1, 1]^2; observation = state."""

    state_shape = (4,)
    differentiable = True
    max_episode_steps = 100
    # reset draws U[low, high) per coordinate, in this order (velocities start at 0)
    reset_low = (-1.1, -0.1, 0.0, 0.0)
    reset_high = (-0.9, 0.1, 0.0, 0.0)
    state_low = (-BOUND, -BOUND, -3.0, -3.0)  # the box exploring starts draw from
    state_high = (BOUND, BOUND, 3.0, 3.0)

    def __init__(self, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        high = np.array([BOUND, BOUND, np.inf, np.inf], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._goal = torch.tensor(GOAL, device=self.device, dtype=self.dtype)
        self._obstacles = torch.tensor(OBSTACLES, device=self.device, dtype=self.dtype)

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> Step:
        position, velocity = state[..., :2], state[..., 2:]
        force = action.to(self.dtype).clamp(-1.0, 1.0)
        offsets = position[..., None, :] - self._obstacles  # [*B, 2 obstacles, 2]
        penalty = OBSTACLE_WEIGHT * torch.exp(-offsets.square().sum(-1) / (2 * OBSTACLE_WIDTH**2)).sum(-1)
        reward = -(position - self._goal).square().sum(-1) - 0.01 * force.square().sum(-1) - penalty
        velocity = velocity + DT * (force - DRAG * velocity)
        position = (position + DT * velocity).clamp(-BOUND, BOUND)
        next_state = torch.cat((position, velocity), dim=-1)
        return Step(next_state, reward, torch.zeros(reward.shape, dtype=torch.bool, device=reward.device))

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        return state


envs.register("examples/PointMass-v0", PointMass, max_episode_steps=100, override=True)
