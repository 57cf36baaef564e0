"""Batched data collection into a device replay buffer, shared by the off-policy algorithms."""

from __future__ import annotations

import contextlib
import math

import gymnasium as gym
import numpy as np
import torch

from rl_as_inference import distributed as dp
from rl_as_inference import envs
from rl_as_inference.algos.settings import BACKENDS, VECTORIZATIONS, RunSettings
from rl_as_inference.envs.base import clamp_into  # collect's public name since before the move
from rl_as_inference.envs.observations import flatten_observations, is_composite
from rl_as_inference.guides.normalization import DEFAULT_OBS_CLIP, RunningObsNormalizer
from rl_as_inference.replay import ReplayBuffer, transition_fields

__all__ = [
    "BACKENDS",
    "DEFAULT_OBS_CLIP",
    "Collector",
    "EnvActions",
    "EpisodeReturns",
    "check_observation_space",
    "clamp_into",
    "episode_state",
    "make_collection_env",
    "make_obs_normalizer",
    "resolve_backend",
    "restart_seed",
    "restore_episodes",
    "true_next_obs",
    "uniform_log_density",
    "update_obs_normalizer",
]


def uniform_log_density(space: gym.Space) -> float:
    """log mu(a) of the uniform distribution on an action space: -log vol of a Box, -log n of Discrete(n)."""
    if isinstance(space, gym.spaces.Discrete):
        return -math.log(int(space.n))
    return -float(np.sum(np.log(space.high.astype(np.float64) - space.low.astype(np.float64))))


def resolve_backend(env_id: str, backend: str) -> str:
    """``"auto"``: the torch port where there is one, else Gymnasium's own env; others as given."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; use one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        return "functional" if envs.has_torch_env(env_id) else "gymnasium"
    return backend


def make_collection_env(
    env_id: str,
    num_envs: int,
    *,
    device: torch.device,
    backend: str = "auto",
    exploring_starts: float = 0.0,
    vectorization: str = "sync",
    env_kwargs: dict | None = None,
):
    """The SAME_STEP-autoresetting vector env the algorithms collect from, on ``backend``.

    ``"functional"`` is the torch port (or an env added with :func:`rl_as_inference.envs.register`),
    stepping on ``device`` with no host round trip; ``"gymnasium"`` is Gymnasium's own env through
    :func:`rl_as_inference.envs.from_gymnasium` (any registered id); ``"auto"`` picks the first
    where it exists. ``vectorization`` (``"sync"`` or ``"async"``) is Gymnasium's
    ``vectorization_mode`` for its own envs; the torch envs step as one batch either way.
    ``env_kwargs`` go to the env's constructor (:func:`constructed`).
    """
    backend = resolve_backend(env_id, backend)
    env_kwargs = dict(env_kwargs or {})
    if backend == "functional":
        if not envs.has_torch_env(env_id):
            raise ValueError(
                f"backend='functional' needs a torch env, and {env_id!r} has none (ported: "
                f"{', '.join(sorted(envs.PORTED))}); use backend='gymnasium' or 'auto'"
            )
        with constructed(env_id, env_kwargs, backend):
            venv = envs.make_vec(
                env_id,
                num_envs,
                device=device,
                autoreset_mode="SameStep",
                exploring_starts=exploring_starts,
                **env_kwargs,
            )
        check_observation_space(env_id, venv.single_observation_space, flattened=False)
        return venv
    if exploring_starts:
        raise ValueError("exploring_starts needs backend='functional': Gymnasium's envs reset from p(s_0)")
    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"vectorization={vectorization!r} is not allowed; use one of {VECTORIZATIONS}")
    with constructed(env_id, env_kwargs, backend):
        venv = envs.from_gymnasium(
            env_id,
            num_envs,
            device=device,
            vectorization_mode=vectorization,
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
            wrappers=[flatten_observations],  # a Tuple or Dict observation as one flat vector
            **env_kwargs,
        )
    try:
        check_observation_space(env_id, venv.single_observation_space)
    except ValueError:
        venv.close()
        raise
    return venv


@contextlib.contextmanager
def constructed(env_id: str, env_kwargs: dict, backend: str, hint: str | None = None):
    """Turn the TypeError of an env constructor that refuses ``env_kwargs`` into a one-line
    ValueError naming them: a torch port takes only the arguments it models (Pendulum-v1's g),
    so the message says how to reach Gymnasium's own env, which takes all of its own (``hint``,
    when given, says instead what the caller needs)."""
    try:
        yield
    except TypeError as exc:
        if not env_kwargs:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in env_kwargs.items())
        where = "the torch env of" if backend == "functional" else "Gymnasium's"
        if hint is None:
            hint = (
                "; set backend = 'gymnasium' for Gymnasium's own env with these arguments"
                if backend == "functional" and env_id in gym.registry
                else ""
            )
        raise ValueError(f"env_kwargs {given}: {where} {env_id} does not take them ({exc}){hint}") from None


class EnvActions:
    """How the policies' actions become the env's (the buffers keep them as drawn): a Box action
    clamped into the box (MuJoCo tasks charge their control cost on the action as given), a
    Discrete(n, start) index 0..n-1 shifted to the space's start..start+n-1."""

    def __init__(self, space: gym.Space, device: torch.device):
        self.start = int(space.start) if isinstance(space, gym.spaces.Discrete) else 0
        self.low = self.high = None
        if isinstance(space, gym.spaces.Box):
            self.low = torch.as_tensor(space.low, device=device)
            self.high = torch.as_tensor(space.high, device=device)

    def __call__(self, action: torch.Tensor) -> torch.Tensor:
        if self.low is not None:
            return clamp_into(action, self.low, self.high)
        return action + self.start if self.start else action


