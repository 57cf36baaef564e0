"""Finite MDPs as functional environments, and generators of small test MDPs.

These are the ground truth of the library: exact inference (``rl_as_inference.exact``) solves them
in closed form, so every estimator and algorithm can be checked against the exact answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import pyro.distributions as pyro_dist
import torch

from .base import FunctionalEnv, Step, check_num_envs

__all__ = ["TabularMDP", "chain", "gridworld", "probability_table", "random_mdp"]

_ROW_TOL = 1e-6


def _as_float64(name: str, value, ndim: int | None) -> torch.Tensor:
    """``value`` as a float64 CPU tensor with ``ndim`` dimensions (any but 0 where None), finite."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a numpy array or torch tensor of numbers, got {type(value).__name__}"
            ) from exc
    if ndim is None and t.dim() == 0:
        raise ValueError(f"{name} must be a table of probabilities, got a scalar")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(t))[0])
        raise ValueError(f"{name} must be finite; {name}{list(bad)} is {t[bad].item()}")
    return t


def _check_distribution(name: str, probs: torch.Tensor, rows: str = "probabilities") -> None:
    """Raise unless the last axis of ``probs`` holds probability vectors (``rows`` names them)."""
    if (probs < 0).any():
        bad = tuple(int(i) for i in torch.nonzero(probs < 0)[0])
        raise ValueError(f"{name} must be non-negative; {name}{list(bad)} is {probs[bad].item()}")
    sums = probs.sum(-1)
    off = (sums - 1).abs() > _ROW_TOL
    if off.any():
        bad = tuple(int(i) for i in torch.nonzero(off)[0]) if sums.dim() else ()
        where = f"{name}[{', '.join(map(str, bad))}{', ' if bad else ''}:]"
        raise ValueError(f"{where} sums to {sums[bad].item():.6g}; {rows} must sum to 1")


def probability_table(
    name: str, value, *, ndim: int | None = None, rows: str = "probabilities"
) -> torch.Tensor:
    """``value`` checked as a table whose last axis holds probability vectors, as float64 on the CPU.

    The one check behind every table of probabilities the library takes (an MDP's transition and
    initial distribution, exact inference's prior and policy, ``models.TablePrior``): finite,
    non-negative, each row summing to 1 within 1e-6.

    Raises:
        TypeError: if ``value`` is not numbers.
        ValueError: naming ``name``, the first offending index and its value.
    """
    t = _as_float64(name, value, ndim)
    _check_distribution(name, t, rows)
    return t


