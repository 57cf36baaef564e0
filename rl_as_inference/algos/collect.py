"""Batched data collection into a device replay buffer, shared by the off-policy algorithms."""

from __future__ import annotations

import math

import gymnasium as gym
import torch

from rl_as_inference import envs
from rl_as_inference.replay import ReplayBuffer, transition_fields

__all__ = ["Collector"]


class Collector:
    """Steps ``num_envs`` copies of a ported env and stores every transition in a replay buffer.

    The vector env autoresets in SAME_STEP mode, whose ``info["final_obs"]`` is s_{t+1} for every
    row, so each stored transition is the one that happened (truncations are not terminations and
    still bootstrap). Episode returns are tracked on the device; reading them back happens only
    when a metric row is made.

    Args:
        env_id: a ported Gymnasium id with a Box action space.
        num_envs: parallel environments (transitions per ``step``).
        device: where the envs and the buffer live.
        seed: seeds the vector env and the generator of random actions and batch sampling.
        buffer_size: replay capacity.
        store_states: also store the functional-env state s_t (algorithms that re-simulate from it).
        algorithm: its name, for error messages.
    """

    def __init__(
        self,
        env_id: str,
        *,
        num_envs: int,
        device: torch.device,
        seed: int,
        buffer_size: int,
        store_states: bool = False,
        algorithm: str = "this algorithm",
    ):
        self.venv = envs.make_vec(env_id, num_envs, device=device, autoreset_mode="SameStep")
        self.env = self.venv.env
        self.action_space = self.venv.single_action_space
        self.observation_space = self.venv.single_observation_space
        if not isinstance(self.action_space, gym.spaces.Box):
            raise ValueError(
                f"{algorithm} needs a continuous (Box) action space; {env_id} has {self.action_space}"
            )
        self.device, self.num_envs, self.store_states = device, num_envs, store_states
        fields = transition_fields(self.observation_space.shape, self.action_space.shape)
        if store_states:
            fields["state"] = (self.env.state_shape, self.env.dtype)
        self.buffer = ReplayBuffer(buffer_size, fields, device=device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.low = torch.as_tensor(self.action_space.low, device=device)
        self.high = torch.as_tensor(self.action_space.high, device=device)
        self.obs, _ = self.venv.reset(seed=seed)
        self.episode_return = torch.zeros(num_envs, device=device)
        self.finished: list[
            torch.Tensor
        ] = []  # since the last metric row: returns of ended episodes, else NaN
        self.env_steps = 0

    def step(self, policy: torch.nn.Module | None) -> None:
        """One batched step with actions from ``policy`` (sampled), or uniform in the box if None."""
        state = self.venv.state.clone() if self.store_states else None
        if policy is None:
            u = torch.rand(
                (self.num_envs, *self.action_space.shape), generator=self.generator, device=self.device
            )
            action = self.low + (self.high - self.low) * u
        else:
            with torch.no_grad():
                action = policy(self.obs).sample()
        next_obs, reward, terminated, truncated, info = self.venv.step(action)
        extra = {"state": state} if self.store_states else {}
        self.buffer.add(
            obs=self.obs,
            action=action,
            reward=reward,
            next_obs=info["final_obs"],
            terminated=terminated,
            **extra,
        )
        self.episode_return += reward
        done = terminated | truncated
        self.finished.append(
            torch.where(done, self.episode_return, torch.full_like(self.episode_return, math.nan))
        )
        self.episode_return = torch.where(done, torch.zeros_like(self.episode_return), self.episode_return)
        self.obs = next_obs
        self.env_steps += self.num_envs

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A uniform batch of stored transitions."""
        return self.buffer.sample(batch_size, self.generator)

    def pop_mean_return(self) -> float:
        """Mean return of the episodes that ended since the last call (NaN if none); one host read."""
        if not self.finished:
            return math.nan
        returns = torch.cat(self.finished)
        self.finished.clear()
        returns = returns[~torch.isnan(returns)]
        return returns.mean().item() if len(returns) else math.nan

    def close(self) -> None:
        self.venv.close()