def check_observation_space(env_id: str, space: gym.Space, *, flattened: bool = True) -> None:
    """Raise a ValueError naming ``space`` unless the networks here take it: a 1-D Box, Discrete
    (one-hot encoded by :class:`~rl_as_inference.guides.policies.ObservationEncoder`), or a Tuple,
    Dict, MultiDiscrete or MultiBinary of those, which Gymnasium's envs are wrapped to observe flat
    (:mod:`rl_as_inference.envs.observations`); ``flattened=False`` for a torch env's, which is
    stepped as it is.

    Checked before any buffer is allocated: an image's replay buffer (CarRacing-v3's 96x96x3
    observations, 100k transitions) is tens of GB, for networks that would then refuse it."""
    flat_box = isinstance(space, gym.spaces.Box) and len(space.shape) == 1
    if flat_box or isinstance(space, gym.spaces.Discrete) or (flattened and is_composite(space)):
        return
    if is_composite(space):
        raise ValueError(
            f"{env_id} has observation space {space}; a torch env's observations reach the networks "
            "as its step returns them, so they must be a 1-D Box or Discrete (return the flat vector "
            "from observe: gymnasium.spaces.flatten_space and flatten give its layout)"
        )
    if isinstance(space, gym.spaces.Box):
        raise ValueError(
            f"{env_id} has observation space {space}; the networks here are MLPs over Discrete or 1-D "
            "Box observations, with no convolutional encoder for images (to feed the pixels to an "
            "MLP anyway, wrap the env in gymnasium.wrappers.FlattenObservation and register the "
            "wrapped id)"
        )
    raise ValueError(
        f"{env_id} has observation space {space}; the networks here take Discrete or 1-D Box "
        "observations, or a Tuple, Dict, MultiDiscrete or MultiBinary of them (flattened); an image "
        "inside one is not flattened (wrap the env in gymnasium.wrappers.FlattenObservation and "
        "register the wrapped id to feed its pixels to an MLP anyway)"
    )


