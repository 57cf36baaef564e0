"""``from_gymnasium``: any Gymnasium environment as a vector env with torch tensors in and out.

This is the escape hatch for environments without a functional port (Atari, MuJoCo, FrozenLake,
your own ``gymnasium.Env``): the wrapped env keeps its own hidden state, so it cannot re-simulate
from a given state, and it marks that with ``functional = False``. Use it for data collection and
evaluation; models that need p(s_{t+1} | s_t, a_t) as a function need a :class:`FunctionalEnv`.

Gymnasium's own ``gymnasium.wrappers.vector.NumpyToTorch`` would do the conversion but needs the
extra package ``array_api_compat``; the few lines below avoid that dependency.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorEnv, VectorWrapper

from .base import check_num_envs, resolve_device

__all__ = ["TorchVectorWrapper", "from_gymnasium", "naming_missing_packages", "numpy_view"]


@contextlib.contextmanager
def naming_missing_packages(env_id: str) -> Iterator[None]:
    """Turn Gymnasium's ``DependencyNotInstalled`` (Box2D, MuJoCo...) into a one-line ValueError
    naming the env; Gymnasium's own message, kept in it, names the pip extra."""
    try:
        yield
    except gym.error.DependencyNotInstalled as exc:
        raise ValueError(f"{env_id} needs a package that is not installed: {exc}") from None


def _to_torch(x: Any, device: torch.device) -> Any:
    """Numeric numpy arrays (and scalars) to tensors on ``device``, recursing into dicts, tuples, lists.

    Arrays are copied: a vector env built with ``copy=False`` reuses its buffers between steps.
    Object arrays (``info["final_obs"]`` of SAME_STEP autoreset) stay object arrays of converted
    entries (Python numbers there become 0-d tensors); anything torch cannot hold (strings, None) is
    returned unchanged.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            out = np.empty(x.shape, dtype=object)
            for i, v in np.ndenumerate(x):
                # Entries are per-env observations; a Discrete env's is a Python int.
                is_number = isinstance(v, int | float) and not isinstance(v, bool)
                out[i] = torch.tensor(v, device=device) if is_number else _to_torch(v, device)
            return out
        try:
            return torch.tensor(x, device=device)
        except TypeError:
            return x
    if isinstance(x, np.generic) and x.dtype.kind in "biufc":
        return torch.tensor(x, device=device)
    if isinstance(x, dict):
        return {k: _to_torch(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to_torch(v, device) for v in x)
    if isinstance(x, list):
        return [_to_torch(v, device) for v in x]
    return x


def _to_numpy(x: Any) -> Any:
    """Tensors to numpy arrays, recursing into dicts, tuples and lists (for reset options)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(_to_numpy(v) for v in x)
    return x


