"""The learner's own envs, advanced one differentiable segment at a time (on-policy segment SVI).

Off-policy learners step a vector env and store its transitions (:mod:`.collect`). On-policy
segment SVI needs no buffer: the guide rolls out H steps from the envs' current states through the
differentiable dynamics, and that rollout *is* the interaction with the envs.
:meth:`SegmentEnvs.advance` takes the rollout's :class:`~models.rollout.Trajectory`, records the
episode returns and moves every env to the segment's last state, so the next segment continues the
same episodes.
"""

from __future__ import annotations

import torch

from rl_as_inference import distributed as dp
from rl_as_inference import envs
from rl_as_inference.algos.collect import (
    DEFAULT_OBS_CLIP,
    EpisodeReturns,
    constructed,
    make_obs_normalizer,
    update_obs_normalizer,
)
from rl_as_inference.models import Trajectory

__all__ = ["SegmentEnvs"]


class SegmentEnvs:
    """``num_envs`` functional envs whose states the learner's segment rollouts advance.

    Episodes that terminated inside a segment (the rollout loop freezes them at their terminal
    state) and episodes at or past the env's time limit restart at the segment's end, from p(s_0)
    (or, with exploring starts, anywhere in the state box). A time limit that falls inside a
    segment therefore ends its episode up to H - 1 steps late: neither the dynamics nor the soft
    value has a clock, so those steps are ordinary transitions of the same infinite-horizon
    problem. With H dividing the limit (Pendulum-v1: 200 = 20 x 10) episodes have Gymnasium's
    length exactly. Env steps count every simulated step, N x H per segment.

    Args:
        env_id: a ported Gymnasium id or one added with ``envs.register`` (its torch env steps on
            ``device``).
        num_envs: N, the episodes of each segment.
        device: where the states live.
        seed: seeds the generator of the resets.
        exploring_starts: share of resets drawn uniformly from the state box.
        normalize_obs: keep a running normalizer (``obs_normalizer``) of the observations of the
            states each segment acted in (N x H per segment, one per env step), merged as
            :meth:`advance` records the segment.
        obs_clip: the normalizer's clip.
        env_kwargs: keyword arguments of the torch env's factory (:func:`rl_as_inference.envs.make`).
    """

    def __init__(
        self,
        env_id: str,
        *,
        num_envs: int,
        device: torch.device,
        seed: int,
        exploring_starts: float = 0.0,
        normalize_obs: bool = False,
        obs_clip: float = DEFAULT_OBS_CLIP,
        env_kwargs: dict | None = None,
    ):
        env_kwargs = dict(env_kwargs or {})
        with constructed(env_id, env_kwargs, "functional"):
            self.env = envs.make(env_id, device=device, exploring_starts=exploring_starts, **env_kwargs)
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        self.device, self.num_envs = device, envs.base.check_num_envs(num_envs)
        self.limit = self.env.max_episode_steps
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.states = self.env.sample_initial(num_envs, self.generator)
        self.obs_normalizer = make_obs_normalizer(
            self.observation_space, normalize_obs, obs_clip, env_id, device
        )
        self.elapsed = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.returns = EpisodeReturns(num_envs, device)
        self.env_steps = 0

    def advance(self, trajectory: Trajectory) -> None:
        """Move every env past the segment ``trajectory`` (rolled out from :attr:`states`): record its
        rewards, restart the episodes that ended, and count N x H env steps. No host read."""
        horizon = trajectory.rewards.shape[0]
        if self.obs_normalizer is not None:  # s_0 .. s_{H-1}: the states the segment acted in
            states = trajectory.states[:-1].detach().reshape(-1, *self.env.state_shape)
            update_obs_normalizer(self.obs_normalizer, self.env.observe(states))
        elapsed = self.elapsed + horizon
        # where the time limit falls inside the segment, the episode ends at the segment's end
        timed_out = (
            elapsed >= self.limit
            if self.limit is not None
            else torch.zeros_like(self.elapsed, dtype=torch.bool)
        )
        alive_at_end = trajectory.alive[-1] & ~trajectory.terminated[-1]
        ended = ~alive_at_end | timed_out
        for t in range(horizon - 1):
            self.returns.add(trajectory.rewards[t], trajectory.terminated[t])
        # an episode that terminated earlier in the segment was counted then, not again here
        self.returns.add(
            trajectory.rewards[-1], trajectory.alive[-1] & (trajectory.terminated[-1] | timed_out)
        )
        # Draw fresh starts for every env and keep those of the ended ones: a data-dependent branch
        # would read the device back once per segment.
        fresh = self.env.sample_initial(self.num_envs, self.generator)
        event = (1,) * len(self.env.state_shape)
        self.states = torch.where(ended.reshape(ended.shape + event), fresh, trajectory.states[-1].detach())
        self.elapsed = torch.where(ended, 0, elapsed)
        self.env_steps += self.num_envs * horizon * dp.world_size()  # over all ranks

    def pop_mean_return(self) -> float:
        """Mean return of the episodes that ended since the last call (NaN if none); one host read."""
        return self.returns.pop_mean()

    def state_dict(self) -> dict:
        """States, episode clocks, returns, the reset generator and the step count."""
        return {
            "states": self.states,
            "elapsed": self.elapsed,
            "generator": self.generator.get_state(),
            "returns": self.returns.state_dict(),
            "env_steps": self.env_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into envs built with the same settings."""
        self.states = state["states"].to(self.device)
        self.elapsed = state["elapsed"].to(self.device)
        self.generator.set_state(state["generator"].cpu())  # loaded to the device with the rest
        self.returns.load_state_dict(state["returns"])
        self.env_steps = int(state["env_steps"])

    def close(self) -> None:
        """Nothing to release (the functional envs hold no resources); for the loops' ``finish``."""