class TabularMDP(FunctionalEnv):
    """A finite MDP with transition P[s, a, s'], reward R[s, a] and initial distribution p0[s].

    States are integer tensors ``[*B]``, actions integer tensors whose batch broadcasts with it
    (``[*B]``, or Pyro's enumerated ``[A, 1, ..., 1]``: the tables are indexed with both). The step is
    s' ~ P(. | s, a), reward R[s, a]; ``terminated`` is ``terminal[s']`` (no terminal states unless
    given). For stochastic MDPs :meth:`transition_dist` returns the Categorical of s' so that a
    trajectory model can make it a Pyro sample site shared with the guide (the source's eq. 12), and
    :meth:`step` accepts that sampled ``next_state``.

    Args:
        transition: ``[S, A, S]`` non-negative, finite, each ``transition[s, a, :]`` summing to 1.
        reward: ``[S, A]`` finite rewards r(s, a).
        initial: ``[S]`` initial distribution p(s_0).
        terminal: optional ``[S]`` bools; entering a terminal state ends the episode.
        name: a label used in messages and diagnostics.
        device, dtype: where the tables live and the dtype of rewards (float32 by default).
    """

    broadcasts_batch = True

    def __init__(
        self,
        transition,
        reward,
        initial,
        *,
        terminal=None,
        name: str = "TabularMDP",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(device=device, dtype=dtype)
        P = _as_float64("transition", transition, 3)
        S, A, S2 = P.shape
        if S < 1 or A < 1 or S2 != S:
            raise ValueError(f"transition must have shape [S, A, S] with S, A >= 1, got {tuple(P.shape)}")
        _check_distribution("transition", P)
        R = _as_float64("reward", reward, 2)
        if tuple(R.shape) != (S, A):
            raise ValueError(
                f"reward must have shape [S, A] = [{S}, {A}] to match transition, got {tuple(R.shape)}"
            )
        p0 = _as_float64("initial", initial, 1)
        if tuple(p0.shape) != (S,):
            raise ValueError(
                f"initial must have shape [S] = [{S}] to match transition, got {tuple(p0.shape)}"
            )
        _check_distribution("initial", p0)
        if terminal is None:
            term = torch.zeros(S, dtype=torch.bool)
        else:
            term = torch.as_tensor(
                np.asarray(terminal.cpu() if isinstance(terminal, torch.Tensor) else terminal)
            )
            if tuple(term.shape) != (S,) or term.dtype != torch.bool:
                raise ValueError(
                    f"terminal must be a bool array of shape [{S}], got {term.dtype} {tuple(term.shape)}"
                )
        self.name_ = name
        self.num_states, self.num_actions = S, A
        # Probabilities stay float64 so that exact inference and sampling see the tables as given.
        self.transition = P.to(self.device)
        self.reward = R.to(device=self.device, dtype=self.dtype)
        self.initial = p0.to(self.device)
        # The sample sites of a trajectory model take the env's dtype, like its actions and factors:
        # Pyro's TraceEnum_ELBO contracts every site's log-probabilities in one einsum, one dtype.
        self._site_transition = P.to(device=self.device, dtype=self.dtype)
        self._site_initial = p0.to(device=self.device, dtype=self.dtype)
        self.terminal = term.to(self.device)
        self.stochastic = bool(((P > 0).sum(-1) > 1).any())
        self._next_index = P.argmax(-1).to(self.device)  # the next state where dynamics are deterministic
        self.observation_space = gym.spaces.Discrete(S)
        self.action_space = gym.spaces.Discrete(A)

    @property
    def name(self) -> str:
        return self.name_

    # ------------------------------------------------------------------ dynamics
    def transition_dist(self, state: torch.Tensor, action: torch.Tensor) -> torch.distributions.Categorical:
        """Categorical over s' with probabilities ``transition[state, action]``, batch shape ``[*B]``.

        A Pyro ``Categorical`` (a subclass of torch's), so a trajectory model can make s' a sample
        site; its probabilities are in the env's dtype (the float64 tables rounded for float32).
        """
        self.check_state(state)
        self.check_action(action, state)
        return pyro_dist.Categorical(probs=self._site_transition[state, action], validate_args=False)

    def initial_dist(self, num_episodes: int) -> pyro_dist.Categorical:
        """p(s_0) as a Pyro ``Categorical`` of batch shape ``[num_episodes]``, in the env's dtype."""
        return pyro_dist.Categorical(probs=self._site_initial, validate_args=False).expand(
            [check_num_envs(num_episodes)]
        )

    def step(
        self,
        state: torch.Tensor,
        action: torch.Tensor,
        next_state: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Step:
        """One step: s' (sampled unless ``next_state`` is given), reward R[s, a], ``terminal[s']``."""
        self.check_state(state)
        self.check_action(action, state)
        if next_state is None:
            next_state = self.sample_next(state, action, generator)
        else:
            self.check_state(next_state)
            batch = torch.broadcast_shapes(state.shape, action.shape)
            try:
                torch.broadcast_shapes(next_state.shape, batch)
            except RuntimeError:
                raise ValueError(
                    f"next_state has shape {tuple(next_state.shape)}, which does not broadcast with "
                    f"the batch {tuple(batch)} of state and action"
                ) from None
        return Step(next_state, self.reward[state, action], self.terminal[next_state])

    def sample_next(
        self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw s' ~ P(. | s, a) on the device (no host sync)."""
        if not self.stochastic:
            return self._next_index[state, action]
        probs = self.transition[state, action]
        draws = torch.multinomial(probs.reshape(-1, self.num_states), 1, generator=generator)
        return draws.reshape(probs.shape[:-1])

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> Step:
        return self.step(state, action)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def observe(self, state: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The observation of a tabular state is the state index itself (as Gymnasium's Discrete spaces)."""
        self.check_state(state)
        return state if dtype is None else state.to(dtype)

    # ------------------------------------------------------------------ reset
    def sample_initial(self, num_envs: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.multinomial(
            self.initial, check_num_envs(num_envs), replacement=True, generator=generator
        )

    def reset_numpy(self, rngs: list[np.random.Generator]) -> torch.Tensor:
        p0 = self.initial.cpu().numpy()
        p0 = p0 / p0.sum()
        return torch.as_tensor([int(rng.choice(self.num_states, p=p0)) for rng in rngs], device=self.device)

    def __repr__(self) -> str:
        kind = "stochastic" if self.stochastic else "deterministic"
        return f"TabularMDP(name={self.name!r}, S={self.num_states}, A={self.num_actions}, {kind}, device={self.device})"


# ---------------------------------------------------------------------- generators
def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; use an int >= 1")
    return value


def random_mdp(
    num_states: int,
    num_actions: int,
    *,
    seed: int = 0,
    deterministic: bool = False,
    branching: int | None = None,
    reward_scale: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> TabularMDP:
    """A seeded random MDP: rewards ~ N(0, reward_scale^2), p0 ~ Dirichlet(1).

    Deterministic dynamics send (s, a) to a uniformly drawn s'; stochastic ones draw each row
    from Dirichlet(1) over ``branching`` random successors (all states if None).
    """
    S, A = _check_size("num_states", num_states), _check_size("num_actions", num_actions)
    rng = np.random.default_rng(seed)
    P = np.zeros((S, A, S))
    if deterministic:
        P[np.arange(S)[:, None], np.arange(A)[None, :], rng.integers(0, S, size=(S, A))] = 1.0
    else:
        k = S if branching is None else max(1, min(int(branching), S))
        for s in range(S):
            for a in range(A):
                succ = rng.choice(S, size=k, replace=False)
                P[s, a, succ] = rng.dirichlet(np.ones(k))
    R = rng.normal(0.0, reward_scale, size=(S, A))
    p0 = rng.dirichlet(np.ones(S))
    kind = "det" if deterministic else "stoch"
    return TabularMDP(P, R, p0, name=f"random-{S}x{A}-{kind}-seed{seed}", device=device, dtype=dtype)


_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # up, right, down, left


def gridworld(
    height: int = 4,
    width: int = 4,
    *,
    walls: Sequence[tuple[int, int]] = (),
    start: tuple[int, int] = (0, 0),
    goal: tuple[int, int] | None = None,
    slip: float = 0.0,
    step_reward: float = -1.0,
    goal_reward: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> TabularMDP:
    """A gridworld: actions up, right, down, left; walls and edges block moves; the goal is terminal.

    State index = row * width + col. With probability ``slip`` the move goes in a uniformly random
    direction instead. Reward r(s, a) is ``step_reward`` per move, plus ``goal_reward`` times the
    probability that the move enters the goal (rewards depend on (s, a) only).
    """
    H, W = _check_size("height", height), _check_size("width", width)
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip={slip!r} is not allowed; use a probability in [0, 1]")
    goal = (H - 1, W - 1) if goal is None else tuple(goal)
    wall_set = {tuple(w) for w in walls}
    for name, cell in (("start", tuple(start)), ("goal", goal), *(("wall", w) for w in wall_set)):
        if not (0 <= cell[0] < H and 0 <= cell[1] < W):
            raise ValueError(f"{name} {cell} is outside the {H}x{W} grid")
    if tuple(start) in wall_set or goal in wall_set:
        raise ValueError("start and goal must not be walls")
    S, A = H * W, len(_MOVES)

    def target(r: int, c: int, move: int) -> int:
        nr, nc = r + _MOVES[move][0], c + _MOVES[move][1]
        if not (0 <= nr < H and 0 <= nc < W) or (nr, nc) in wall_set:
            return r * W + c
        return nr * W + nc

    P = np.zeros((S, A, S))
    for r in range(H):
        for c in range(W):
            s = r * W + c
            for a in range(A):
                if (r, c) == goal or (r, c) in wall_set:
                    P[s, a, s] = 1.0
                    continue
                P[s, a, target(r, c, a)] += 1.0 - slip
                for m in range(A):
                    P[s, a, target(r, c, m)] += slip / A
    g = goal[0] * W + goal[1]
    R = step_reward + goal_reward * P[:, :, g]
    p0 = np.zeros(S)
    p0[start[0] * W + start[1]] = 1.0
    terminal = np.zeros(S, dtype=bool)
    terminal[g] = True
    return TabularMDP(P, R, p0, terminal=terminal, name=f"gridworld-{H}x{W}", device=device, dtype=dtype)


def chain(
    length: int = 5,
    *,
    slip: float = 0.0,
    small_reward: float = 0.1,
    large_reward: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> TabularMDP:
    """The classic chain: actions 0 (left) and 1 (right) along ``length`` states, starting at state 0.

    Moving left at state 0 pays ``small_reward`` (a tempting local optimum); moving right at the
    last state pays ``large_reward``. With probability ``slip`` an action moves the other way.
    """
    n = _check_size("length", length)
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip={slip!r} is not allowed; use a probability in [0, 1]")
    P = np.zeros((n, 2, n))
    for s in range(n):
        left, right = max(s - 1, 0), min(s + 1, n - 1)
        P[s, 0, left] += 1.0 - slip
        P[s, 0, right] += slip
        P[s, 1, right] += 1.0 - slip
        P[s, 1, left] += slip
    R = np.zeros((n, 2))
    R[0, 0] = small_reward
    R[n - 1, 1] = large_reward
    p0 = np.zeros(n)
    p0[0] = 1.0
    return TabularMDP(P, R, p0, name=f"chain-{n}", device=device, dtype=dtype)