def _action_to_numpy(action: Any, space: gym.Space, where: str = "actions") -> Any:
    """Convert a batched action to numpy of ``space``'s dtype, checking shape and kind on the way."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(action, dict):
            raise TypeError(
                f"{where} must be a dict with keys {list(space.spaces)}, got {type(action).__name__}"
            )
        return {k: _action_to_numpy(action[k], sub, f"{where}[{k!r}]") for k, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        if not isinstance(action, tuple | list) or len(action) != len(space.spaces):
            raise TypeError(
                f"{where} must be a tuple of {len(space.spaces)} entries, got {type(action).__name__}"
            )
        return tuple(
            _action_to_numpy(a, sub, f"{where}[{i}]")
            for i, (a, sub) in enumerate(zip(action, space.spaces, strict=True))
        )
    if isinstance(action, torch.Tensor):
        arr = action.detach().cpu().numpy()
    else:
        try:
            arr = np.asarray(action)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{where} must be a torch.Tensor or numpy array, got {type(action).__name__}"
            ) from exc
    if not isinstance(
        space, gym.spaces.Box | gym.spaces.Discrete | gym.spaces.MultiDiscrete | gym.spaces.MultiBinary
    ):
        return arr
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{where} must hold numbers, got dtype {arr.dtype}")
    if isinstance(space, gym.spaces.Box):
        if arr.dtype.kind != "f" and np.issubdtype(space.dtype, np.floating):
            raise TypeError(f"{where} dtype is {arr.dtype}; the continuous action space {space} takes floats")
    elif isinstance(space, gym.spaces.MultiBinary):
        if arr.dtype.kind not in "biu":
            raise TypeError(
                f"{where} dtype is {arr.dtype}; the binary action space {space} takes 0/1 or bools"
            )
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{where} dtype is {arr.dtype}; the discrete action space {space} takes integers")
    if space.shape is not None and arr.shape != space.shape:
        raise ValueError(
            f"{where} have shape {arr.shape}; the batched action space {space} needs shape {space.shape}"
        )
    _check_action_values(arr, space, where)
    return arr.astype(space.dtype, copy=False)


def _check_action_values(arr: np.ndarray, space: gym.Space, where: str) -> None:
    """Refuse what Gymnasium's envs would answer with a KeyError or a silent NaN: discrete indices
    outside the space (FrozenLake looks them up in a dict) and non-finite continuous actions. The
    actions are on the host already (numpy), so the check costs no device synchronization."""
    if isinstance(space, gym.spaces.Box):
        bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(arr.shape, bool)
        allowed = "finite numbers (out-of-box values are clipped by most envs, NaN and inf are not)"
    elif isinstance(space, gym.spaces.MultiBinary):
        bad, allowed = (arr != 0) & (arr != 1), "0 or 1"
    else:  # Discrete and MultiDiscrete, batched: per sub-env ranges [start, start + n)
        start, n = np.asarray(space.start), np.asarray(space.nvec if hasattr(space, "nvec") else space.n)
        bad = (arr < start) | (arr >= start + n)
        low, high = int(np.min(start)), int(np.max(start + n))
        allowed = f"integers in [{low}, {high})"
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{where}[{', '.join(map(str, index))}] = {arr[index].item()!r} is not allowed; use {allowed}"
        )


class TorchVectorWrapper(VectorWrapper):
    """A Gymnasium vector env seen through torch: tensors on ``device`` out, tensors (or numpy) in.

    Observations, rewards, ``terminated``, ``truncated`` and numeric info arrays come back as torch
    tensors with numpy's dtypes (float32 observations stay float32, Gymnasium's float64 rewards stay
    float64, discrete observations are int64); actions may be torch tensors on any device, numpy
    arrays or lists and are converted to numpy of the action space's dtype. A bool ``reset_mask``
    tensor in ``reset(options=...)`` is converted too.

    Attributes:
        functional: False: the wrapped env keeps hidden state and cannot re-simulate from a given
            state; this serves data collection and evaluation, not models of the dynamics.
        device: where the returned tensors live.
        env: the wrapped numpy vector env.
    """

    functional: bool = False

    def __init__(self, env: VectorEnv, device: torch.device | str | None = None):
        """Wrap ``env`` (a numpy ``gymnasium.vector.VectorEnv``); ``device`` defaults to the CPU."""
        super().__init__(env)
        self.device = resolve_device(device)
        self._steps = 0  # steps since construction, for naming where a non-finite output arose

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset as the wrapped env does (``seed`` int seeds sub-env i with ``seed + i``); tensors out."""
        obs, info = self.env.reset(seed=seed, options=_to_numpy(options))
        return _to_torch(obs, self.device), _to_torch(info, self.device)

    def step(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step with a batch of actions shaped like ``action_space``; returns torch tensors.

        Raises:
            ValueError: naming the sub-env, the step and the action, if the env returned a NaN or
                infinite reward or observation (checked on the host, where the arrays already are).
        """
        numpy_actions = _action_to_numpy(actions, self.action_space)
        obs, reward, terminated, truncated, info = self.env.step(numpy_actions)
        self._steps += 1
        for what, value in (("reward", reward), ("observation", obs)):
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int(np.argwhere(~np.isfinite(value.reshape(len(value), -1)))[0, 0])
                name = self.env.spec.id if self.env.spec is not None else type(self.env.unwrapped).__name__
                raise ValueError(
                    f"{name} returned a non-finite {what} at step {self._steps} of this vector env, "
                    f"sub-env {bad} (action {np.asarray(numpy_actions)[bad].tolist()!r}): the env's own "
                    "output, not the policy's"
                )
        return (
            _to_torch(obs, self.device),
            _to_torch(reward, self.device),
            _to_torch(terminated, self.device),
            _to_torch(truncated, self.device),
            _to_torch(info, self.device),
        )

    def __repr__(self) -> str:
        return f"TorchVectorWrapper({self.env!r}, device={self.device}, functional=False)"


def numpy_view(env: VectorEnv) -> VectorEnv:
    """A torch vector env seen through numpy, so that Gymnasium's vector wrappers apply to it.

    Gymnasium's vector wrappers (``RecordEpisodeStatistics``, ``NormalizeObservation``,
    ``NormalizeReward``, ``ClipAction``, ``RescaleAction``...) compute with numpy and fail on torch
    tensors. This is Gymnasium's own ``ArrayConversion`` from torch (on the env's device) to
    numpy; wrap the result, and end with ``gymnasium.wrappers.vector.NumpyToTorch`` to hand torch
    tensors to a torch policy again::

        vec = envs.numpy_view(envs.make_vec("Pendulum-v1", 16))
        vec = NumpyToTorch(NormalizeObservation(RecordEpisodeStatistics(vec)))

    Each step then copies observations and rewards to the host: a device synchronization per step
    on CUDA, which the library's own training loops avoid by staying in torch.

    Raises:
        ImportError: naming the ``wrappers`` extra, if ``array-api-compat`` is not installed.
    """
    try:
        from gymnasium.wrappers.vector import ArrayConversion
    except ModuleNotFoundError as exc:  # Gymnasium imports array_api_compat there
        raise ImportError(
            f"numpy_view needs {exc.name!r}: pip install 'rl_as_inference[wrappers]' (or array-api-compat)"
        ) from None
    if not isinstance(env, VectorEnv):
        raise TypeError(f"numpy_view wraps a gymnasium VectorEnv, got {type(env).__name__}")
    device = getattr(env, "device", None) or getattr(env.unwrapped, "device", None)
    return ArrayConversion(env, env_xp=torch, target_xp=np, env_device=device)


def from_gymnasium(
    id_or_factory: str | Callable[[], gym.Env] | VectorEnv,
    num_envs: int,
    *,
    device: torch.device | str | None = None,
    vectorization_mode: str = "sync",
    **make_kwargs: Any,
) -> TorchVectorWrapper:
    """Wrap any Gymnasium environment as a vector env with torch tensors in and out (not functional).

    Args:
        id_or_factory: a registered Gymnasium id (built with ``gymnasium.make_vec``), a callable
            returning a fresh ``gymnasium.Env`` (called once per sub-env), or an existing
            ``gymnasium.vector.VectorEnv`` with ``num_envs`` sub-envs.
        num_envs: number of sub-envs N >= 1.
        device: where returned tensors live (default CPU; ``"auto"`` picks CUDA when present).
        vectorization_mode: ``"sync"`` (default), ``"async"`` or, for an id, ``"vector_entry_point"``.
        **make_kwargs: for an id, passed to ``gymnasium.make_vec`` (environment parameters,
            ``max_episode_steps``, ``vector_kwargs={"autoreset_mode": ...}``, ``wrappers``); for a
            factory only ``vector_kwargs`` is accepted (arguments of ``SyncVectorEnv``).

    Returns:
        A :class:`TorchVectorWrapper` with ``functional = False``: it cannot re-simulate from a
        state, so it serves data collection and evaluation.
    """
    num_envs = check_num_envs(num_envs)
    device = resolve_device(device)
    if isinstance(id_or_factory, str):
        try:
            gym.spec(id_or_factory)
        except gym.error.Error as exc:
            raise ValueError(f"unknown Gymnasium environment id {id_or_factory!r}: {exc}") from exc
        with naming_missing_packages(id_or_factory):
            venv = gym.make_vec(id_or_factory, num_envs, vectorization_mode=vectorization_mode, **make_kwargs)
    elif isinstance(id_or_factory, VectorEnv):
        if make_kwargs:
            raise TypeError(f"arguments {sorted(make_kwargs)} do not apply to an already built vector env")
        if id_or_factory.num_envs != num_envs:
            raise ValueError(
                f"num_envs={num_envs} but the given vector env has {id_or_factory.num_envs} sub-envs"
            )
        venv = id_or_factory
    elif isinstance(id_or_factory, gym.Env):
        raise TypeError(
            "from_gymnasium needs a factory, not an env instance: sub-envs cannot share one env; "
            "pass e.g. lambda: gym.make(...)"
        )
    elif callable(id_or_factory):
        vector_kwargs = dict(make_kwargs.pop("vector_kwargs", None) or {})
        if make_kwargs:
            raise TypeError(
                f"arguments {sorted(make_kwargs)} only apply to an id; with a factory, build them into it "
                "(only vector_kwargs=... is accepted)"
            )
        if vectorization_mode == "sync":
            venv = SyncVectorEnv([id_or_factory] * num_envs, **vector_kwargs)
        elif vectorization_mode == "async":
            venv = AsyncVectorEnv([id_or_factory] * num_envs, **vector_kwargs)
        else:
            raise ValueError(
                f"vectorization_mode={vectorization_mode!r} is not allowed with a factory; use 'sync' or 'async'"
            )
    else:
        raise TypeError(
            "from_gymnasium needs a Gymnasium id (str), a factory returning a gymnasium.Env, or a VectorEnv; "
            f"got {type(id_or_factory).__name__}"
        )
    return TorchVectorWrapper(venv, device=device)
