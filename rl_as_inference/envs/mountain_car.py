"""MountainCar-v0 and MountainCarContinuous-v0 as pure batched torch functions (Gymnasium 1.x)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from .base import FunctionalEnv, Step

MIN_POSITION = -1.2
MAX_POSITION = 0.6
MAX_SPEED = 0.07
GRAVITY = 0.0025


def _apply_walls(position: torch.Tensor, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance the position, clip it to the track, and stop a car that hits the left wall."""
    position = (position + velocity).clamp(MIN_POSITION, MAX_POSITION)
    velocity = torch.where((position == MIN_POSITION) & (velocity < 0), torch.zeros_like(velocity), velocity)
    return position, velocity


class _MountainCarBase(FunctionalEnv):
    state_shape = (2,)
    reset_low = (-0.6,)
    reset_high = (-0.4,)

    def __init__(self, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        low = np.array([MIN_POSITION, -MAX_SPEED], dtype=np.float32)
        high = np.array([MAX_POSITION, MAX_SPEED], dtype=np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

    def _initial_from_uniform(self, draws: torch.Tensor) -> torch.Tensor:
        return torch.cat((draws, torch.zeros_like(draws)), dim=-1)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        return state


class MountainCar(_MountainCarBase):
    """MountainCar-v0: state ``[*B, 2]`` = (position, velocity); actions 0 left, 1 none, 2 right.

    v += (a - 1) 0.001 - 0.0025 cos(3p), clipped to +-0.07; p += v clipped to [-1.2, 0.6]; a car at
    the left wall moving left stops. Terminated when p >= 0.5 and v >= 0; reward -1 every step.
    """

    id = "MountainCar-v0"
    FORCE = 0.001
    GOAL_POSITION = 0.5

    def __init__(self, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        self.action_space = gym.spaces.Discrete(3)

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> Step:
        position, velocity = state.unbind(-1)
        velocity = velocity + ((action - 1).to(state.dtype) * self.FORCE + torch.cos(3 * position) * (-GRAVITY))
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED)
        position, velocity = _apply_walls(position, velocity)
        terminated = (position >= self.GOAL_POSITION) & (velocity >= 0)
        return Step(torch.stack((position, velocity), dim=-1), torch.full_like(position, -1.0), terminated)


class MountainCarContinuous(_MountainCarBase):
    """MountainCarContinuous-v0: state ``[*B, 2]`` = (position, velocity); action ``[*B, 1]`` force.

    v += clip(a, -1, 1) 0.0015 - 0.0025 cos(3p), then the same clips and wall as MountainCar-v0; goal
    at p >= 0.45 with v >= 0; reward 100 on reaching the goal minus 0.1 a^2 with the UNCLIPPED action.

    Gymnasium stores this env's state in float32 after every step while computing in float64 in
    between. With ``float32_state=True`` (the default) a float64 env rounds at the same points and
    reproduces Gymnasium bit for bit: the state is rounded to float32 after each step, ``3 * p`` is
    computed in float32 for a float32-stored position (not on the float64 state right after reset),
    and an unclipped float32 action's ``a * 0.0015`` is a float32 product. ``float32_state=False``
    keeps plain float64 arithmetic (smooth in the state, for gradient checks).
    """

    id = "MountainCarContinuous-v0"
    differentiable = True
    POWER = 0.0015
    GOAL_POSITION = 0.45

    def __init__(self, *, device=None, dtype=None, float32_state: bool = True):
        super().__init__(device=device, dtype=dtype)
        self.float32_state = bool(float32_state)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> Step:
        position, velocity = state.unbind(-1)
        a = action[..., 0]
        emulate = self.float32_state and state.dtype == torch.float64
        if emulate:
            p32 = position.float()
            three_p = torch.where(p32.double() == position, (3 * p32).double(), 3 * position)
        else:
            three_p = 3 * position
        # min(max(a, -1), 1) in Gymnasium yields the Python float +-1.0 where it clips, and the
        # action itself (in its own dtype) elsewhere.
        push = torch.where(
            a > 1.0,
            torch.full_like(position, self.POWER),
            torch.where(a < -1.0, torch.full_like(position, -self.POWER), (a * self.POWER).to(position.dtype)),
        )
        velocity = velocity + (push - GRAVITY * torch.cos(three_p))
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED)
        position, velocity = _apply_walls(position, velocity)
        terminated = (position >= self.GOAL_POSITION) & (velocity >= 0)
        a64 = a.to(position.dtype)
        reward = torch.where(terminated, 100.0, 0.0).to(position.dtype) - a64.square() * 0.1
        next_state = torch.stack((position, velocity), dim=-1)
        if emulate:
            next_state = next_state.float().double()
        return Step(next_state.to(self.dtype), reward.to(self.dtype), terminated)
