"""The functional environment protocol shared by every torch-native environment.

A functional environment holds constants only. Its state is a tensor that the caller owns and passes
in, and :meth:`FunctionalEnv.step` is a pure function of ``(state, action)``. That is what lets a
Pyro model and a Pyro guide run the *same* dynamics (the source's eq. 12: q(tau) and p(tau, O) share
p(s_0) and p(s_{t+1} | s_t, a_t)), lets gradients flow through the dynamics, and lets a rollout be
captured by ``torch.compile`` or a CUDA graph.

States and actions carry any batch shape ``B`` (``[N]`` in the common case, ``[P, N]`` with a
particle dimension): a state is ``[*B, k]`` for a continuous-state env and ``[*B]`` (integers) for a
tabular one; an action is ``[*B]`` (integers) for a discrete action space and ``[*B, action_dim]``
for a continuous one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch

__all__ = [
    "FunctionalEnv",
    "Step",
    "clamp_into",
    "resolve_device",
    "resolve_dtype",
    "stack_state",
    "stream_from",
]


def clamp_into(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``action`` clamped into the box [low, high] (infinite bounds leave it free); on the device.

    The action an env with a Box action space is handed (the collectors clamp with it), and the
    action a clipping critic values (:class:`rl_as_inference.critics.QNetwork`).
    """
    return torch.maximum(torch.minimum(action, high.to(action.dtype)), low.to(action.dtype))


def stack_state(columns: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Assemble a ``[*B, k]`` state from its k columns, stored feature-major.

    The result is a ``[*B, k]`` view of ``[k, *B]`` memory: stacking along a new leading dim is a
    contiguous copy (4.6x faster than interleaving along the last dim at 1M envs) and the next
    step's ``unbind(-1)`` then hands every formula a contiguous column (sin of a strided column
    took 2x as long). Values are unchanged, so float64 results stay bit-identical.
    """
    return torch.stack(columns, dim=0).movedim(0, -1)


class Step(NamedTuple):
    """The result of one pure environment step.

    Attributes:
        state: the next state, same layout as the input state.
        reward: ``[*B]`` reward r(s_t, a_t) of the step, in the env's dtype.
        terminated: ``[*B]`` bool, True where the next state is terminal (time limits are not
            termination: they belong to the vector env and to the trajectory model's horizon).
    """

    state: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor


@contextlib.contextmanager
def stream_from(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run the block on a fork of torch's global stream seeded from ``generator``.

    torch distributions draw from the global stream only; this makes their draws reproducible from
    a generator and leaves the caller's stream as it was. The seed is read back from the
    generator once (a host sync when it lives on CUDA). ``device``: where the draws happen (its
    CUDA stream is forked too)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def resolve_device(device: torch.device | str | None) -> torch.device:
    """Turn ``None``/``"auto"``/a string into a ``torch.device``; ``"auto"`` picks CUDA when present.

    Raises:
        ValueError: naming the device, if it is not a torch device or names a CUDA device this
            machine does not have (torch would fail later, deep inside the first tensor op).
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'auto'"
        ) from exc
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={device!r} but this machine has no CUDA device "
                "(torch.cuda.is_available() is False); use 'cpu' or 'auto'"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device={device!r} but this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; use one of those, 'cpu' or 'auto'"
            )
    return resolved


def resolve_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """Default to float32 (fast); accept float32 or float64 only."""
    if dtype is None:
        return torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype={dtype!r} is not supported; use torch.float32 or torch.float64")
    return dtype


