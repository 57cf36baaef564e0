"""Critics: action-value networks Q(s, a) with target copies, and their regression onto T^{pi,q}.

The target of Q(s, a) is Q^q's Bellman operator in reward units,

    (T^{pi,q} Q)(s, a) = r(s, a) + gamma E_{s'} E_{a'~q}[ Q(s', a') - alpha (log q(a'|s') - log pi(a'|s')) ],

one step of it (:func:`soft_q_loss` on a one-step batch) or n steps along a replayed path
(:func:`n_step_soft_target`, optionally with Retrace traces for the actions of older policies). The
prior pi is a callable log density of (obs, action) (:data:`LogPrior`): a uniform prior is a
constant, a reference policy pi_k (the KL objective of the source's eq. 2) is :func:`policy_log_prior`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import gymnasium as gym
import torch
from torch import nn

from rl_as_inference import bellman
from rl_as_inference.envs.base import clamp_into
from rl_as_inference.guides.policies import ObservationEncoder, mlp

__all__ = [
    "N_STEP_CORRECTIONS",
    "ActionTables",
    "LogPrior",
    "QNetwork",
    "StateValue",
    "TwinQ",
    "as_log_prior",
    "check_n_step_correction",
    "constant_log_prior",
    "n_step_discrete_soft_target",
    "n_step_soft_target",
    "policy_log_prior",
    "polyak_update",
    "soft_q_loss",
]

# log pi(a|s) of a prior: (obs [B, ...], action [B, ...]) -> [B]; (obs, None) -> [B, n] over every
# action of a Discrete space. A float (a constant density) broadcasts as well.
LogPrior = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor | float]

# How an n-step critic target treats replayed actions (see n_step_soft_target)
N_STEP_CORRECTIONS = ("none", "retrace")


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging of a target network: target <- (1 - tau) target + tau online.

    One multi-tensor ``lerp`` over all parameters (the kernel torch's optimizers use): the same
    arithmetic as a per-parameter loop, without a Python call per tensor on every learner step.
    """
    targets, onlines = list(target.parameters()), list(online.parameters())
    if len(targets) != len(onlines):
        raise ValueError(f"target has {len(targets)} parameters, online {len(onlines)}")
    torch._foreach_lerp_(targets, onlines, tau)


class QNetwork(nn.Module):
    """Q(s, a): for a Box action space an MLP over [features(obs), a] -> [B]; for Discrete(n) an MLP
    over features(obs) -> [B, n] (all actions at once, so expectations over q are exact).
    ``rescale_obs=True`` maps bounded observation coordinates onto [-1, 1] (:class:`ObservationEncoder`).
    ``outputs=N`` gives N values per action instead of one, ``[B, N]`` or ``[B, n, N]`` (the atom
    logits of :class:`rl_as_inference.distributional.CategoricalQ`).

    ``clip_actions=True`` (Box) evaluates Q at clip(a, low, high), the action the collector hands
    the env, so that Q(s, a) = Q(s, clip(a)) holds by construction for a policy whose samples
    leave the box (MPO's unsquashed Gaussian). Without it the network learns from the raw
    out-of-box actions in the replay and is asked, in MPO's E-step, for values at samples beyond
    them, where it can only extrapolate."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (256, 256),
        rescale_obs: bool = False,
        outputs: int | None = None,
        clip_actions: bool = False,
    ):
        super().__init__()
        self.encoder = ObservationEncoder(observation_space, rescale=rescale_obs)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.outputs = outputs
        self.clip_actions = bool(clip_actions) and not self.discrete
        if self.clip_actions:
            # not persistent: the box is the env's, not a learned quantity, and checkpoints written
            # without it load unchanged
            low = torch.as_tensor(action_space.low, dtype=torch.float32)
            high = torch.as_tensor(action_space.high, dtype=torch.float32)
            self.register_buffer("action_low", low, persistent=False)
            self.register_buffer("action_high", high, persistent=False)
        per_action = 1 if outputs is None else outputs
        if self.discrete:
            self.num_actions = int(action_space.n)
            self.net = mlp([self.encoder.dim, *hidden, self.num_actions * per_action], nn.ReLU)
        else:
            self.net = mlp([self.encoder.dim + int(action_space.shape[0]), *hidden, per_action], nn.ReLU)

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        x = self.encoder(obs, self.net[0].weight.dtype)
        if self.discrete:
            out = self.net(x)
            return out if self.outputs is None else out.unflatten(-1, (self.num_actions, self.outputs))
        action = action.to(x.dtype)
        if self.clip_actions:
            action = clamp_into(action, self.action_low, self.action_high)
        out = self.net(torch.cat((x, action), dim=-1))
        return out.squeeze(-1) if self.outputs is None else out


class StateValue(nn.Module):
    """V(s): an MLP over the (encoded) observation; ``forward(obs)`` returns ``[*B]`` values."""

    def __init__(
        self,
        observation_space: gym.Space,
        hidden: tuple[int, ...],
        activation: type[nn.Module],
        rescale_obs: bool = False,
    ):
        super().__init__()
        self.encoder = ObservationEncoder(observation_space, rescale=rescale_obs)
        self.net = mlp([self.encoder.dim, *hidden, 1], activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Values of a batch of observations ``[*B, ...]`` -> ``[*B]``."""
        return self.net(self.encoder(obs, self.net[0].weight.dtype)).squeeze(-1)


