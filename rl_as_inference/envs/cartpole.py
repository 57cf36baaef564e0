"""CartPole-v1 as a pure batched torch function (Gymnasium 1.x ``CartPoleEnv``, Euler integrator)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from .base import FunctionalEnv, Step, stack_state

# Constants are built with the same Python expressions as Gymnasium's so that float64 runs agree
# with it bit for bit (e.g. total mass is the float 0.1 + 1.0, not the literal 1.1).
GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_POLE + MASS_CART
LENGTH = 0.5  # half the pole's length
POLEMASS_LENGTH = MASS_POLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4


class CartPole(FunctionalEnv):
    """CartPole-v1: state ``[*B, 4]`` = (x, x_dot, theta, theta_dot); actions 0 (push left), 1 (push right).

    Explicit Euler: positions advance with the old velocities. Reward +1 on every step, the
    terminating one included; terminated when |x| > 2.4 or |theta| > 12 degrees on the new state.
    Differentiable in the state (the action is discrete).
    """

    id = "CartPole-v1"
    state_shape = (4,)
    reset_low = (-0.05,) * 4
    reset_high = (0.05,) * 4

    def __init__(self, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        high = np.array([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD * 2, np.inf], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> Step:
        x, x_dot, theta, theta_dot = state.unbind(-1)
        force = (action == 1).to(state.dtype) * (2 * FORCE_MAG) - FORCE_MAG
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        temp = (force + POLEMASS_LENGTH * theta_dot.square() * sintheta) / TOTAL_MASS
        thetaacc = (GRAVITY * sintheta - costheta * temp) / (
            LENGTH * (4.0 / 3.0 - MASS_POLE * costheta.square() / TOTAL_MASS)
        )
        xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
        x = x + TAU * x_dot
        x_dot = x_dot + TAU * xacc
        theta = theta + TAU * theta_dot
        theta_dot = theta_dot + TAU * thetaacc
        terminated = (
            (x < -X_THRESHOLD) | (x > X_THRESHOLD) | (theta < -THETA_THRESHOLD) | (theta > THETA_THRESHOLD)
        )
        reward = torch.ones_like(x)
        return Step(stack_state((x, x_dot, theta, theta_dot)), reward, terminated)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        return state
