"""The torch ports in Gymnasium's own registry, under the ``rl_as_inference/`` namespace.

After ``import rl_as_inference`` (or with Gymnasium's ``module:id`` form, which imports the module
first: ``gymnasium.make("rl_as_inference:rl_as_inference/Pendulum-v1")``)::

    gymnasium.make("rl_as_inference/Pendulum-v1")            # one env, numpy in and out
    gymnasium.make_vec("rl_as_inference/CartPole-v1", 4096)  # the batched torch VectorEnv

``make_vec`` uses the registered vector entry point, :func:`rl_as_inference.envs.make_vec`: one
batched torch env stepping all sub-envs at once (torch tensors in and out, on ``device=``), not
N Python copies. ``gymnasium.make`` gives :class:`GymnasiumEnv`, one sub-env behind Gymnasium's
single-env API with numpy observations, seeded as Gymnasium seeds its own classic-control envs
(the same initial states for the same seed). Keyword arguments of ``make``/``make_vec`` reach the
port (``g=`` for Pendulum, ``device=``, ``dtype=``...); the time limit is Gymnasium's own.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .base import FunctionalEnv
from .registry import PORTED, make
from .vector import FunctionalVectorEnv, make_vec

__all__ = ["NAMESPACE", "GymnasiumEnv", "register_ported"]

NAMESPACE = "rl_as_inference"


class GymnasiumEnv(gym.Env):
    """One copy of a :class:`FunctionalEnv` behind Gymnasium's single-env API (numpy in and out).

    ``reset(seed=...)`` draws the initial state from the env's ``np_random`` exactly as the
    Gymnasium original does; ``step`` applies the port's dynamics (float64 by default here, the
    precision of Gymnasium's classic-control code). Built by ``gymnasium.make("rl_as_inference/ID")``.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_id: str | None = None, *, env: FunctionalEnv | None = None, **kwargs: Any):
        if env is None:
            kwargs.setdefault("dtype", torch.float64)
            env = make(env_id, **kwargs)
        elif kwargs or env_id is not None:
            raise TypeError("pass either an env id (and its parameters) or env=, not both")
        self.env = env
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self._state: torch.Tensor | None = None
        self._generator: torch.Generator | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._state = self.env.reset_numpy([self.np_random])
        # a stochastic env's transitions come from a torch stream seeded by this env's np_random
        # (deterministic ones leave np_random as Gymnasium's originals do)
        self._generator = None
        if self.env.stochastic:
            self._generator = torch.Generator(device=self.env.device)
            self._generator.manual_seed(int(self.np_random.integers(2**63)))
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._state is None:
            raise RuntimeError(f"{self.env.name}: call reset() before step()")
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        dtype = torch.long if discrete else self.env.dtype
        a = torch.as_tensor(np.asarray(action), dtype=dtype, device=self.env.device)
        a = a.reshape(1) if discrete else a.reshape(1, *self.action_space.shape)
        out = self.env.step(self._state, a, generator=self._generator)
        self._state = out.state
        return self._obs(), float(out.reward[0]), bool(out.terminated[0]), False, {}

    def _obs(self) -> np.ndarray:
        obs = self.env.observe(self._state, dtype=None)[0].detach().cpu().numpy()
        return obs.astype(self.observation_space.dtype, copy=False)


def _vector_entry_point(env_id: str, num_envs: int, **kwargs: Any) -> FunctionalVectorEnv:
    return make_vec(env_id, num_envs, **kwargs)


def _single_entry_point(env_id: str, **kwargs: Any) -> GymnasiumEnv:
    return GymnasiumEnv(env_id, **kwargs)


def register_ported() -> None:
    """Register every ported id as ``rl_as_inference/ID`` (idempotent; done on import)."""
    for env_id in PORTED:
        name = f"{NAMESPACE}/{env_id}"
        if name in gym.registry:
            continue
        gym.register(
            id=name,
            entry_point=functools.partial(_single_entry_point, env_id),
            vector_entry_point=functools.partial(_vector_entry_point, env_id),
            max_episode_steps=gym.spec(env_id).max_episode_steps,
        )