class TwinQ(nn.Module):
    """Two Q networks and their slowly tracking targets: clipped double-Q (min of the two) curbs the
    overestimation that a max or an expectation over a learned Q otherwise accumulates.

    ``twin=False`` keeps one network (``q2`` is None, ``min`` and ``target_min`` are that network's
    values): the critic of the MPO paper and of Acme's MPO, whose backup is an expectation under pi_k
    rather than a maximum, at half the cost of every critic evaluation. ``clip_actions``: see
    :class:`QNetwork`.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (256, 256),
        rescale_obs: bool = False,
        twin: bool = True,
        clip_actions: bool = False,
    ):
        super().__init__()
        net = {"hidden": hidden, "rescale_obs": rescale_obs, "clip_actions": clip_actions}
        self.q1 = QNetwork(observation_space, action_space, **net)
        self.q2 = QNetwork(observation_space, action_space, **net) if twin else None
        self.target = copy.deepcopy(nn.ModuleList(self._online())).requires_grad_(False)

    def _online(self) -> list[QNetwork]:
        return [self.q1] if self.q2 is None else [self.q1, self.q2]

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The value of every online network: (Q1, Q2), or (Q1,) with ``twin=False``."""
        return tuple(q(obs, action) for q in self._online())

    def online_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should train (the targets only track them)."""
        return [p for q in self._online() for p in q.parameters()]

    def min(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """min(Q1, Q2) of the online networks (Q1 alone with ``twin=False``)."""
        if self.q2 is None:
            return self.q1(obs, action)
        return torch.minimum(*self(obs, action))

    def target_min(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """min(Q1', Q2') of the target networks (Q1' alone with ``twin=False``)."""
        if self.q2 is None:
            return self.target[0](obs, action)
        return torch.minimum(self.target[0](obs, action), self.target[1](obs, action))

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """Polyak averaging: target <- (1 - tau) target + tau online."""
        for target, online in zip(self.target, self._online(), strict=True):
            polyak_update(target, online, tau)


def constant_log_prior(value: float) -> LogPrior:
    """log pi(a|s) = ``value`` for every state and action: a uniform prior (-log vol of an action
    box, -log n of n actions; 0 where no KL term is wanted, as MPO's alpha = 0 backup)."""

    def log_pi(obs: torch.Tensor, action: torch.Tensor | None = None) -> float:
        return value

    return log_pi


def policy_log_prior(policy: nn.Module) -> LogPrior:
    """log pi(a|s) of a policy network (a frozen pi_k, say): ``policy(obs).log_prob(action)``; with
    ``action=None`` (Discrete spaces) the log-probabilities of every action, ``[B, n]``."""

    def log_pi(obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        d = policy(obs)
        return d.logits if action is None else d.log_prob(action)

    return log_pi


def as_log_prior(log_pi: float | LogPrior) -> LogPrior:
    """A :data:`LogPrior` from a callable or a constant log density (:func:`constant_log_prior`)."""
    return log_pi if callable(log_pi) else constant_log_prior(float(log_pi))


def check_n_step_correction(correction: str, trace_lambda: float) -> None:
    """Raise a one-line ValueError unless ``correction`` and ``trace_lambda`` are allowed."""
    if correction not in N_STEP_CORRECTIONS:
        raise ValueError(
            f"n_step_correction={correction!r} is not allowed; use one of {', '.join(map(repr, N_STEP_CORRECTIONS))}"
        )
    if isinstance(trace_lambda, bool) or not 0.0 <= trace_lambda <= 1.0:
        raise ValueError(f"trace_lambda={trace_lambda!r} is not allowed; use a number in [0, 1]")


def _is_zero(alpha: float | torch.Tensor) -> bool:
    return not isinstance(alpha, torch.Tensor) and alpha == 0.0


def _flat(fn: Callable, *args: torch.Tensor) -> torch.Tensor:
    """``fn`` on ``[n, B, ...]`` inputs flattened to ``[n * B, ...]``, its ``[n * B]`` output back to ``[n, B]``."""
    n, b = args[0].shape[:2]
    return fn(*(a.flatten(0, 1) for a in args)).reshape(n, b)


def _check_retrace_path(path: dict) -> None:
    if "behaviour_log_prob" not in path:
        raise ValueError(
            "n_step_correction='retrace' needs the behaviour's log-probabilities: collect with "
            "behaviour_log_prob=True"
        )


def _path_target(
    path: dict,
    *,
    gamma: float,
    next_values: torch.Tensor,
    penalties: torch.Tensor | None = None,
    action_values: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    correction: str,
    trace_lambda: float,
) -> torch.Tensor:
    """The ``[B]`` targets of :func:`n_step_soft_target` from its per-step pieces.

    ``next_values``: V(s'_k), ``[n, B]`` (``[B]``, the value after the path's last step, will do
    for ``correction="none"``). The later steps k = 1..n-1, ``[n - 1, B]`` each (None: n = 1):
    ``penalties`` alpha (log q - log pi)(a_k|s_k) (``"none"``; None also when alpha = 0),
    ``action_values`` Q'(s_k, a_k) and ``log_q`` log q(a_k|s_k) (``"retrace"``).
    """
    rewards, terminated, truncated = path["reward"], path["terminated"], path["truncated"]
    zeros = torch.zeros_like(rewards[:1])
    if correction == "none":
        every = (
            torch.zeros_like(rewards)
            if penalties is None
            else torch.cat((zeros, penalties.to(rewards.dtype)))
        )
        return bellman.n_step_target(
            rewards, terminated, every, next_values.to(rewards.dtype), gamma, truncated=truncated
        )
    q_taken, traces = torch.zeros_like(rewards), torch.zeros_like(rewards)
    if action_values is not None:
        q_taken = torch.cat((zeros, action_values.to(rewards.dtype)))
        log_rho = (log_q.to(rewards.dtype) - path["behaviour_log_prob"][1:]).clamp(max=0.0)
        traces = torch.cat((zeros, trace_lambda * log_rho.exp()))
    return bellman.retrace_target(
        rewards, terminated, q_taken, next_values.to(rewards.dtype), traces, gamma, truncated=truncated
    )


def n_step_soft_target(
    batch: dict,
    *,
    gamma: float,
    alpha: float | torch.Tensor,
    policy: Callable[[torch.Tensor], torch.distributions.Distribution],
    log_pi: LogPrior,
    soft_value: Callable[[torch.Tensor], torch.Tensor],
    action_value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    correction: str = "none",
    trace_lambda: float = 1.0,
) -> torch.Tensor:
    """The T^{pi,q} target of Q(s_0, a_0) from a replayed n-step path (:meth:`ReplayBuffer.sample_n_step`).

    ``correction="none"``: :func:`bellman.n_step_target`,
    y = sum_{k<m} gamma^k (r_k - [k > 0] alpha (log q(a_k|s_k) - log pi(a_k|s_k))) + gamma^m V(s_m),
    with the KL terms of the stored actions under the current q. Its fixed point is Q^q when the
    stored actions were drawn from q; replayed ones come from older policies, and then it is the
    value of a mixture of theirs and q (the usual n-step bias, in exchange for rewards that reach
    back n steps per update).
    ``correction="retrace"``: :func:`bellman.retrace_target` with traces
    c_k = trace_lambda min(1, q(a_k|s_k) / mu(a_k|s_k)), mu the behaviour density stored at
    collection (path field ``behaviour_log_prob``); its fixed point is Q^q whatever mu was.
    Run it under ``torch.no_grad()``. Over a Discrete action set
    :func:`n_step_discrete_soft_target` computes the same target with each network run once per
    path state.

    Args:
        batch: a sampled n-step batch (fields ``path`` and ``last``).
        gamma, alpha: discount and temperature (alpha = 0: no KL terms, a plain expected backup).
        policy: q(.|s), the policy whose value is learned, on a batch of observations.
        log_pi: the prior's log density (:data:`LogPrior`).
        soft_value: V(s) = E_{a~q}[Q'(s, a) - alpha (log q(a|s) - log pi(a|s))] of a batch of
            observations (``[B, ...]`` -> ``[B]``), from the target critic.
        action_value: Q'(s, a) of observations and actions (``correction="retrace"`` only).
        correction: ``"none"`` or ``"retrace"``; trace_lambda: lambda of the traces.

    Returns:
        ``[B]`` targets.
    """
    check_n_step_correction(correction, trace_lambda)
    path = batch["path"]
    obs, action = path["obs"][1:], path["action"][1:]  # the steps whose terms enter the target
    if correction == "none":
        rows = torch.arange(path["reward"].shape[1], device=path["reward"].device)
        penalties = None
        if len(obs) and not _is_zero(alpha):
            penalties = alpha * _flat(lambda o, a: policy(o).log_prob(a) - log_pi(o, a), obs, action)
        return _path_target(
            path,
            gamma=gamma,
            next_values=soft_value(path["next_obs"][batch["last"], rows]),
            penalties=penalties,
            correction=correction,
            trace_lambda=trace_lambda,
        )
    _check_retrace_path(path)
    if action_value is None:
        raise ValueError("n_step_correction='retrace' needs the action value Q'(s, a) (action_value)")
    action_values = log_q = None
    if len(obs):
        action_values = _flat(action_value, obs, action)
        log_q = _flat(lambda o, a: policy(o).log_prob(a), obs, action)
    return _path_target(
        path,
        gamma=gamma,
        next_values=_flat(soft_value, path["next_obs"]),
        action_values=action_values,
        log_q=log_q,
        correction=correction,
        trace_lambda=trace_lambda,
    )


# Q'(s, .) of the target critic and log q(.|s) of the policy whose value is learned, over every
# action of a Discrete space, for a batch of observations: [R, ...] -> ([R, A], [R, A])
ActionTables = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def n_step_discrete_soft_target(
    batch: dict,
    *,
    gamma: float,
    alpha: float | torch.Tensor,
    tables: ActionTables,
    log_pi: LogPrior,
    correction: str = "none",
    trace_lambda: float = 1.0,
) -> torch.Tensor:
    """:func:`n_step_soft_target` over a Discrete action set, each network run once per path state.

    Over finite actions, Q'(s, .) and log q(.|s) give everything the target needs at a state:
    V(s) = sum_a q(a|s) (Q'(s, a) - alpha (log q(a|s) - log pi(a|s))) exactly, and Q'(s_k, a_k) and
    log q(a_k|s_k) of the later steps by indexing. The states are evaluated once, as the path's
    next states s'_0..s'_{n-1}: within the path's episode s'_{k-1} = s_k, so the first n - 1 of
    them serve as the later steps' states (a :class:`~rl_as_inference.replay.ReplayBuffer` path
    is consecutive transitions of one env, and the steps after its episode's end, where s'_{k-1}
    need not be s_k, are never used). That is n B states per network instead of up to (2n - 1) B,
    in three passes, with the callables of :func:`n_step_soft_target`. Run it under
    ``torch.no_grad()``.

    Args:
        batch: a sampled n-step batch (fields ``path`` and ``last``).
        gamma, alpha: discount and temperature (alpha = 0: no KL terms).
        tables: :data:`ActionTables`, observations ``[R, ...]`` -> (Q'(s, .), log q(.|s)), ``[R, A]`` each.
        log_pi: the prior's log density (:data:`LogPrior`; ``(obs, None)`` gives every action's, or
            a constant).
        correction: ``"none"`` or ``"retrace"``; trace_lambda: lambda of the traces.

    Returns:
        ``[B]`` targets.
    """
    check_n_step_correction(correction, trace_lambda)
    path = batch["path"]
    if correction == "retrace":
        _check_retrace_path(path)
    n, b = path["reward"].shape

    def at(states: torch.Tensor):
        # the tables, the prior's and V at a batch of states
        q_values, log_q = tables(states)
        q_values = q_values.to(log_q.dtype)
        log_prior = _prior_table(log_pi(states, None), log_q)
        return q_values, log_q, log_prior, _soft_value_of_log_probs(q_values, log_q, log_prior, alpha)

    if correction == "none" and (n == 1 or _is_zero(alpha)):
        # no KL terms along the path: only the value after its last step enters
        rows = torch.arange(b, device=path["reward"].device)
        value = at(path["next_obs"][batch["last"], rows])[-1]
        return _path_target(
            path, gamma=gamma, next_values=value, correction=correction, trace_lambda=trace_lambda
        )
    q_values, log_q, log_prior, values = at(path["next_obs"].flatten(0, 1))
    next_values = values.reshape(n, b)
    pieces: dict[str, torch.Tensor] = {}
    if n > 1:
        index = path["action"][1:].long().reshape(-1, 1)
        within = slice(0, (n - 1) * b)  # s'_0..s'_{n-2}: the states s_1..s_{n-1} within the episode

        def taken(table: torch.Tensor) -> torch.Tensor:
            return table[within].gather(-1, index).reshape(n - 1, b)

        if correction == "retrace":
            pieces = {"action_values": taken(q_values), "log_q": taken(log_q)}
        elif not _is_zero(alpha):
            prior_taken = taken(log_prior) if isinstance(log_prior, torch.Tensor) else log_prior
            pieces = {"penalties": alpha * (taken(log_q) - prior_taken)}
    return _path_target(
        path, gamma=gamma, next_values=next_values, correction=correction, trace_lambda=trace_lambda, **pieces
    )


def _prior_table(value: torch.Tensor | float, log_q: torch.Tensor) -> torch.Tensor | float:
    """log pi(.|s) as a table like ``log_q``; a constant stays a Python number (no host-to-device
    copy on every learner step)."""
    if isinstance(value, torch.Tensor):
        return value.to(log_q.dtype).expand_as(log_q)
    return float(value)


def _soft_value_of_log_probs(
    q_values: torch.Tensor, log_q: torch.Tensor, log_pi: torch.Tensor | float, alpha: float | torch.Tensor
) -> torch.Tensor:
    """E_{a~q}[Q(s, a) - alpha (log q - log pi)] over the last axis, from log q (0 log 0 = 0)."""
    terms = log_q.exp() * (q_values - alpha * (log_q - log_pi))
    return torch.where(torch.isneginf(log_q), torch.zeros_like(terms), terms).sum(-1)


def soft_q_loss(
    critic: TwinQ,
    policy: nn.Module,
    batch: dict,
    *,
    alpha: float | torch.Tensor,
    log_pi: float | LogPrior,
    gamma: float,
    correction: str = "none",
    trace_lambda: float = 1.0,
) -> torch.Tensor:
    """Squared error of each online Q network (both of a twin critic) against the sampled T^{pi,q} target.

    y = r + gamma (1 - terminated) V'(s'), V'(s') = E_{a'~q}[min Q'(s', a') - alpha (log q(a'|s') - log pi(a'|s'))]
    with the target networks' clipped double-Q: one sample of a' for continuous actions, the exact
    sum over actions for discrete ones. ``log_pi`` is the prior's log density, a :data:`LogPrior`
    callable of (obs, action) (:func:`policy_log_prior` for a reference policy pi_k) or a
    constant (a uniform prior). An n-step batch (a ``path`` field, see
    :meth:`ReplayBuffer.sample_n_step`) gets the target of :func:`n_step_soft_target` instead, of
    :func:`n_step_discrete_soft_target` for a Discrete critic (``correction``: ``"none"`` or
    ``"retrace"``, with ``trace_lambda``).
    """
    log_prior = as_log_prior(log_pi)

    def soft_value(obs: torch.Tensor) -> torch.Tensor:
        d = policy(obs)
        if critic.q1.discrete:
            probs = d.probs
            q_next = critic.target_min(obs).to(probs.dtype)
            return bellman.soft_value_of_distribution(q_next, probs, log_prior(obs, None), alpha)
        a = d.sample()
        return bellman.soft_value_of_sample(
            critic.target_min(obs, a), d.log_prob(a), log_prior(obs, a), alpha
        )

    def action_value(obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if critic.q1.discrete:
            return critic.target_min(obs).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        return critic.target_min(obs, action)

    with torch.no_grad():
        if "path" in batch and critic.q1.discrete:
            target = n_step_discrete_soft_target(
                batch,
                gamma=gamma,
                alpha=alpha,
                tables=lambda obs: (critic.target_min(obs), policy(obs).logits),
                log_pi=log_prior,
                correction=correction,
                trace_lambda=trace_lambda,
            )
        elif "path" in batch:
            target = n_step_soft_target(
                batch,
                gamma=gamma,
                alpha=alpha,
                policy=policy,
                log_pi=log_prior,
                soft_value=soft_value,
                action_value=action_value,
                correction=correction,
                trace_lambda=trace_lambda,
            )
        else:
            target = bellman.bellman_target(
                batch["reward"], batch["terminated"], soft_value(batch["next_obs"]), gamma
            )
    values = critic(batch["obs"], batch["action"])
    if critic.q1.discrete:
        index = batch["action"].long().unsqueeze(-1)
        values = [q.gather(-1, index).squeeze(-1) for q in values]
    return sum((q - target).square().mean() for q in values)
