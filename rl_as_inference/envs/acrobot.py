"""Acrobot-v1 as a pure batched torch function (Gymnasium 1.x ``AcrobotEnv``, "book" dynamics)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from .base import FunctionalEnv, Step, stack_state

DT = 0.2
LINK_LENGTH_1 = 1.0
LINK_MASS_1 = 1.0
LINK_MASS_2 = 1.0
LINK_COM_POS_1 = 0.5
LINK_COM_POS_2 = 0.5
LINK_MOI = 1.0
MAX_VEL_1 = 4 * math.pi
MAX_VEL_2 = 9 * math.pi
PI = math.pi


def _dsdt(s: tuple[torch.Tensor, ...], torque: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Time derivative of (theta1, theta2, dtheta1, dtheta2) under a torque on the second joint.

    Written in the same operation order as Gymnasium so float64 results agree to the last bit
    wherever torch's sin/cos agree with the C library's.
    """
    m1, m2, l1 = LINK_MASS_1, LINK_MASS_2, LINK_LENGTH_1
    lc1, lc2 = LINK_COM_POS_1, LINK_COM_POS_2
    I1 = I2 = LINK_MOI
    g = 9.8
    theta1, theta2, dtheta1, dtheta2 = s
    cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos2) + I1 + I2
    d2 = m2 * (lc2**2 + l1 * lc2 * cos2) + I2
    phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - PI / 2.0)
    phi1 = (
        -m2 * l1 * lc2 * dtheta2**2 * sin2
        - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin2
        + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - PI / 2)
        + phi2
    )
    ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin2 - phi2) / (
        m2 * lc2**2 + I2 - d2**2 / d1
    )
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return dtheta1, dtheta2, ddtheta1, ddtheta2


def _rk4(s: tuple[torch.Tensor, ...], torque: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One classic Runge-Kutta step of length DT (no clipping inside the stages)."""
    dt, dt2 = DT, DT / 2.0
    k1 = _dsdt(s, torque)
    k2 = _dsdt(tuple(y + dt2 * k for y, k in zip(s, k1, strict=True)), torque)
    k3 = _dsdt(tuple(y + dt2 * k for y, k in zip(s, k2, strict=True)), torque)
    k4 = _dsdt(tuple(y + dt * k for y, k in zip(s, k3, strict=True)), torque)
    return tuple(
        y + dt / 6.0 * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(s, k1, k2, k3, k4, strict=True)
    )


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Wrap into [-pi, pi] by adding or subtracting 2pi, as Gymnasium's loop does.

    Two unrolled passes reproduce the loop exactly for every state a step can reach from a wrapped
    state; anything farther out is finished with a floor division (same value up to rounding).
    """
    diff = PI - (-PI)
    for _ in range(2):
        x = torch.where(x > PI, x - diff, x)
        x = torch.where(x < -PI, x + diff, x)
    x = torch.where(x > PI, x - diff * torch.ceil((x - PI) / diff), x)
    return torch.where(x < -PI, x + diff * torch.ceil((-PI - x) / diff), x)


class Acrobot(FunctionalEnv):
    """Acrobot-v1: state ``[*B, 4]`` = (theta1, theta2, dtheta1, dtheta2); actions 0, 1, 2 = torque -1, 0, +1.

    One RK4 step of 0.2 s, angles wrapped into [-pi, pi], velocities clipped to 4pi and 9pi.
    Terminated when -cos(theta1) - cos(theta1 + theta2) > 1; reward -1, or 0 on the terminating
    step. Reset draws are rounded to float32, as Gymnasium stores them. Differentiable in the state
    away from the wrap.
    """

    id = "Acrobot-v1"
    state_shape = (4,)
    reset_low = (-0.1,) * 4
    reset_high = (0.1,) * 4
    state_low = (-math.pi, -math.pi, -MAX_VEL_1, -MAX_VEL_2)
    state_high = (math.pi, math.pi, MAX_VEL_1, MAX_VEL_2)

    def __init__(self, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        high = np.array([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3)

    def _initial_from_uniform(self, draws: torch.Tensor) -> torch.Tensor:
        return draws.float().to(draws.dtype)

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> Step:
        torque = (action - 1).to(state.dtype)
        t1, t2, dt1, dt2 = _rk4(state.unbind(-1), torque)
        t1, t2 = wrap_angle(t1), wrap_angle(t2)
        dt1 = dt1.clamp(-MAX_VEL_1, MAX_VEL_1)
        dt2 = dt2.clamp(-MAX_VEL_2, MAX_VEL_2)
        terminated = -torch.cos(t1) - torch.cos(t2 + t1) > 1.0
        reward = terminated.to(state.dtype) - 1.0
        return Step(stack_state((t1, t2, dt1, dt2)), reward, terminated)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        t1, t2, dt1, dt2 = state.unbind(-1)
        return torch.stack((torch.cos(t1), torch.sin(t1), torch.cos(t2), torch.sin(t2), dt1, dt2), dim=-1)
