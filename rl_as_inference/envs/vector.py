"""``make_vec``: any functional env as a real ``gymnasium.vector.VectorEnv`` with torch tensors in and out.

The vector env owns what a functional env deliberately does not: the current state, the per-env step
counters of the time limit, the random stream of resets (and of stochastic transitions), and the
autoreset bookkeeping. It reproduces Gymnasium 1.x's ``SyncVectorEnv`` semantics for the three
autoreset modes, so that a standard Gymnasium training loop runs unchanged on torch tensors:

    >>> venv = envs.make_vec("CartPole-v1", 8)
    >>> obs, info = venv.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = venv.step(torch.zeros(8, dtype=torch.long))

With ``seeding="torch"`` (default) every step stays on the env's device with no host-device sync:
episode ends are handled with ``torch.where`` against freshly drawn initial states for the whole
batch rather than by indexing the envs that ended (which needs their count on the host). With
``seeding="gymnasium"`` the vector env keeps one numpy generator per sub-env, seeded ``seed + i``,
and reproduces ``gymnasium.make_vec(id, N, vectorization_mode="sync")`` exactly, resets included;
that mode syncs and is meant for tests and exact comparisons.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .base import FunctionalEnv, check_num_envs, gymnasium_rngs, resolve_device, resolve_dtype
from .registry import make

__all__ = ["FunctionalVectorEnv", "make_vec"]

SEEDINGS = ("torch", "gymnasium")


def parse_autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """Turn an ``AutoresetMode`` or its name/value (``"NextStep"``, ``"next_step"``, ...) into the enum."""
    if isinstance(mode, AutoresetMode):
        return mode
    if isinstance(mode, str):
        key = mode.replace("_", "").replace("-", "").lower()
        for member in AutoresetMode:
            if key == member.value.lower():
                return member
    allowed = ", ".join(repr(m.value) for m in AutoresetMode)
    raise ValueError(
        f"autoreset_mode={mode!r} is not allowed; use one of {allowed} "
        "or gymnasium.vector.AutoresetMode.NEXT_STEP / SAME_STEP / DISABLED"
    )


def _check_max_episode_steps(max_episode_steps: int | None) -> int | None:
    if max_episode_steps is None:
        return None
    if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int | np.integer):
        raise TypeError(f"max_episode_steps must be an int >= 1 or None, got {max_episode_steps!r}")
    if max_episode_steps < 1:
        raise ValueError(
            f"max_episode_steps must be >= 1 (or None for no time limit), got {max_episode_steps}"
        )
    return int(max_episode_steps)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class FunctionalVectorEnv(VectorEnv):
    """N copies of a :class:`FunctionalEnv` as a ``gymnasium.vector.VectorEnv`` on torch tensors.

    Outputs of :meth:`reset` and :meth:`step` live on the env's device: observations ``[N, obs_dim]``
    float32 (tabular: int64 ``[N]``), rewards ``[N]`` in the env's dtype, ``terminated`` and
    ``truncated`` ``[N]`` bool, kept separate (both can be True on the same step). ``truncated`` comes
    from the time limit ``max_episode_steps``, counted per sub-env as Gymnasium's ``TimeLimit`` does.

    Autoreset follows Gymnasium 1.x's ``SyncVectorEnv`` (``metadata["autoreset_mode"]``):

    * ``NEXT_STEP`` (default): the step after an episode ends ignores that env's action and returns
      its reset observation, reward 0 and both flags False.
    * ``SAME_STEP``: an env that ends is reset in the same step; ``obs`` holds the reset observation
      and ``info["final_obs"]`` the true last one. Unlike ``SyncVectorEnv`` (object array, keys only
      present when some env ended), ``info`` here always holds ``final_obs`` as a tensor of the
      whole batch -- for envs that did not end it is simply the next observation, so
      ``info["final_obs"]`` is s_{t+1} for every row -- with the mask ``info["_final_obs"]``, and
      ``final_info`` (``{}``: functional envs have no per-step info) with its mask ``_final_info``.
      Building the keys only when an env ended would need a host sync.
    * ``DISABLED``: no autoreset; reset the ended envs with
      ``reset(options={"reset_mask": terminated | truncated})``. Stepping an env that ended without
      resetting it raises on CPU and with ``seeding="gymnasium"``; on an accelerator with torch
      seeding the check would need a host sync, so the env silently steps on from its last state.

    Attributes:
        functional: True: the dynamics are a pure function that can re-simulate from any state
            (``venv.env.step(venv.state, action)``), unlike :func:`from_gymnasium` envs.
        env: the functional env being vectorized.
        num_envs, single_observation_space, single_action_space, observation_space, action_space:
            as in Gymnasium; discrete spaces batch to ``MultiDiscrete``.
        max_episode_steps: the time limit (None: no limit).
        seeding: ``"torch"`` or ``"gymnasium"`` (see :func:`make_vec`).
        device, dtype: those of ``env``.
        spec: a copy of Gymnasium's ``EnvSpec`` of the reproduced task with this time limit (None
            for envs without a Gymnasium id); it describes the task, not how to rebuild this object.
    """

    functional: bool = True

    def __init__(
        self,
        env: FunctionalEnv,
        num_envs: int,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
        seeding: str = "torch",
    ):
        """Vectorize ``env``; prefer :func:`make_vec`, which also accepts an id. Arguments as there."""
        if not isinstance(env, FunctionalEnv):
            raise TypeError(f"env must be a FunctionalEnv (e.g. envs.make(id)), got {type(env).__name__}")
        if seeding not in SEEDINGS:
            raise ValueError(f"seeding={seeding!r} is not allowed; use 'torch' or 'gymnasium'")
        self.env = env
        self.num_envs = check_num_envs(num_envs)
        self.autoreset_mode = parse_autoreset_mode(autoreset_mode)
        max_episode_steps = _check_max_episode_steps(max_episode_steps)
        self.max_episode_steps = env.max_episode_steps if max_episode_steps is None else max_episode_steps
        self.seeding = seeding
        self.device = env.device
        self.dtype = env.dtype

        self.single_observation_space = env.observation_space
        self.single_action_space = env.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": []}
        self.render_mode = None
        self.spec = None
        if env.id is not None:
            try:
                self.spec = copy.deepcopy(gym.spec(env.id))
                self.spec.max_episode_steps = self.max_episode_steps
            except gym.error.Error:
                self.spec = None

        self._discrete = isinstance(env.action_space, gym.spaces.Discrete)
        # Range checks of discrete actions and the DISABLED-mode misuse check need a host read; they
        # are free on CPU and allowed in the (syncing) gymnasium mode, skipped on accelerators.
        self._host_checks = self.device.type == "cpu" or seeding == "gymnasium"
        self._step_takes_generator = "generator" in inspect.signature(env.step).parameters
        # Torch stream for resets and stochastic transitions; seeded by reset(seed=...).
        self._generator = torch.Generator(device=self.device)
        self._generator.seed()
        self._rngs: list[np.random.Generator] | None = None  # seeding="gymnasium" only

        self._state: torch.Tensor | None = None
        self._elapsed = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._autoreset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    # ------------------------------------------------------------------ read-only views
    @property
    def state(self) -> torch.Tensor | None:
        """The current ``[N, *state_shape]`` state (None before the first reset).

        The tensor is shared, not copied: treat it as read-only (clone it before an in-place
        change). Re-simulate from it with the pure ``venv.env.step(venv.state, action)``.
        """
        return self._state

    @property
    def elapsed_steps(self) -> torch.Tensor:
        """``[N]`` int64 steps since each sub-env's last reset (what the time limit counts)."""
        return self._elapsed

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything that decides the next steps (states, time-limit counters, random streams), so that
        a training run can stop and continue bit for bit."""
        state = {
            "state": self._state,
            "elapsed": self._elapsed,
            "autoreset": self._autoreset,
            "generator": self._generator.get_state(),
        }
        if self._rngs is not None:  # numpy bit-generator states are dicts of str and int
            state["rngs"] = [rng.bit_generator.state for rng in self._rngs]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into a vector env of the same env, size and seeding."""
        self._state = None if state["state"] is None else state["state"].to(self.device)
        self._elapsed = state["elapsed"].to(self.device)
        self._autoreset = state["autoreset"].to(self.device)
        self._generator.set_state(state["generator"].cpu())  # loaded to the device with the rest
        if "rngs" in state:
            self._rngs = gymnasium_rngs(self.num_envs, None)
            for rng, rng_state in zip(self._rngs, state["rngs"], strict=True):
                rng.bit_generator.state = rng_state

    # ------------------------------------------------------------------ Gymnasium API
    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset all sub-envs (or those in ``options["reset_mask"]``) and return ``(obs, {})``.

        Args:
            seed: ``None`` continues the current random stream (a fresh random one on the first
                reset). An int seeds it: with ``seeding="torch"`` one torch generator on the device
                for the whole batch; with ``seeding="gymnasium"`` one numpy generator per sub-env
                seeded ``seed + i`` (only the masked sub-envs when a mask is given), exactly as
                ``SyncVectorEnv`` does; they are kept for later autoresets. ``seeding="gymnasium"``
                also takes a list of ``num_envs`` ints or Nones, one per sub-env.
            options: ``None`` or ``{"reset_mask": mask}`` with a bool torch tensor or numpy array of
                shape ``[N]``: reset only where the mask is True, keep the other sub-envs as they
                are (their observations are returned unchanged). Unlike ``SyncVectorEnv``, an
                all-False mask is allowed and resets nothing, so a DISABLED-mode loop can pass
                ``terminated | truncated`` every step without reading it on the host.

        Returns:
            ``[N, ...]`` observations of the current states and an empty info dict.
        """
        self._check_open()
        mask = None
        if options is not None:
            if not isinstance(options, dict):
                raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
            unknown = sorted(set(options) - {"reset_mask"})
            if unknown:
                raise ValueError(
                    f"unsupported reset options {unknown}; FunctionalVectorEnv accepts only 'reset_mask'"
                )
            if "reset_mask" in options:
                mask = self._check_reset_mask(options["reset_mask"])
        if mask is not None and self._state is None:
            raise RuntimeError(
                "the first reset() must reset every sub-env: call reset() without reset_mask first"
            )
        self._seed(seed, mask)
        if mask is None:
            if self.seeding == "torch":
                self._state = self._fresh_initial()
            else:
                self._state = self.env.reset_numpy(self._rngs)
            self._elapsed = torch.zeros_like(self._elapsed)
            self._autoreset = torch.zeros_like(self._autoreset)
        else:
            self._state = self._initial_where(mask, self._state)
            self._elapsed = self._elapsed.masked_fill(mask, 0)
            self._autoreset = self._autoreset & ~mask
        return self._observe(self._state), {}

    def step(
        self, actions: torch.Tensor | np.ndarray | list
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step every sub-env with its action; autoreset as ``metadata["autoreset_mode"]`` says.

        Args:
            actions: a torch tensor on the env's device: integers ``[N]`` for a discrete action
                space, floats ``[N, action_dim]`` for a continuous one (out-of-range continuous
                actions are passed on; the env clips them as Gymnasium does). Numpy arrays and
                nested lists are converted (a host-to-device copy on accelerators).

        Returns:
            ``(obs, reward, terminated, truncated, info)``, see the class docstring.
        """
        self._check_open()
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = self._as_action(actions)
        if (
            self.autoreset_mode is AutoresetMode.DISABLED
            and self._host_checks
            and bool(self._autoreset.any())
        ):
            ended = torch.nonzero(self._autoreset).flatten().tolist()
            raise RuntimeError(
                f"sub-envs {ended} ended on the previous step and autoreset_mode is DISABLED: reset them "
                "first with reset(options={'reset_mask': terminated | truncated})"
            )

        if self._step_takes_generator:
            out = self.env.step(self._state, action, generator=self._generator)
        else:
            out = self.env.step(self._state, action)
        next_state, reward, terminated = out.state, out.reward, out.terminated
        elapsed = self._elapsed + 1
        if self.max_episode_steps is None:
            truncated = torch.zeros_like(terminated)
        else:
            truncated = elapsed >= self.max_episode_steps

        info: dict[str, Any] = {}
        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            # Sub-envs that ended last step are reset now; their step result above is discarded.
            ended = self._autoreset
            next_state = self._initial_where(ended, next_state)
            reward = reward.masked_fill(ended, 0.0)
            terminated = terminated & ~ended
            truncated = truncated & ~ended
            elapsed = elapsed.masked_fill(ended, 0)
            obs = self._observe(next_state)
        elif self.autoreset_mode is AutoresetMode.SAME_STEP:
            done = terminated | truncated
            final_obs = self._observe(next_state)
            next_state = self._initial_where(done, next_state)
            elapsed = elapsed.masked_fill(done, 0)
            obs = self._observe(next_state)
            info = {"final_obs": final_obs, "_final_obs": done, "final_info": {}, "_final_info": done.clone()}
        else:
            obs = self._observe(next_state)

        self._state = next_state
        self._elapsed = elapsed
        self._autoreset = terminated | truncated
        return obs, reward, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        """Drop the state; a closed vector env refuses ``reset`` and ``step``."""
        self._state = None

    def __repr__(self) -> str:
        return (
            f"FunctionalVectorEnv({self.env.name}, num_envs={self.num_envs}, device={self.device}, "
            f"dtype={self.dtype}, autoreset_mode={self.autoreset_mode.value}, seeding={self.seeding!r})"
        )

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self!r} is closed")

    def _fresh_initial(self) -> torch.Tensor:
        """``[N, *state_shape]`` initial states from the torch stream, on the device, no host sync."""
        return self.env.sample_initial(self.num_envs, self._generator)

    def _initial_where(self, mask: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``state`` with the rows where ``mask`` is True replaced by fresh initial states."""
        if self.seeding == "torch":
            # Draw for every env and select: no data-dependent shapes, hence no host sync.
            fresh = self._fresh_initial()
            return torch.where(mask.reshape(mask.shape + (1,) * len(self.env.state_shape)), fresh, state)
        index = torch.nonzero(mask.cpu()).flatten().tolist()
        if not index:
            return state
        # Only the sub-envs that reset draw from their generator, as in SyncVectorEnv.
        out = state.clone()
        out[torch.as_tensor(index, device=self.device)] = self.env.reset_numpy([self._rngs[i] for i in index])
        return out

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        obs = self.env.observe(state)
        # Some envs observe the state itself; a caller editing obs in place must not edit our state.
        return obs.clone() if _shares_storage(obs, state) else obs

    def _seed(self, seed: int | list[int | None] | None, mask: torch.Tensor | None) -> None:
        if self.seeding == "gymnasium" and self._rngs is None:
            self._rngs = gymnasium_rngs(self.num_envs, None)
        if seed is None:
            return
        is_int = isinstance(seed, int | np.integer) and not isinstance(seed, bool)
        if self.seeding == "torch":
            if not is_int:
                raise TypeError(
                    f"seed must be an int or None with seeding='torch' (one stream for the batch), got {seed!r}"
                )
            self._generator.manual_seed(int(seed))
            return
        if is_int:
            seeds: list[int | None] = [int(seed) + i for i in range(self.num_envs)]
            # The torch stream drives stochastic transitions (tabular MDPs) in this mode too.
            self._generator.manual_seed(int(seed))
        elif isinstance(seed, list | tuple):
            if len(seed) != self.num_envs:
                raise ValueError(
                    f"a list of seeds must have num_envs={self.num_envs} entries, got {len(seed)}"
                )
            seeds = list(seed)
        else:
            raise TypeError(
                f"seed must be an int, a list of {self.num_envs} ints/None, or None; got {seed!r}"
            )
        selected = [True] * self.num_envs if mask is None else mask.cpu().tolist()
        for i, (s, chosen) in enumerate(zip(seeds, selected, strict=True)):
            if s is not None and chosen:
                self._rngs[i] = gymnasium_rngs(1, int(s))[0]

    def _check_reset_mask(self, mask: Any) -> torch.Tensor:
        expected = f"a bool torch.Tensor or numpy array of shape ({self.num_envs},)"
        if isinstance(mask, torch.Tensor):
            if mask.dtype != torch.bool:
                raise TypeError(f"options['reset_mask'] must be {expected}; got dtype {mask.dtype}")
        elif isinstance(mask, np.ndarray):
            if mask.dtype != np.bool_:
                raise TypeError(f"options['reset_mask'] must be {expected}; got dtype {mask.dtype}")
            mask = torch.from_numpy(mask)
        else:
            raise TypeError(f"options['reset_mask'] must be {expected}; got {type(mask).__name__}")
        if tuple(mask.shape) != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must be {expected}; got shape {tuple(mask.shape)}")
        return mask.to(self.device)

    def _as_action(self, actions: Any) -> torch.Tensor:
        if isinstance(actions, torch.Tensor):
            action = actions
        else:
            try:
                arr = np.asarray(actions)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"actions must be a torch.Tensor, got {type(actions).__name__}") from exc
            if arr.dtype.kind not in "biuf":
                raise TypeError(
                    f"actions must be a torch.Tensor (or a numpy array / list of numbers), got "
                    f"{type(actions).__name__} of dtype {arr.dtype}"
                )
            action = torch.as_tensor(arr, device=self.device)
        self.env.check_action(action, self._state)
        if not self._discrete:
            return action
        # on the CPU env.check_action has checked the range already; here only where it skips it
        # (an accelerator) but host reads are already paid for (seeding="gymnasium")
        if self._host_checks and action.device.type != "cpu":
            space = self.single_action_space
            start, n = int(space.start), int(space.n)
            bad = (action < start) | (action >= start + n)
            if bool(bad.any()):
                raise ValueError(
                    f"discrete actions of {self.env.name} must lie in [{start}, {start + n}); got "
                    f"{action[bad][:5].tolist()} at sub-envs {torch.nonzero(bad).flatten()[:5].tolist()}"
                )
        return action.long()


def make_vec(
    id_or_env: str | FunctionalEnv,
    num_envs: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    max_episode_steps: int | None = None,
    seeding: str = "torch",
    **env_kwargs: Any,
) -> FunctionalVectorEnv:
    """Vectorize a functional environment as a ``gymnasium.vector.VectorEnv`` on torch tensors.

    Args:
        id_or_env: a ported Gymnasium id (built with :func:`envs.make`) or a :class:`FunctionalEnv`
            instance used as is (e.g. a :class:`TabularMDP`).
        num_envs: number of sub-envs N >= 1.
        device, dtype: passed to :func:`envs.make` for an id; for an instance they must be None or
            match it.
        autoreset_mode: ``"NextStep"`` (default), ``"SameStep"`` or ``"Disabled"``, or a
            ``gymnasium.vector.AutoresetMode``; semantics of Gymnasium's ``SyncVectorEnv``.
        max_episode_steps: time limit per episode; None uses the env's own (Gymnasium's registry
            value for a ported id), and no limit if that is None too.
        seeding: ``"torch"`` (default): one torch generator on the device, no host sync per step;
            ``"gymnasium"``: one numpy generator per sub-env, reproducing
            ``gymnasium.make_vec(id, N, vectorization_mode="sync")`` exactly (use float64 on CPU).
        **env_kwargs: environment parameters for :func:`envs.make` (ids only).

    Returns:
        A :class:`FunctionalVectorEnv`; call ``reset(seed=...)`` before ``step``.
    """
    num_envs = check_num_envs(num_envs)
    if isinstance(id_or_env, str):
        env = make(id_or_env, device=device, dtype=dtype, **env_kwargs)
    elif isinstance(id_or_env, FunctionalEnv):
        env = id_or_env
        if env_kwargs:
            raise TypeError(
                f"environment parameters {sorted(env_kwargs)} only apply to an id; {env.name} is already built"
            )
        if device is not None and not _same_device(resolve_device(device), env.device):
            raise ValueError(f"device={device!r} but {env.name} lives on {env.device}; leave device=None")
        if dtype is not None and resolve_dtype(dtype) != env.dtype:
            raise ValueError(f"dtype={dtype!r} but {env.name} was built with {env.dtype}; leave dtype=None")
    else:
        raise TypeError(
            f"make_vec needs a ported Gymnasium id (str) or a FunctionalEnv, got {type(id_or_env).__name__}; "
            "wrap other Gymnasium envs with envs.from_gymnasium"
        )
    return FunctionalVectorEnv(
        env, num_envs, autoreset_mode=autoreset_mode, max_episode_steps=max_episode_steps, seeding=seeding
    )
