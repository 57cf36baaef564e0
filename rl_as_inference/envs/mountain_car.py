"""MountainCar-v0 and MountainCarContinuous-v0 as pure batched torch functions (Gymnasium 1.x)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from .base import FunctionalEnv, Step, stack_state

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
    state_low = (MIN_POSITION, -MAX_SPEED)
    state_high = (MAX_POSITION, MAX_SPEED)

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
        velocity = velocity + (
            (action - 1).to(state.dtype) * self.FORCE + torch.cos(3 * position) * (-GRAVITY)
        )
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED)
        position, velocity = _apply_walls(position, velocity)
        terminated = (position >= self.GOAL_POSITION) & (velocity >= 0)
        return Step(stack_state((position, velocity)), torch.full_like(position, -1.0), terminated)


class MountainCarContinuous(_MountainCarBase):
    """MountainCarContinuous-v0: state ``[*B, 2]`` = (position, velocity); action ``[*B, 1]`` force.

    v += clip(a, -1, 1) 0.0015 - 0.0025 cos(3p), then the same clips and wall as MountainCar-v0; goal
    at p >= 0.45 with v >= 0; reward 100 on reaching the goal minus 0.1 a^2 with the UNCLIPPED action.

    Gymnasium stores this env's state in float32 and mixes numpy float32 scalars with Python floats,
    which numpy 2 rounds to float32 (NEP 50). With ``float32_state=True`` (the default) a float64
    env replays that arithmetic: see :func:`_gymnasium_float32_step`. ``float32_state=False`` keeps
    plain float64 arithmetic (smooth in the state, for gradient checks).

    Torch gradients flow through :meth:`step`, but the env is not ``differentiable``: the +100 at
    the flag, the termination there and the left wall's velocity reset are jumps in the action,
    whose contribution to d E[return] / d theta pathwise gradients miss (one step from
    (0.4485, 0.002) with a ~ N(0, 1): pathwise ~0, truth 39.9), so the ELBO takes score-function
    gradients here and ``svi`` refuses it.
    """

    id = "MountainCarContinuous-v0"
    differentiable = False  # jumps at the flag and the wall: pathwise gradients are biased
    POWER = 0.0015
    GOAL_POSITION = 0.45

    def __init__(self, *, device=None, dtype=None, float32_state: bool = True):
        super().__init__(device=device, dtype=dtype)
        self.float32_state = bool(float32_state)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> Step:
        a = action[..., 0]
        if self.float32_state and state.dtype == torch.float64:
            position, velocity, terminated = _gymnasium_float32_step(state, a, self.POWER, self.GOAL_POSITION)
        else:
            position, velocity = state.unbind(-1)
            force = a.clamp(-1.0, 1.0).to(state.dtype)
            velocity = velocity + force * self.POWER - GRAVITY * torch.cos(3 * position)
            velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED)
            position, velocity = _apply_walls(position, velocity)
            terminated = (position >= self.GOAL_POSITION) & (velocity >= 0)
        # The penalty uses the unclipped action, in float64 (Gymnasium's math.pow).
        a64 = a.to(position.dtype)
        reward = torch.where(terminated, 100.0, 0.0).to(position.dtype) - a64.square() * 0.1
        return Step(stack_state((position, velocity)).to(self.dtype), reward.to(self.dtype), terminated)


def _r32(x: torch.Tensor) -> torch.Tensor:
    """Round float64 values to the nearest float32 (kept as float64)."""
    return x.float().double()


def _gymnasium_float32_step(
    state: torch.Tensor, a: torch.Tensor, power: float, goal: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MountainCarContinuous-v0's step with Gymnasium's exact float32/float64 mix, in float64 tensors.

    Gymnasium keeps the state as a float32 array, except right after reset (float64). A numpy
    float32 scalar combined with a Python float stays float32 and a single float32 operation equals
    the float64 operation rounded once to float32, so each float32 operation below is the float64
    one followed by :func:`_r32`. ``stored`` marks float32-representable states (every state after
    the first step); a float64 reset draw is not one (probability 2^-29).
    """
    position, velocity = state.unbind(-1)
    stored = (_r32(position) == position) & (_r32(velocity) == velocity)
    act32 = a.dtype == torch.float32
    a64 = a.double()
    three_p = torch.where(stored, _r32(3 * position), 3 * position)
    c = GRAVITY * torch.cos(three_p)  # a Python float in Gymnasium (math.cos)
    clipped = (a64 > 1.0) | (a64 < -1.0)
    # Where min(max(a, -1), 1) clips, force is the Python float +-1.0: the increment is a Python
    # float, rounded to float32 when added to a float32 velocity. Elsewhere force keeps the
    # action's dtype: a float32 action gives a float32 increment.
    d_clip = torch.sign(a64) * power - c
    d_clip = torch.where(stored, _r32(d_clip), d_clip)
    d_in = _r32(_r32(a64 * float(np.float32(power))) - _r32(c)) if act32 else a64 * power - c
    dv = torch.where(clipped, d_clip, d_in)
    v_f32 = stored & (clipped | act32)  # the velocity is a float32 scalar after `+=`
    velocity = torch.where(v_f32, _r32(velocity + dv), velocity + dv)
    v_limit = torch.where(v_f32, float(np.float32(MAX_SPEED)), MAX_SPEED)
    v_clipped = (velocity > v_limit) | (velocity < -v_limit)
    velocity = torch.where(v_clipped, torch.sign(velocity) * MAX_SPEED, velocity)
    p_f32 = stored & (v_f32 | v_clipped)  # float32 position plus a float32 or Python-float velocity
    position = torch.where(
        p_f32, _r32(position + torch.where(p_f32, _r32(velocity), velocity)), position + velocity
    )

    def limit(x: float) -> torch.Tensor:  # NEP 50: a float32 scalar compares with float32(x)
        return torch.where(p_f32, float(np.float32(x)), x)

    hi, lo = position > limit(MAX_POSITION), position < limit(MIN_POSITION)
    position = torch.where(hi, MAX_POSITION, torch.where(lo, MIN_POSITION, position))
    at_wall = lo | (position == limit(MIN_POSITION))
    velocity = torch.where(at_wall & (velocity < 0), torch.zeros_like(velocity), velocity)
    goal_limit = torch.where(p_f32 & ~(hi | lo), float(np.float32(goal)), goal)
    terminated = (position >= goal_limit) & (velocity >= 0)
    return _r32(position), _r32(velocity), terminated
