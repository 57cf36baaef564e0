"""Composite Gymnasium observations as the flat vectors the networks take.

The policies and critics here are MLPs over a 1-D Box (or a Discrete index, one-hot encoded).
Gymnasium's toy-text Blackjack-v1 observes a ``Tuple(Discrete(32), Discrete(11), Discrete(2))``,
goal-conditioned tasks a ``Dict`` of Boxes, others ``MultiDiscrete`` or ``MultiBinary`` vectors.
Each of those is flattened by Gymnasium's own ``gymnasium.spaces.flatten`` (a Discrete part
one-hot, a Box part as is, parts concatenated in the space's order) into float32: collection
wraps each sub-env in ``FlattenObservation`` (:func:`flatten_observations`), and a loaded policy
flattens the observations a user hands it the same way (:func:`flat_observation`), so the
network sees one layout in training and in use. A composite space with an image inside (a Box
of more than one dimension) is not flattened: an MLP over its pixels is rarely what was meant,
and the caller names the space in its refusal.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

__all__ = ["flat_observation", "flat_observation_space", "flatten_observations", "is_composite"]

_COMPOSITE = (gym.spaces.Tuple, gym.spaces.Dict, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


def _flat_parts(space: gym.Space) -> bool:
    if isinstance(space, gym.spaces.Tuple):
        return all(_flat_parts(part) for part in space.spaces)
    if isinstance(space, gym.spaces.Dict):
        return all(_flat_parts(part) for part in space.spaces.values())
    if isinstance(space, gym.spaces.Box):
        return len(space.shape) <= 1
    return isinstance(space, gym.spaces.Discrete | gym.spaces.MultiDiscrete | gym.spaces.MultiBinary)


def is_composite(space: gym.Space) -> bool:
    """Whether ``space`` is a Tuple, Dict, MultiDiscrete or MultiBinary of Discrete parts and Boxes
    of at most one dimension: the observation spaces that are flattened for the networks."""
    return isinstance(space, _COMPOSITE) and _flat_parts(space)


def flat_observation_space(space: gym.Space) -> gym.spaces.Box:
    """The float32 Box of ``space``'s flat vectors: Gymnasium's ``flatten_space`` (whose dtype
    follows the parts': int64 for Discretes), its bounds cast to float32."""
    flat = gym.spaces.flatten_space(space)
    return gym.spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32)


def flatten_observations(env: gym.Env) -> gym.Env:
    """``env`` with a composite observation space wrapped to observe its flat float32 vector;
    any other env as it is. A function of the env, as ``gymnasium.make_vec(..., wrappers=[...])``
    takes (module-level, so async sub-processes can unpickle it)."""
    space = env.observation_space
    if not is_composite(space):
        return env
    return gym.wrappers.TransformObservation(
        env, lambda obs: _flatten(space, obs), flat_observation_space(space)
    )


def _flatten(space: gym.Space, obs) -> np.ndarray:
    return np.asarray(gym.spaces.flatten(space, obs), dtype=np.float32)


def flat_observation(space: gym.Space, obs) -> np.ndarray:
    """One observation of the composite ``space`` as the float32 vector of
    :func:`flatten_observations` (a Discrete part one-hot)."""
    if not space.contains(obs):
        raise ValueError(f"observation {obs!r} is not an element of {space}")
    return _flatten(space, obs)