def make_obs_normalizer(
    space: gym.Space, normalize: bool, clip: float, env_id: str, device: torch.device
) -> RunningObsNormalizer | None:
    """The running observation normalizer of a collection (None when ``normalize`` is off)."""
    if not normalize:
        return None
    try:
        return RunningObsNormalizer.for_space(space, clip=clip).to(device)
    except ValueError as exc:
        raise ValueError(f"{env_id}: {exc}") from None


def update_obs_normalizer(normalizer: RunningObsNormalizer | None, obs: torch.Tensor) -> None:
    """Merge a step's observations into ``normalizer`` (nothing when there is none); in a
    data-parallel run, the observations of every rank's step (one all-reduce of their count, sum
    and sum of squares), so all ranks keep the same statistics."""
    if normalizer is None:
        return
    if dp.world_size() == 1:
        normalizer.update(obs)
        return
    x = obs.detach().reshape(-1, normalizer.mean.shape[0]).to(normalizer.mean.dtype)
    count = torch.full((1,), float(x.shape[0]), dtype=x.dtype, device=x.device)
    moments = dp.all_reduce_sum(torch.cat([count, x.sum(0), x.square().sum(0)]))
    n, total, squares = moments[0], moments[1 : 1 + x.shape[1]], moments[1 + x.shape[1] :]
    mean = total / n
    normalizer.merge(n, mean, (squares / n - mean.square()).clamp_min(0.0))


def true_next_obs(next_obs: torch.Tensor, done: torch.Tensor, info: dict) -> torch.Tensor:
    """s_{t+1} for every env after a SAME_STEP autoreset: the final observation where one ended.

    The functional envs give it as a tensor for every row (no host read); Gymnasium gives
    ``info["final_obs"]`` as an object array, present only on steps where some env ended.
    """
    final = info.get("final_obs")
    if isinstance(final, torch.Tensor):
        return final
    if final is None:
        return next_obs
    rows = [final[i] if bool(done[i]) else next_obs[i] for i in range(len(final))]
    return torch.stack([torch.as_tensor(r, device=next_obs.device, dtype=next_obs.dtype) for r in rows])


def episode_state(venv, obs: torch.Tensor, returns: EpisodeReturns, env_steps: int) -> dict:
    """The episodes in progress as a checkpoint holds them: the vector env's state (None for
    Gymnasium's own envs, whose hidden state cannot be saved), observations, returns, step count."""
    return {
        "venv": venv.state_dict() if hasattr(venv, "state_dict") else None,
        "obs": obs,
        "returns": returns.state_dict(),
        "env_steps": env_steps,
    }


def restore_episodes(
    venv, state: dict, returns: EpisodeReturns, *, seed: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Load :func:`episode_state` into ``venv`` and ``returns``; the observations and step count.

    Without a saved env state the episodes restart from reset, seeded by :func:`restart_seed`
    from the run's seed and step count, and the partial returns of the cut episodes are dropped.
    """
    returns.load_state_dict(state["returns"])
    env_steps = int(state["env_steps"])
    if state["venv"] is None:
        obs, _ = venv.reset(seed=restart_seed(seed, env_steps))
        returns.current = torch.zeros_like(returns.current)
        return obs, env_steps
    venv.load_state_dict(state["venv"])
    return state["obs"].to(device), env_steps


def restart_seed(seed: int, env_steps: int) -> int:
    """The reset seed of a resumed run whose envs' state could not be saved (Gymnasium's own):
    its episodes restart, seeded from the run's seed and step count so a resume is reproducible."""
    return int(np.random.SeedSequence([int(seed), int(env_steps)]).generate_state(1)[0])


