"""Exact inference on finite MDPs: the ground truth that every estimator and algorithm is tested against.

The trajectory model is the one of :class:`~rl_as_inference.models.TrajectoryModel`, for tau = (s_0, a_0, s_1, ..., s_T), with the
discount as a per-step continuation probability (Levine 2018): the episode always takes step 0, and
after every step t it goes on with probability gamma and otherwise ends in an absorbing state with zero
reward. With D in 1 .. T the number of steps taken, p(D > t) = gamma^t, and

    p(tau, D, O) = p0(s_0) prod_{t<D} pi0(a_t|s_t) P(s_{t+1}|s_t, a_t) exp(sum_{t<D} R(s_t, a_t) / alpha)
                   * p(D).

The variational q shares p0, the dynamics and the death time with the model, so its ELBO is

    ELBO(q) = sum_t gamma^t E_{d_t}[ sum_a q_t(a|s) R(s,a) / alpha - KL(q_t(.|s) || pi0(.|s)) ],

the KL discounted like the reward. gamma = 1 is the undiscounted model (the episode never dies early).

Termination follows Gymnasium and the library's trajectory models: the episode is alive at step t if
none of s_1 .. s_t is terminal (s_0 always counts as alive, even when terminal, because Gymnasium
never checks the initial state) and it has not died; after termination nothing contributes (no
factor, no action, no further transition). In the backward recursions this means that the
continuation value of a terminal next state is 0.

Three functions compute it exactly:

* :func:`log_evidence`: log p(O) by backward messages (sum-product over actions, next states and the
  death time), B_T = 0 and

      B_t(s) = log sum_a pi0(a|s) exp(R(s,a)/alpha) [ (1 - gamma) + gamma sum_s' P(s'|s,a) exp(B_{t+1}(s')) ],
      log p(O) = log sum_s p0(s) exp(B_0(s));

* :func:`solve`: log p(O) and the best ELBO (the source's eq. (2)) over variational policies q that share p0,
  the dynamics and the death time with the model (the source's eq. (12)), by KL-regularized soft value
  iteration, V_T = 0 and

      Q_t(s,a) = R(s,a)/alpha + gamma sum_s' P(s'|s,a) V_{t+1}(s'),  V_t(s) = log sum_a pi0(a|s) exp(Q_t(s,a)),
      q*_t(a|s) = pi0(a|s) exp(Q_t(s,a) - V_t(s)),  max ELBO = sum_s p0(s) V_0(s),

  together with the optimal policy q*. With a uniform prior pi0 the ELBO is the maximum-entropy
  objective (the source's eq. (10)): discounted expected reward plus entropy, minus log A per step the episode
  is alive. As T - t grows, q*_t tends to the stationary soft-optimal policy of the discounted MDP;
* :func:`elbo_of`: the exact ELBO of any given tabular policy, by forward propagation of the
  alive state distribution.

log p(O) >= max ELBO (by Jensen's inequality, log E exp(B) >= E B), and the gap is the "optimism" of
the exact posterior, which tilts the initial state, the transitions and, for gamma < 1, the death time:
after a step at (s, a) it goes on with probability g E / ((1 - g) + g E), E = sum_s' P(s'|s,a)
exp(B_{t+1}(s')) and g = gamma, more than gamma where E > 1 and less where E < 1, while q goes on with
probability gamma. The gap is 0 when p0 and the dynamics are deterministic and gamma = 1; for
gamma < 1 it is positive even then, unless every message B_{t+1} the episode can reach is 0.

Everything runs in float64 on the MDP's device. Per step the work is one matrix product of the
``[S*A, S]`` transition table with two vectors; the evidence is kept in log space by shifting
the messages by their maximum, and the rare rows whose shifted sum underflows are recomputed exactly
with a logsumexp, so |R / alpha| of 1e4 nats per step and more stays finite and exact.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .envs.tabular import TabularMDP, probability_table

__all__ = ["ExactSolution", "elbo_of", "log_evidence", "solve"]

# A row sum of P(s'|s,a) exp(B(s') - max B) below this may have lost terms to underflow (terms below
# the smallest normal double, 2.2e-308); at or above it the lost terms are < S * 1e-28 relative.
_TINY = 1e-280
# If the messages span at most this many nats, every shifted row sum is >= exp(-600) > _TINY, so no
# row can underflow and the step needs no check (and, on CUDA, no host sync).
_SAFE_RANGE = 600.0
_RECOMPUTE_ELEMENTS = 1 << 22  # bound on the temporary of the exact recomputation (32 MiB)


@dataclass(frozen=True, eq=False)
class ExactSolution:
    """The exact solution of a finite-horizon tabular MDP as inference.

    The discount is a per-step continuation probability: after every step the episode ends, with
    probability 1 - gamma, in an absorbing state with zero reward, in the model and in q alike (see
    the module docstring). All tensors are float64 on the MDP's device. Entries for a terminal state
    at t >= 1 (a state in which the episode is never alive) follow the same formulas as any other
    state; only the continuation value of entering a terminal state is 0.

    Attributes:
        log_evidence: log p(O) = log sum_s p0(s) exp(B_0(s)).
        elbo: the best ELBO (the source's eq. (2)) over q that share p0, the dynamics and the death time
            (the source's eq. (12)): max_q ELBO(q) = sum_s p0(s) V_0(s); it is attained by ``policy``.
        policy: ``[T, S, A]`` the optimal q*_t(a|s) = pi0(a|s) exp(Q_t(s,a) - V_t(s)).
        q_values: ``[T, S, A]`` Q_t(s,a) = R(s,a)/alpha + gamma sum_s' P(s'|s,a) V_{t+1}(s') in nats
            (multiply by alpha for reward units; V_{t+1}(s') is 0 for terminal s'). For T - t large
            and gamma < 1, alpha Q_t is the soft-optimal action value of the discounted MDP, the fixed
            point of ``bellman.bellman_operator`` under q*_t.
        values: ``[T+1, S]`` V_t(s) = log sum_a pi0(a|s) exp(Q_t(s,a)), with V_T = 0.
        log_messages: ``[T+1, S]`` backward messages B_t(s) = log p(O_t, .., O_{T-1} | s_t = s, alive),
            B_T = 0 and B_t(s) = log sum_a pi0(a|s) exp(R(s,a)/alpha) [(1 - gamma) + gamma
            sum_s' P(s'|s,a) exp(B_{t+1}(s'))], with B_{t+1}(s') = 0 for terminal s'.
        horizon, alpha, gamma: the problem solved (gamma is the probability of going on after a step).
        prior: the prior policy pi0 that was used: ``[S, A]``, or ``[T, S, A]`` if time-dependent.
    """

    log_evidence: float
    elbo: float
    policy: torch.Tensor
    q_values: torch.Tensor
    values: torch.Tensor
    log_messages: torch.Tensor
    horizon: int
    alpha: float
    gamma: float
    prior: torch.Tensor

    @property
    def gap(self) -> float:
        """log p(O) - max ELBO >= 0: the optimism of the exact posterior.

        By Jensen's inequality the evidence's log((1 - gamma) + gamma E_s' exp(B_{t+1}(s'))) is at
        least the ELBO's gamma E_s' B_{t+1}(s'). The gap is 0 when p0 and the dynamics are
        deterministic and gamma = 1; for gamma < 1 it is positive even for deterministic problems
        (the posterior also tilts the death time), unless every message B_{t+1} the episode can
        reach is 0.
        """
        return self.log_evidence - self.elbo


# ---------------------------------------------------------------------- validation
def _check_mdp(mdp) -> TabularMDP:
    if not isinstance(mdp, TabularMDP):
        raise TypeError(
            f"mdp must be an envs.TabularMDP (exact inference needs the transition table), got {type(mdp).__name__}"
        )
    return mdp


def _check_horizon(horizon) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral):
        raise TypeError(f"horizon must be an int >= 1, got {horizon!r} of type {type(horizon).__name__}")
    if horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon}")
    return int(horizon)


def _as_float(name: str, value, allowed: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a number {allowed}, got {value!r} of type {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"{name} must be a number {allowed}, got {value!r} of type {type(value).__name__}"
        ) from exc


def _check_alpha_gamma(alpha, gamma) -> tuple[float, float]:
    a = _as_float("alpha", alpha, "> 0 (the temperature)")
    if not (math.isfinite(a) and a > 0):
        raise ValueError(f"alpha must be a finite number > 0 (the temperature), got {alpha!r}")
    if not math.isfinite(1.0 / a):
        raise ValueError(f"alpha = {alpha!r} is too small: 1/alpha overflows float64")
    g = _as_float("gamma", gamma, "in (0, 1]")
    if not 0.0 < g <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    return a, g


def _table(name: str, value, device: torch.device) -> torch.Tensor:
    """``value`` as a float64 tensor on ``device``, checked finite, non-negative, rows summing to 1."""
    try:
        t = probability_table(name, value, rows="each row over actions")
    except TypeError as exc:
        raise TypeError(
            f"{name} must be a numpy array or torch tensor of probabilities, got {type(value).__name__}"
        ) from exc
    return t.to(device)


def _prior(mdp: TabularMDP, prior, horizon: int | None = None) -> torch.Tensor:
    """pi0 as ``[S, A]``, or ``[T, S, A]`` (a time-dependent pi0_t) when ``horizon`` is given."""
    S, A = mdp.num_states, mdp.num_actions
    if prior is None:
        # the source's eq. (10): the uniform prior turns the KL into a negative entropy plus log A.
        pi0 = torch.full((S, A), 1.0 / A, dtype=torch.float64, device=mdp.device)
        return pi0 if horizon is None else pi0.expand(horizon, S, A)
    if not isinstance(prior, torch.Tensor):
        prior = np.asarray(prior, dtype=np.float64) if _is_numeric(prior) else prior
    shape = tuple(getattr(prior, "shape", ()))
    allowed = [(S, A)] + ([(horizon, S, A)] if horizon is not None else [])
    if hasattr(prior, "shape") and shape not in allowed:  # not an array at all: _table says so
        also = f" or [T, S, A] = [{horizon}, {S}, {A}]" if horizon is not None else ""
        raise ValueError(f"prior must have shape [S, A] = [{S}, {A}]{also}, got {shape}")
    pi0 = _table("prior", prior, mdp.device)
    return pi0.expand(horizon, S, A) if horizon is not None and pi0.dim() == 2 else pi0


def _is_numeric(value) -> bool:
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _policy(mdp: TabularMDP, policy, horizon: int) -> torch.Tensor:
    S, A = mdp.num_states, mdp.num_actions
    if not isinstance(policy, torch.Tensor) and _is_numeric(policy):
        policy = np.asarray(policy, dtype=np.float64)
    shape = tuple(getattr(policy, "shape", ()))
    if shape not in ((horizon, S, A), (S, A)):
        raise ValueError(
            f"policy must have shape [T, S, A] = [{horizon}, {S}, {A}] or [S, A] = [{S}, {A}], got {shape}"
        )
    q = _table("policy", policy, mdp.device)
    return q.expand(horizon, S, A) if q.dim() == 2 else q


# ---------------------------------------------------------------------- backward recursions
def _log_continue(x: float, gamma: float) -> float:
    """log((1 - gamma) + gamma exp(x)) for a float x (increasing in x), without overflow."""
    if gamma == 1.0 or x == math.inf:
        return x
    c, d = math.log1p(-gamma), math.log(gamma) + x
    if d == -math.inf:
        return c
    return max(c, d) + math.log1p(math.exp(-abs(c - d)))


def _steps_to_check(
    reward: torch.Tensor, terminal: torch.Tensor, alpha: float, gamma: float, horizon: int
) -> tuple[list[bool], bool]:
    """For each t, whether B_{t+1} may span more than _SAFE_RANGE nats (so row sums may underflow).

    With b = B_{t+1} (0 on terminal states), log((1 - gamma) + gamma sum_s' P(s'|s,a) exp(b(s'))) is
    f(x) = log((1 - gamma) + gamma exp(x)), increasing, at some x in [min b, max b]; B_t(s) is a
    pi0-weighted log-mean-exp of R/alpha plus that, so it lies in
    [min R/alpha + f(min b), max R/alpha + f(max b)]. (For gamma < 1, f(x) lies between min(0, x)
    and max(0, x), so the messages stay above min R/alpha + log(1 - gamma).) A terminal next state
    adds the value 0 to b. The bound, and whether there are terminal states at all (also returned),
    cost one host sync per call instead of one per step.
    """
    r_min, r_max, any_terminal = torch.stack(
        [*torch.aminmax(reward), terminal.any().to(reward.dtype)]
    ).tolist()
    has_terminal = any_terminal > 0
    w = 1.0 / alpha
    lo = hi = 0.0  # B_T = 0
    finite = True
    check = [False] * horizon
    for t in reversed(range(horizon)):
        if has_terminal:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        check[t] = hi - lo > _SAFE_RANGE
        lo, hi = w * r_min + _log_continue(lo, gamma), w * r_max + _log_continue(hi, gamma)
        finite = finite and math.isfinite(hi - lo)
    if not finite:
        raise ValueError(
            f"rewards of up to {max(abs(r_min), abs(r_max)):.3g} times 1/alpha = {w:.3g} over "
            f"{horizon} steps overflow float64; increase alpha"
        )
    return check, has_terminal


def _log_expectation_exact(P: torch.Tensor, rows: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log sum_s' P[row, s'] exp(b(s')) for the given rows, by a dense logsumexp in chunks."""
    S = P.shape[1]
    chunk = max(1, _RECOMPUTE_ELEMENTS // S)
    out = torch.empty(rows.shape[0], dtype=P.dtype, device=P.device)
    for i in range(0, rows.shape[0], chunk):
        r = rows[i : i + chunk]
        out[i : i + chunk] = torch.logsumexp(torch.log(P[r]) + b, dim=1)
    return out


def _backward(
    mdp: TabularMDP,
    horizon: int,
    alpha: float,
    gamma: float,
    log_prior: torch.Tensor,
    *,
    soft_values: bool,
) -> dict[str, torch.Tensor]:
    """Run the evidence recursion (always) and the soft value iteration (if ``soft_values``) backward.

    Both need sum_s' P(s'|s,a) f(s') of a vector f for every (s, a), so one matrix product with a
    ``[S, 2]`` right-hand side serves both; the transition table is read once per step, which is what
    bounds the speed (it is memory-bound). The death time adds one elementwise logaddexp per step to
    the evidence (none for gamma = 1) and a factor gamma to the soft values.
    """
    S, A, T = mdp.num_states, mdp.num_actions, horizon
    dev, f64 = mdp.device, torch.float64
    P = mdp.transition.reshape(S * A, S)  # a view: float64 rows P(. | s, a)
    R = mdp.reward.to(f64)
    terminal = mdp.terminal
    check, has_terminal = _steps_to_check(R, terminal, alpha, gamma, T)
    wR = (1.0 / alpha) * R
    discounted = gamma < 1.0
    if discounted:
        log_gamma = math.log(gamma)
        log_death = torch.full((), math.log1p(-gamma), dtype=f64, device=dev)  # log(1 - gamma)

    log_messages = torch.zeros(T + 1, S, dtype=f64, device=dev)
    out = {"log_messages": log_messages}
    # Rows of X are the vectors to take expectations of. X.t() is a column-major [S, 2] operand: with
    # it MKL's product with the row-major [S*A, S] table runs at memory bandwidth (3.7 ms for
    # S=1000, A=10 on 2 cores), faster than a row-major [S, 2] (6.6 ms) and even than a single
    # matrix-vector product (4.5 ms), so the evidence alone still uses two columns (the second 0).
    X = torch.zeros(2, S, dtype=f64, device=dev)
    if soft_values:
        values = torch.zeros(T + 1, S, dtype=f64, device=dev)
        q_values = torch.empty(T, S, A, dtype=f64, device=dev)
        policy = torch.empty(T, S, A, dtype=f64, device=dev)
        out.update(values=values, q_values=q_values, policy=policy)

    for t in reversed(range(T)):
        b_next = log_messages[t + 1]
        if has_terminal:
            # Entering a terminal state ends the episode: the rest contributes log 1 = 0.
            b_next = b_next.masked_fill(terminal, 0.0)
        shift = b_next.max()
        torch.exp(b_next - shift, out=X[0])
        if soft_values:
            X[1] = values[t + 1].masked_fill(terminal, 0.0) if has_terminal else values[t + 1]
        Y = P @ X.t()  # [S*A, 2]
        row_sum = Y[:, 0]
        log_cont = torch.log(row_sum) + shift  # log sum_s' P(s'|s,a) exp(B_{t+1}(s'))
        if check[t]:
            lost = torch.nonzero(row_sum < _TINY).squeeze(1)
            if lost.numel():
                log_cont[lost] = _log_expectation_exact(P, lost, b_next)
        if discounted:
            # Die (log 1 = 0 from here on) with probability 1 - gamma, else go on.
            log_cont = torch.logaddexp(log_cont + log_gamma, log_death)
        log_pi = log_prior[t]  # pi0_t: [T, S, A], time-dependent or expanded
        log_messages[t] = torch.logsumexp(log_pi + wR + log_cont.reshape(S, A), dim=-1)
        if soft_values:
            cont = Y[:, 1].reshape(S, A)
            Q = wR + (gamma * cont if discounted else cont)
            q_values[t] = Q
            V = torch.logsumexp(log_pi + Q, dim=-1)
            values[t] = V
            torch.exp(log_pi + Q - V[:, None], out=policy[t])
    return out


def log_evidence(mdp: TabularMDP, *, horizon: int, alpha: float, gamma: float = 1.0, prior=None) -> float:
    """log p(O), the exact log evidence of the trajectory model.

    After every step the episode goes on with probability gamma and otherwise ends in an absorbing
    state with zero reward (log 1 = 0 from there on). Backward messages: B_T = 0 and

        B_t(s) = log sum_a pi0(a|s) exp(R(s,a)/alpha) [ (1 - gamma) + gamma sum_s' P(s'|s,a) exp(B_{t+1}(s')) ],

    with B_{t+1}(s') = 0 for a terminal s'; then log p(O) = log sum_s p0(s) exp(B_0(s)). This is what
    Pyro's TraceEnum_ELBO computes on the enumerated model with the death as one more absorbing
    state, and it upper-bounds every ELBO (the source's eq. (2)). gamma = 1 is the undiscounted evidence.

    Args:
        mdp: the finite MDP (transition, reward, initial distribution, terminal states).
        horizon: T >= 1, the number of action steps.
        alpha: the temperature > 0; each step's factor is exp(R(s,a)/alpha).
        gamma: the discount in (0, 1]: the probability of going on after each step.
        prior: pi0 as an ``[S, A]`` table of probabilities, a ``[T, S, A]`` one (pi0_t, time-dependent),
            or None for the uniform prior (eq. (10)).
    """
    _check_mdp(mdp)
    T = _check_horizon(horizon)
    a, g = _check_alpha_gamma(alpha, gamma)
    log_prior = torch.log(_prior(mdp, prior, T))
    msgs = _backward(mdp, T, a, g, log_prior, soft_values=False)["log_messages"]
    return float(torch.logsumexp(torch.log(mdp.initial) + msgs[0], dim=0))


def solve(mdp: TabularMDP, *, horizon: int, alpha: float, gamma: float = 1.0, prior=None) -> ExactSolution:
    """Solve a finite MDP as inference: log p(O), the best ELBO, and the optimal variational policy.

    The evidence is computed as in :func:`log_evidence`. The best ELBO (the source's eq. (2)) over policies
    q_t(a|s) whose trajectories share p0, the dynamics and the death time (probability 1 - gamma
    after each step) with the model (the source's eq. (12)) is KL-regularized soft value iteration
    (the soft Bellman recursion in nats):

        V_T = 0,  Q_t(s,a) = R(s,a)/alpha + gamma sum_s' P(s'|s,a) V_{t+1}(s')   (V_{t+1}(s') = 0 if s' is terminal),
        V_t(s) = log sum_a pi0(a|s) exp(Q_t(s,a)),  q*_t(a|s) = pi0(a|s) exp(Q_t(s,a) - V_t(s)),
        max ELBO = sum_s p0(s) V_0(s).

    With the uniform prior (None) this is the maximum-entropy objective of the source's eq. (10).
    Actions with pi0(a|s) = 0 get q*_t(a|s) = 0. For gamma < 1, q*_t tends, as T - t grows, to the
    stationary soft-optimal policy, the one whose value is the fixed point of
    V = log sum_a pi0 exp(R/alpha + gamma P V). log p(O) >= max ELBO; the gap is 0 for deterministic
    p0 and dynamics only when gamma = 1 (see :attr:`ExactSolution.gap`).

    Args:
        mdp: the finite MDP (transition, reward, initial distribution, terminal states).
        horizon: T >= 1, the number of action steps.
        alpha: the temperature > 0; rewards enter as R(s,a)/alpha.
        gamma: the discount in (0, 1]: the probability of going on after each step.
        prior: pi0 as an ``[S, A]`` numpy array or tensor (rows sum to 1, zeros allowed), a
            ``[T, S, A]`` one for a time-dependent pi0_t (a ``TabularGuide``'s policy), or None for
            the uniform prior 1/A.

    Returns:
        An :class:`ExactSolution`.
    """
    _check_mdp(mdp)
    T = _check_horizon(horizon)
    a, g = _check_alpha_gamma(alpha, gamma)
    pi0 = _prior(mdp, prior, T)
    log_prior = torch.log(pi0)
    out = _backward(mdp, T, a, g, log_prior, soft_values=True)
    p0 = mdp.initial
    evidence = torch.logsumexp(torch.log(p0) + out["log_messages"][0], dim=0)
    best = (p0 * out["values"][0]).sum()
    ev, el = torch.stack([evidence, best]).tolist()  # the one host sync of the results
    return ExactSolution(
        log_evidence=ev,
        elbo=el,
        policy=out["policy"],
        q_values=out["q_values"],
        values=out["values"],
        log_messages=out["log_messages"],
        horizon=T,
        alpha=a,
        gamma=g,
        prior=pi0 if len(getattr(prior, "shape", ())) == 3 else pi0[0],  # the shape it was given in
    )


# ---------------------------------------------------------------------- ELBO of a given policy
def elbo_of(mdp: TabularMDP, policy, *, horizon: int, alpha: float, gamma: float = 1.0, prior=None) -> float:
    """The exact ELBO (the source's eq. (2)) of a tabular variational policy that shares p0 and the dynamics.

    q also shares the death time with the model (after each step the episode goes on with
    probability gamma), so the step t counts with probability gamma^t, reward and KL alike:

        ELBO(q) = sum_t gamma^t E_{d_t}[ sum_a q_t(a|s) R(s,a)/alpha - KL(q_t(.|s) || pi0(.|s)) ]

    (the dynamics and the death time cancel between model and guide, seed
    eq. (12)). d_t is the alive state distribution under q, propagated forward: d_0 = p0,
    d_{t+1}(s') = sum_{s,a} d_t(s) q_t(a|s) P(s'|s,a), with the mass that enters a terminal state
    removed; gamma^t d_t is carried as one vector. ``elbo_of(mdp, solve(mdp, ...).policy, ...)``
    equals ``solve(mdp, ...).elbo``.

    Args:
        mdp: the finite MDP.
        policy: q as ``[T, S, A]`` (one table per step) or ``[S, A]`` (the same at every step);
            non-negative rows summing to 1.
        horizon, alpha, gamma, prior: as in :func:`solve`.

    Returns:
        The ELBO in nats; -inf if q puts mass on an action with pi0(a|s) = 0 at a state that is
        reached (alive) with positive probability.
    """
    _check_mdp(mdp)
    T = _check_horizon(horizon)
    a, g = _check_alpha_gamma(alpha, gamma)
    pi0 = _prior(mdp, prior, T)
    q = _policy(mdp, policy, T)
    S, A = mdp.num_states, mdp.num_actions
    P = mdp.transition.reshape(S * A, S)
    R = mdp.reward.to(torch.float64)
    terminal = mdp.terminal
    w = 1.0 / a

    alive = mdp.initial.clone()  # gamma^t d_t: the probability of being alive in s at step t
    total = torch.zeros((), dtype=torch.float64, device=mdp.device)
    for t in range(T):
        qt = q[t]
        # xlogy makes 0 log 0 = 0 and gives KL = +inf where q > 0 = pi0.
        kl = (torch.xlogy(qt, qt) - torch.xlogy(qt, pi0[t])).sum(-1)
        per_state = w * (qt * R).sum(-1) - kl
        # States never reached contribute nothing, even where their KL is infinite (avoid 0 * inf).
        total = total + torch.where(alive > 0, alive * per_state, 0.0).sum()
        if t + 1 < T:
            alive = (alive[:, None] * qt).reshape(S * A) @ P
            if g < 1.0:
                alive = g * alive
            # Without terminal states this fills nothing; unconditional, it needs no host sync.
            alive = alive.masked_fill(terminal, 0.0)
    return float(total)