class FunctionalEnv:
    """Base class of batched, pure, torch-native environments.

    Subclasses set the class attributes below and implement :meth:`_step`, :meth:`observe` and
    the reset distribution (:meth:`_initial_from_uniform` with :attr:`reset_low` /
    :attr:`reset_high`, or override :meth:`reset`).

    Attributes:
        id: Gymnasium id this env reproduces (``None`` for a user-built env such as a tabular MDP).
        observation_space, action_space: Gymnasium spaces of ONE environment.
        max_episode_steps: the time limit of Gymnasium's registry (``None`` when there is none).
        differentiable: True only where pathwise (reparameterized) gradients of the expected
            return are unbiased: actions are continuous, the next state and the reward are
            continuous functions of (state, action), differentiable almost everywhere (clips
            and kinks are fine), and no episode terminates. A jump (a goal bonus, a termination,
            a wall that zeroes the velocity) adds a boundary term to d E[sum_t r_t] / d theta
            that autograd cannot see, so an env with one declares False even where torch
            gradients flow through :meth:`step` (``TrajectoryELBO(estimator="pathwise")`` still
            takes them). It selects the estimator of ``TrajectoryELBO(estimator="auto")``
            (pathwise where True, score function otherwise) and gates ``svi``;
            ``tests/test_pathwise.py`` checks that both estimators agree wherever it is True.
        stochastic: True where the next state is random given (state, action); then
            :meth:`transition_dist` returns its distribution.
        broadcasts_batch: True where :meth:`step` broadcasts the batch shapes of state and
            action against each other (a finite MDP indexes its tables with both). Pyro's
            parallel enumeration needs it: an enumerated action arrives as ``[A, 1, ..., 1]``
            against a state batch ``[..., N]``. Elsewhere the two batches must be equal.
        state_shape: the event shape of one state (``(k,)``, or ``()`` for tabular states).
        state_low, state_high: bounds of the box the state lives in, where the env has one
            (``None`` otherwise); exploring starts draw from it.
        exploring_starts: the share of resets drawn uniformly from the state box instead of
            from p(s_0) (0 by default; set by :meth:`use_exploring_starts`).
    """

    id: str | None = None
    observation_space: gym.Space
    action_space: gym.Space
    max_episode_steps: int | None = None
    differentiable: bool = False
    stochastic: bool = False
    broadcasts_batch: bool = False
    state_shape: tuple[int, ...] = ()
    # Uniform reset draws: state_0 = f(low + (high - low) * U), U ~ U[0, 1)^len(low), drawn in
    # the same order as Gymnasium's reset so that the numpy path can reproduce it exactly.
    reset_low: tuple[float, ...] = ()
    reset_high: tuple[float, ...] = ()
    state_low: tuple[float, ...] | None = None
    state_high: tuple[float, ...] | None = None
    exploring_starts: float = 0.0

    def __init__(self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)

    # ------------------------------------------------------------------ public API
    def reset(
        self,
        num_envs: int,
        seed: int | None = None,
        *,
        seeding: str = "torch",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``num_envs`` initial states s_0 ~ p(s_0).

        Args:
            num_envs: batch size N >= 1.
            seed: makes the draw reproducible: the same seed gives the same states.
            seeding: ``"torch"`` (default) draws on the env's device with a torch generator;
                ``"gymnasium"`` reproduces ``gymnasium.make_vec(id, N, vectorization_mode="sync")
                .reset(seed=seed)`` exactly (numpy PCG64 per sub-env seeded ``seed + i``; slower,
                host-side, for tests and exact comparisons).
            generator: a torch generator to draw from (``seeding="torch"`` only), for callers that
                reset repeatedly from one stream; ``seed`` and ``generator`` are exclusive.

        Returns:
            ``[N, *state_shape]`` initial states on the env's device.
        """
        num_envs = check_num_envs(num_envs)
        if seeding == "gymnasium":
            if generator is not None:
                raise ValueError("generator= is only used with seeding='torch'")
            rngs = gymnasium_rngs(num_envs, seed)
            return self.reset_numpy(rngs)
        if seeding != "torch":
            raise ValueError(f"seeding={seeding!r} is not allowed; use 'torch' or 'gymnasium'")
        if generator is not None and seed is not None:
            raise ValueError("pass either seed= or generator=, not both")
        if generator is None:
            generator = torch.Generator(device=self.device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        return self.sample_initial(num_envs, generator)

    def use_exploring_starts(self, fraction: float) -> FunctionalEnv:
        """Draw a share ``fraction`` of all resets uniformly from the state box; returns ``self``.

        Exploring starts (Sutton and Barto, s.5.3) let a learner see states that its own policy
        would take long to reach, e.g. a MountainCar already moving fast: training data then
        covers the states where the sparse reward is, while evaluation keeps p(s_0). The dynamics,
        rewards and terminations are unchanged; only where episodes begin moves.

        Raises:
            ValueError: ``fraction`` outside [0, 1], or the env has no state box.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"exploring_starts must be a number in [0, 1], got {fraction!r}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"exploring_starts={fraction!r} is not allowed; use a share in [0, 1]")
        if fraction > 0 and self.state_low is None:
            raise ValueError(
                f"exploring_starts needs a bounded state box, and {self.name} declares none; "
                f"envs with one: MountainCar-v0, MountainCarContinuous-v0, Pendulum-v1, Acrobot-v1"
            )
        self.exploring_starts = float(fraction)
        return self

    def sample_initial(self, num_envs: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``[num_envs, *state_shape]`` initial states on the device (no host sync)."""
        low, high = self._device_box("reset_low", "reset_high")
        u = torch.rand(num_envs, low.numel(), generator=generator, device=self.device, dtype=torch.float64)
        initial = self._initial_from_uniform(low + (high - low) * u).to(self.dtype)
        if self.exploring_starts == 0:
            return initial
        box_low, box_high = self._device_box("state_low", "state_high")
        u = torch.rand(
            num_envs, box_low.numel(), generator=generator, device=self.device, dtype=torch.float64
        )
        anywhere = (box_low + (box_high - box_low) * u).to(self.dtype)
        pick = torch.rand(num_envs, generator=generator, device=self.device) < self.exploring_starts
        return torch.where(pick.unsqueeze(-1), anywhere, initial)

    def _device_box(self, low: str, high: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The float64 bounds named by the class attributes ``low`` / ``high``, on the env's device."""
        # Built once: a torch.tensor(...) per call would be a blocking host-to-device copy on CUDA.
        cache = self.__dict__.setdefault("_device_boxes", {})
        if low not in cache:
            cache[low] = tuple(
                torch.tensor(getattr(self, name), device=self.device, dtype=torch.float64)
                for name in (low, high)
            )
        return cache[low]

    def reset_numpy(self, rngs: list[np.random.Generator]) -> torch.Tensor:
        """Initial states drawn exactly as Gymnasium's ``reset`` draws them, one numpy generator per env."""
        if self.exploring_starts > 0:  # every Gymnasium-seeded reset (env or vector env) comes here
            raise ValueError(
                "seeding='gymnasium' reproduces Gymnasium's reset distribution; it cannot be used "
                f"with exploring_starts={self.exploring_starts}"
            )
        draws = np.stack([rng.uniform(low=self.reset_low, high=self.reset_high) for rng in rngs])
        return self._initial_from_uniform(torch.as_tensor(draws, dtype=torch.float64)).to(
            device=self.device, dtype=self.dtype
        )

    def step(
        self,
        state: torch.Tensor,
        action: torch.Tensor,
        next_state: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Step:
        """One pure step: ``Step(next_state, reward, terminated)``; the inputs are not modified.

        Implements p(s_{t+1} | s_t, a_t) and the reward of the trajectory model. Deterministic
        envs return the next state of ``_step(state, action)``. Stochastic ones (``stochastic =
        True``) draw s_{t+1} with :meth:`sample_next` (from ``generator`` where given) unless
        ``next_state`` is given (a trajectory model makes it a Pyro sample site and passes its
        value), then call ``_step(state, action, next_state)`` for the reward and termination
        of that transition. Deterministic envs ignore ``generator``.

        Reward contract: ``reward`` is r_t of step t, the factor ``O_t = r_t / alpha``. It may
        depend on (s_t, a_t) and on the next state s_{t+1} (a goal bonus on arrival, as in
        MountainCarContinuous-v0): the site ledger books a stochastic transition s_{t+1} at step t,
        so its score-function term is credited with r_t as well, and the estimate stays unbiased
        either way. Stochastic envs also accept ``step(state, action, next_state=...)``: the
        reward and termination of a next state drawn from :meth:`transition_dist`.
        """
        self.check_state(state)
        self.check_action(action, state)
        if self.stochastic:
            if next_state is None:
                next_state = self.sample_next(state, action, generator)
            else:
                self.check_state(next_state)
            out = self._step(state, action, next_state)
        elif next_state is not None:
            raise ValueError(
                f"{self.name} has deterministic dynamics (stochastic = False): step takes no next_state"
            )
        else:
            out = self._step(state, action)
        self._check_reward(out.reward)
        return out

    def _check_reward(self, reward: torch.Tensor) -> None:
        # The inputs were finite: a NaN or infinite reward is the env's own, named here rather than
        # as a NaN critic or ELBO many steps later.
        index = _non_finite_index(reward)
        if index is not None:
            raise ValueError(
                f"{self.name}'s step returned a non-finite reward {reward[index].item()} at index "
                f"{index} from a finite state and action: the env's own reward function"
            )

    def observe(self, state: torch.Tensor, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Observation of a batch of states, as Gymnasium returns it (float32 by default).

        Pass ``dtype=None`` to keep the env's dtype (and with it gradients in float64).
        """
        self.check_state(state)
        obs = self._observe(state)
        return obs if dtype is None else obs.to(dtype)

    def transition_dist(self, state: torch.Tensor, action: torch.Tensor) -> torch.distributions.Distribution:
        """The distribution of s_{t+1} given (s_t, a_t); only for stochastic envs.

        A Pyro (or torch) distribution of batch shape ``[*B]`` and event shape ``state_shape``
        (``.to_event(1)`` for a ``[*B, k]`` state). Reparameterizable ones (Normal) keep pathwise
        gradients through the transition; others (Bernoulli, Categorical) are scored by the ELBO.
        """
        raise NotImplementedError(f"{type(self).__name__} has deterministic dynamics: use step()")

    def sample_next(
        self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw s_{t+1} ~ :meth:`transition_dist` (stochastic envs).

        torch distributions draw from torch's global stream; with a ``generator`` the draw is made
        reproducible from it instead: it runs under a fork of that stream seeded from
        ``generator``, so the vector envs' and ``GymnasiumEnv``'s seeds fix it, and the caller's
        global stream is left as it was. The seed is read back once per call (a host sync on
        CUDA): override this method with a device-side draw where that matters, as
        :class:`~rl_as_inference.envs.TabularMDP` does.
        """
        d = self.transition_dist(state, action)
        if generator is None:
            return d.sample()
        with stream_from(generator, self.device):
            return d.sample()

    # ------------------------------------------------------------------ to implement
    def _step(
        self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor | None = None
    ) -> Step:
        # deterministic envs: (state, action) -> Step; stochastic ones also get the drawn next_state
        raise NotImplementedError

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _initial_from_uniform(self, draws: torch.Tensor) -> torch.Tensor:
        return draws

    # ------------------------------------------------------------------ validation
    def check_state(self, state: torch.Tensor) -> None:
        """Raise TypeError/ValueError unless ``state`` is a ``[*B, *state_shape]`` tensor of this env."""
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"state must be a torch.Tensor, got {type(state).__name__}")
        k = len(self.state_shape)
        if state.dim() < k or tuple(state.shape[state.dim() - k :]) != self.state_shape:
            raise ValueError(
                f"state has shape {tuple(state.shape)}; {self.name} expects [*batch, {', '.join(map(str, self.state_shape))}]"
                if k
                else f"state has shape {tuple(state.shape)}; {self.name} expects [*batch]"
            )
        self._check_dtype_device("state", state, integer=not self.state_shape)
        space = getattr(self, "observation_space", None)
        self._check_values("state", state, space if not self.state_shape else None)

    def check_action(self, action: torch.Tensor, state: torch.Tensor) -> None:
        """Raise TypeError/ValueError unless ``action`` fits the action space and the state's batch."""
        if not isinstance(action, torch.Tensor):
            raise TypeError(f"action must be a torch.Tensor, got {type(action).__name__}")
        batch = tuple(state.shape[: state.dim() - len(self.state_shape)])
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        event = () if discrete else tuple(self.action_space.shape)
        expected = batch + event
        if tuple(action.shape) != expected and not (
            self.broadcasts_batch and _broadcasts(action.shape, batch, event)
        ):
            what = (
                "integer actions [*batch]" if discrete else f"actions [*batch, {self.action_space.shape[0]}]"
            )
            also = " (or a batch that broadcasts with the state batch)" if self.broadcasts_batch else ""
            raise ValueError(
                f"action has shape {tuple(action.shape)} but the state batch is {batch}: "
                f"{self.name} expects {what}, i.e. shape {expected}{also}"
            )
        self._check_dtype_device("action", action, integer=discrete, exact_dtype=False)
        self._check_values("action", action, self.action_space if discrete else None)

    def _check_values(self, what: str, x: torch.Tensor, space: gym.spaces.Space | None) -> None:
        """Refuse NaN or infinite entries, and integers outside ``space`` (a Discrete), on the CPU.

        On an accelerator each check would read a boolean back to the host, a device
        synchronization per step in the training loops; there the check is skipped (as the
        policies skip their argument validation: ``guides.policies.validate_on``).
        """
        if x.device.type != "cpu" or x.numel() == 0:
            return
        if x.dtype.is_floating_point:
            index = _non_finite_index(x)
            if index is not None:
                raise ValueError(
                    f"{what} has a non-finite entry {x[index].item()} at index {index}; "
                    f"{self.name} takes finite {what}s only"
                )
        elif isinstance(space, gym.spaces.Discrete):  # one min and one max, read back once each
            start, n = int(space.start), int(space.n)
            if int(x.min()) < start or int(x.max()) >= start + n:
                bad = (x < start) | (x >= start + n)
                index = bad.nonzero()[0].tolist()
                raise ValueError(
                    f"{what} {x[tuple(index)].item()} at index {tuple(index)} is out of range: "
                    f"{self.name} has {what}s in [{start}, {start + n})"
                )

    def _check_dtype_device(
        self, what: str, x: torch.Tensor, *, integer: bool, exact_dtype: bool = True
    ) -> None:
        if x.device.type != self.device.type or (
            self.device.index is not None
            and x.device.index is not None
            and x.device.index != self.device.index
        ):
            raise ValueError(f"{what} is on {x.device} but {self.name} runs on {self.device}")
        if integer:
            if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
                raise TypeError(
                    f"{what} dtype is {x.dtype}; {self.name} expects an integer tensor (e.g. torch.long)"
                )
        elif not x.dtype.is_floating_point:
            raise TypeError(
                f"{what} dtype is {x.dtype}; {self.name} expects a floating tensor ({self.dtype})"
            )
        elif exact_dtype and x.dtype != self.dtype:
            raise TypeError(f"{what} dtype is {x.dtype}; this {self.name} was made with dtype={self.dtype}")

    # ------------------------------------------------------------------ misc
    @property
    def name(self) -> str:
        return self.id or type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, device={self.device}, dtype={self.dtype})"


def _non_finite_index(x: torch.Tensor) -> tuple[int, ...] | None:
    """The index of the first NaN or infinite entry of a floating-point CPU tensor, else None
    (also on an accelerator, where looking would be a device synchronization per step).

    The fast path runs on every step: one reduction and one read, since a sum is finite only if
    every entry is; a finite batch whose sum overflows is looked at entry by entry."""
    if x.device.type != "cpu" or x.numel() == 0 or math.isfinite(float(x.detach().sum())):
        return None
    bad = (~torch.isfinite(x)).nonzero()
    return tuple(bad[0].tolist()) if len(bad) else None


def _broadcasts(shape: torch.Size, batch: tuple[int, ...], event: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` is a batch of events ``event`` that broadcasts with ``batch``."""
    k = len(event)
    if len(shape) < k or tuple(shape[len(shape) - k :]) != event:
        return False
    try:
        torch.broadcast_shapes(tuple(shape[: len(shape) - k]), batch)
    except RuntimeError:
        return False
    return True


def check_num_envs(num_envs: int) -> int:
    """Validate a batch size: a Python int >= 1."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer):
        raise TypeError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    return int(num_envs)


def gymnasium_rngs(num_envs: int, seed: int | None) -> list[np.random.Generator]:
    """One numpy generator per sub-env, seeded ``seed + i`` as Gymnasium's vector envs do."""
    from gymnasium.utils import seeding

    if seed is None:
        return [seeding.np_random(None)[0] for _ in range(num_envs)]
    return [seeding.np_random(int(seed) + i)[0] for i in range(num_envs)]