class EpisodeReturns:
    """Returns of the episodes of ``num_envs`` parallel envs, tracked on the device: :meth:`add`
    never reads back, :meth:`pop_mean` makes one host read per metric row."""

    def __init__(self, num_envs: int, device: torch.device):
        self.current = torch.zeros(num_envs, device=device)
        # since the last pop: per step, the returns of the episodes that ended there, else NaN
        self.finished: list[torch.Tensor] = []

    def add(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """Add one step's rewards; episodes with ``done`` end here and start again from 0."""
        self.current = self.current + reward.to(self.current.dtype)
        self.finished.append(torch.where(done, self.current, math.nan))
        self.current = torch.where(done, 0.0, self.current)

    def pop_mean(self) -> float:
        """Mean return of the episodes that ended since the last call (NaN if none)."""
        if not self.finished:
            return math.nan
        returns = torch.cat(self.finished)
        self.finished.clear()
        returns = returns[~torch.isnan(returns)]
        return returns.mean().item() if len(returns) else math.nan

    def state_dict(self) -> dict:
        """The running returns and the ended episodes not yet popped."""
        return {
            "current": self.current,
            "finished": torch.cat(self.finished) if self.finished else self.current[:0],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.current = state["current"].to(self.current.device)
        self.finished = [state["finished"].to(self.current.device)] if len(state["finished"]) else []


class Collector:
    """Steps ``num_envs`` copies of an env and stores every transition in a replay buffer.

    The vector env autoresets in SAME_STEP mode, so each stored transition is the one that happened:
    ``next_obs`` is s_{t+1} even where the episode ended (truncations are not terminations and still
    bootstrap). Episode returns are tracked on the device; reading them back happens only when a
    metric row is made.

    Args:
        env_id: a Gymnasium id or one added with :func:`rl_as_inference.envs.register`. With
            ``backend="functional"`` its torch env steps on ``device`` with no host round trip;
            ``"gymnasium"`` steps Gymnasium's own env through
            :func:`rl_as_inference.envs.from_gymnasium` (any registered id); ``"auto"`` (default)
            is the first where there is a torch env, else the second.
        num_envs: parallel environments (transitions per ``step``).
        device: where the buffer (and functional envs) live.
        seed: seeds the vector env and the generator of random actions and batch sampling.
        buffer_size: replay capacity (rounded up to a multiple of ``num_envs`` so that one env's
            consecutive transitions stay ``num_envs`` slots apart, which n-step sampling relies on).
        store_states: also store the functional-env state s_t (algorithms that re-simulate from it).
        discrete: whether a Discrete action space is accepted (the algorithm has a categorical policy).
        exploring_starts: share of resets drawn uniformly from the env's state box
            (:meth:`rl_as_inference.envs.FunctionalEnv.use_exploring_starts`; functional backend only).
        behaviour_log_prob: also store log mu(a_t|s_t), the density the action was drawn from (the
            policy's at collection; the uniform one, -log vol of the box or -log n, for the random
            warm-up actions): Retrace's traces need it.
        algorithm: its name, for error messages.
        vectorization: ``"sync"`` or ``"async"``, for Gymnasium's own envs (:func:`make_collection_env`).
        normalize_obs: keep a :class:`~guides.normalization.RunningObsNormalizer` (``obs_normalizer``)
            of every observation collected, for the algorithm to attach to its networks; it is
            updated with each step's observations before the policy sees them.
        obs_clip: the normalizer's clip.
        reward_scale: the stored rewards are the env's times this (episode returns stay unscaled).
        env_kwargs: keyword arguments of the env's constructor (``gymnasium.make`` or the torch
            env's factory).

    Box actions are clamped into the action box before the env steps (Gymnasium's MuJoCo tasks
    would otherwise charge their control cost on an out-of-box action); the buffer stores the
    action as drawn.
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
        discrete: bool = False,
        backend: str = "auto",
        exploring_starts: float = 0.0,
        behaviour_log_prob: bool = False,
        algorithm: str = "this algorithm",
        vectorization: str = "sync",
        normalize_obs: bool = False,
        obs_clip: float = DEFAULT_OBS_CLIP,
        reward_scale: float = 1.0,
        env_kwargs: dict | None = None,
    ):
        backend = resolve_backend(env_id, backend)
        if store_states and backend != "functional":
            raise ValueError(
                f"{algorithm} re-simulates from stored states and needs backend='functional' (a torch "
                f"env); {env_id} runs on Gymnasium's own env here"
            )
        self.venv = make_collection_env(
            env_id,
            num_envs,
            device=device,
            backend=backend,
            exploring_starts=exploring_starts,
            vectorization=vectorization,
            env_kwargs=env_kwargs,
        )
        self.backend, self.seed = backend, int(seed)
        self.action_space = self.venv.single_action_space
        self.observation_space = self.venv.single_observation_space
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        allowed = "a Box or Discrete" if discrete else "a continuous (Box)"
        if not (isinstance(self.action_space, gym.spaces.Box) or (discrete and self.discrete)):
            raise ValueError(f"{algorithm} needs {allowed} action space; {env_id} has {self.action_space}")
        self.env = self.venv.env if backend == "functional" else None
        self.device, self.num_envs, self.store_states = device, num_envs, store_states
        fields = transition_fields(
            self.observation_space.shape,
            self.action_space.shape,
            action_dtype=torch.int64 if self.discrete else torch.float32,
        )
        fields["truncated"] = ((), torch.bool)
        if store_states:
            fields["state"] = (self.env.state_shape, self.env.dtype)
        self.store_log_prob = behaviour_log_prob
        if behaviour_log_prob:
            fields["behaviour_log_prob"] = ((), torch.float32)
        capacity = -(-buffer_size // num_envs) * num_envs
        try:
            self.buffer = ReplayBuffer(capacity, fields, device=device)
        except ValueError as exc:  # too large for this machine: name the env, free the envs
            self.venv.close()
            raise ValueError(f"{algorithm} on {env_id}: {exc}") from None
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.env_actions = EnvActions(self.action_space, device)
        self.low, self.high = self.env_actions.low, self.env_actions.high  # the box (None: Discrete)
        self.uniform_log_prob = uniform_log_density(self.action_space)
        self.reward_scale = float(reward_scale)
        self.obs_normalizer = make_obs_normalizer(
            self.observation_space, normalize_obs, obs_clip, env_id, device
        )
        self.obs, _ = self.venv.reset(seed=seed)
        update_obs_normalizer(self.obs_normalizer, self.obs)
        self.returns = EpisodeReturns(num_envs, device)
        self.env_steps = 0

    @classmethod
    def for_config(cls, config: RunSettings, device: torch.device, algorithm: str, **kwargs) -> Collector:
        """The Collector an off-policy algorithm's config describes: its env, ``num_envs``, seed,
        ``exploring_starts``, ``buffer_size`` (which every replay-based config adds to
        :class:`RunSettings`), where it has one, ``backend``, ``normalize_obs`` and the behaviour's
        log-probabilities when ``n_step_correction = "retrace"``; ``kwargs`` add ``store_states``,
        ``discrete`` or ``reward_scale``."""
        return cls(
            config.env,
            num_envs=config.num_envs,
            device=device,
            seed=config.seed,
            buffer_size=config.buffer_size,
            backend=config.backend,
            vectorization=config.vectorization,
            exploring_starts=config.exploring_starts,
            behaviour_log_prob=getattr(config, "n_step_correction", "none") == "retrace",
            algorithm=algorithm,
            normalize_obs=config.normalize_obs,
            obs_clip=config.obs_clip,
            env_kwargs=config.env_kwargs,
            **kwargs,
        )

    def random_actions(self) -> torch.Tensor:
        """One uniformly random action per env (the exploration before learning starts)."""
        if self.discrete:
            n = int(self.action_space.n)
            return torch.randint(0, n, (self.num_envs,), generator=self.generator, device=self.device)
        shape = (self.num_envs, *self.action_space.shape)
        u = torch.rand(shape, generator=self.generator, device=self.device)
        return self.low + (self.high - self.low) * u

    def step(self, policy: torch.nn.Module | None) -> None:
        """One batched step with actions from ``policy`` (sampled), or uniform if None."""
        state = self.venv.state.clone() if self.store_states else None
        extra = {"state": state} if self.store_states else {}
        if policy is None:
            action = self.random_actions()
            if self.store_log_prob:
                extra["behaviour_log_prob"] = torch.full(
                    (self.num_envs,), self.uniform_log_prob, device=self.device
                )
        else:
            with torch.no_grad():
                d = policy(self.obs)
                action = d.sample()
                if self.store_log_prob:
                    # scored as the learner will score the stored action (a copy: not from the
                    # sample's cached pre-tanh value, which a saturated float32 action has lost),
                    # so that on-policy q / mu is exactly 1
                    extra["behaviour_log_prob"] = d.log_prob(action.clone())
        next_obs, reward, terminated, truncated, info = self.venv.step(self.into_box(action))
        update_obs_normalizer(self.obs_normalizer, next_obs)
        final_obs = self._final_obs(next_obs, terminated | truncated, info)
        self.buffer.add(
            obs=self.obs,
            action=action,
            reward=reward * self.reward_scale if self.reward_scale != 1.0 else reward,
            next_obs=final_obs,
            terminated=terminated,
            truncated=truncated,
            **extra,
        )
        self.returns.add(reward, terminated | truncated)
        self.obs = next_obs
        # counted over all ranks of a data-parallel run (each steps its own num_envs), so budgets,
        # schedules and logging intervals mean the same with any number of processes
        self.env_steps += self.num_envs * dp.world_size()

    def into_box(self, action: torch.Tensor) -> torch.Tensor:
        """The action the env is given (:class:`EnvActions`); the buffer keeps ``action``."""
        return self.env_actions(action)

    def _final_obs(self, next_obs: torch.Tensor, done: torch.Tensor, info: dict) -> torch.Tensor:
        return true_next_obs(next_obs, done, info)

    def sample(self, batch_size: int, *, n_step: int = 1) -> dict[str, torch.Tensor]:
        """A uniform batch of stored transitions; with ``n_step > 1``, n-step paths (fields ``path``
        and ``last``, see :meth:`ReplayBuffer.sample_n_step`)."""
        if n_step == 1:
            return self.buffer.sample(batch_size, self.generator)
        return self.buffer.sample_n_step(batch_size, n_step, stride=self.num_envs, generator=self.generator)

    def state_dict(self) -> dict:
        """The replay buffer, the vector env, the current observations, episode returns, random
        stream and step count: what a resumed run needs to collect exactly what this one would.

        Gymnasium's own envs keep hidden state no checkpoint can hold: their entry is None, and a
        resumed run restarts their episodes (:meth:`load_state_dict`)."""
        return {
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            **episode_state(self.venv, self.obs, self.returns, self.env_steps),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into a collector built with the same settings.

        Without a saved env state (Gymnasium's own envs) the episodes in progress restart from
        reset, seeded by :func:`restart_seed` from the seed and step count; the buffer, random
        stream and step count continue exactly, and the partial returns of the cut episodes are
        dropped. The last stored transition of each cut episode is marked truncated, so that no
        n-step path runs from it into the restarted one (its stored next state stays the true one:
        a path ending there bootstraps from it)."""
        self.buffer.load_state_dict(state["buffer"])
        if state["venv"] is None:
            self.buffer.truncate_latest(self.num_envs)
        self.generator.set_state(state["generator"].cpu())  # loaded to the device with the rest
        self.obs, self.env_steps = restore_episodes(
            self.venv, state, self.returns, seed=self.seed, device=self.device
        )

    def pop_mean_return(self) -> float:
        """Mean return of the episodes that ended since the last call (NaN if none); one host read."""
        return self.returns.pop_mean()

    def close(self) -> None:
        """Close the vector env."""
        self.venv.close()
