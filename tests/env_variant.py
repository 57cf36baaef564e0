"""A module that registers a Gymnasium id with constructor arguments, as a user's would: the way to
train on an env with arguments other than its registered ones (``--env tests.env_variant:ID``)."""

import gymnasium as gym

if "test/FrozenLakeDry-v1" not in gym.registry:
    gym.register(
        "test/FrozenLakeDry-v1",
        entry_point="gymnasium.envs.toy_text.frozen_lake:FrozenLakeEnv",
        kwargs={"map_name": "4x4", "is_slippery": False},
        max_episode_steps=100,
    )
