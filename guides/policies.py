"""Policy families: small torch modules mapping observations to action distributions q(a|s)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import gymnasium as gym
import numpy as np
import pyro.distributions as dist
import torch
from torch import nn

from .squashed import SquashedNormal

__all__ = [
    "ACTIVATIONS",
    "CategoricalMLP",
    "GaussianMLP",
    "ObservationEncoder",
    "Policy",
    "SoftQPolicy",
    "SquashedNormal",
    "TanhGaussianMLP",
    "is_bounded_box",
    "activation_class",
    "mlp",
    "squashed_gaussian",
    "validate_on",
]

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

# The activations a config or a run checkpoint may name, by torch.nn class name. A closed list
# rather than getattr(torch.nn, name): a name read from a file must not reach an arbitrary
# attribute of torch.nn (a container, a loss, a module-level function).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        nn.CELU,
        nn.ELU,
        nn.GELU,
        nn.Hardswish,
        nn.Hardtanh,
        nn.LeakyReLU,
        nn.Mish,
        nn.ReLU,
        nn.ReLU6,
        nn.SELU,
        nn.SiLU,
        nn.Sigmoid,
        nn.Softplus,
        nn.Softsign,
        nn.Tanh,
    )
}


def activation_class(name: str) -> type[nn.Module]:
    """The torch.nn activation called ``name`` (e.g. ``"Tanh"``), or a ValueError listing the allowed names."""
    cls = ACTIVATIONS.get(name) if isinstance(name, str) else None
    if cls is None:
        close = [n for n in ACTIVATIONS if isinstance(name, str) and n.lower() == name.lower()]
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"activation={name!r} is not allowed; {hint}use one of {', '.join(ACTIVATIONS)} (torch.nn names)"
        )
    return cls


def validate_on(t: torch.Tensor) -> bool | None:
    """``validate_args`` for a distribution whose parameters live where ``t`` does.

    On the CPU: None (torch's and Pyro's default, checks on: a NaN parameter or an out-of-support
    value raises where it arises). On an accelerator: False, because each check reads a boolean back
    to the host, a device synchronization per distribution built in the rollout and learner loops;
    the functional envs skip their host checks there for the same reason.
    """
    return None if t.device.type == "cpu" else False


def squashed_gaussian(
    loc: torch.Tensor,
    scale: torch.Tensor,
    mid: torch.Tensor,
    half: torch.Tensor,
    box: Hashable | None = None,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
) -> SquashedNormal:
    """mid + half * tanh(u), u ~ Normal(loc, scale): a distribution on the box [low, high] (by
    default [mid - half, mid + half]; ``box``: its host-side key, see :class:`SquashedNormal`)."""
    return SquashedNormal(loc, scale, mid, half, validate_args=validate_on(loc), box=box, low=low, high=high)


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class ObservationEncoder(nn.Module):
    """Turns Gymnasium observations into float features: Box -> as is, Discrete(n) -> one-hot.

    With ``rescale=True`` every Box coordinate with finite bounds is mapped affinely onto [-1, 1]
    (unbounded ones pass unchanged). Networks then see coordinates of comparable size: MountainCar's
    velocity lives in +-0.07 beside a position in [-1.2, 0.6], and unscaled it barely moves a
    tanh layer. The map comes from the space, so it is the same at training and at evaluation
    and is not saved with the weights.

    A running normalizer (:class:`~guides.normalization.RunningObsNormalizer`, attached with
    :func:`~guides.normalization.attach_obs_normalizer`) instead standardizes each coordinate by the
    mean and variance of the observations collected so far; its statistics are saved with the
    weights. It replaces ``rescale``, which a run cannot combine with it.
    """

    def __init__(self, space: gym.Space, rescale: bool = False):
        super().__init__()
        self.rescale = bool(rescale)
        self.normalizer: nn.Module | None = None
        self.start = 0
        if isinstance(space, gym.spaces.Discrete):
            # Discrete(n, start) observations are start..start+n-1: one-hot of obs - start
            self.num_classes, self.dim, self.start = int(space.n), int(space.n), int(space.start)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            self.num_classes, self.dim = None, int(space.shape[0])
            if self.rescale:
                low, high = space.low.astype(np.float64), space.high.astype(np.float64)
                finite = np.isfinite(low) & np.isfinite(high)
                # inf - inf would warn (and give NaN) where a coordinate is unbounded: zero those first
                low, high = np.where(finite, low, 0.0), np.where(finite, high, 0.0)
                center = np.where(finite, (low + high) / 2, 0.0)
                half = np.where(finite, (high - low) / 2, 1.0)
                self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32), persistent=False)
                self.register_buffer(
                    "inv_half", torch.as_tensor(1.0 / half, dtype=torch.float32), persistent=False
                )
        else:
            raise TypeError(f"observation spaces must be Discrete or a 1-D Box, got {space}")

    def attach_normalizer(self, normalizer: nn.Module) -> None:
        """Standardize Box observations with ``normalizer`` (shared, not copied) from now on."""
        if self.num_classes is not None:
            raise ValueError("a Discrete observation space is one-hot encoded; it takes no normalizer")
        self.normalizer = normalizer

    def forward(self, obs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.num_classes is not None:
            index = obs.long() - self.start if self.start else obs.long()
            return nn.functional.one_hot(index, self.num_classes).to(dtype)
        if self.normalizer is not None:
            return self.normalizer(obs.to(dtype))
        if self.rescale:
            return (obs.to(dtype) - self.center.to(dtype)) * self.inv_half.to(dtype)
        return obs.to(dtype)


class Policy(nn.Module):
    """Base class: ``forward(obs)`` returns a Pyro distribution over actions; ``act`` picks one."""

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """An action per observation: the distribution's mode if ``deterministic``, else a sample."""
        with torch.no_grad():
            d = self(obs)
            return self.mode(d) if deterministic else d.sample()

    def mode(self, d) -> torch.Tensor:
        raise NotImplementedError


def _checked_hidden(hidden: object) -> tuple[int, ...]:
    """Hidden layer widths: a sequence of ints >= 1 (empty: a linear policy)."""
    ok = isinstance(hidden, Sequence) and not isinstance(hidden, str)
    if not ok or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise ValueError(f"hidden={hidden!r} is not allowed; use a list of layer widths >= 1 (empty: linear)")
    return tuple(hidden)


class _MLPPolicy(Policy):
    def __init__(
        self, observation_space: gym.Space, out_dim: int, hidden: Sequence[int], activation, rescale_obs: bool
    ):
        super().__init__()
        hidden = _checked_hidden(hidden)
        if isinstance(activation, str):  # a torch.nn name, as configs write it
            activation = activation_class(activation)
        elif not (isinstance(activation, type) and issubclass(activation, nn.Module)):
            raise TypeError(
                f"activation={activation!r} is not allowed; use a torch.nn.Module class such as "
                "torch.nn.Tanh, or its name"
            )
        self.encoder = ObservationEncoder(observation_space, rescale=rescale_obs)
        self.net = mlp([self.encoder.dim, *hidden, out_dim], activation)

    @property
    def rescale_obs(self) -> bool:
        """Whether bounded observation coordinates are mapped onto [-1, 1] (the encoder's setting)."""
        return self.encoder.rescale

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(obs, self.net[0].weight.dtype))


class CategoricalMLP(_MLPPolicy):
    """q(a|s) = Categorical(logits = MLP(obs)) for a Discrete action space.

    ``rescale_obs=True`` maps bounded observation coordinates onto [-1, 1] (:class:`ObservationEncoder`).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        rescale_obs: bool = False,
    ):
        if not isinstance(action_space, gym.spaces.Discrete):
            raise TypeError(f"CategoricalMLP needs a Discrete action space, got {action_space}")
        super().__init__(observation_space, int(action_space.n), hidden, activation, rescale_obs)
        with torch.no_grad():  # start near uniform: small last layer
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()

    def forward(self, obs: torch.Tensor) -> dist.Categorical:
        logits = self.features(obs)
        return dist.Categorical(logits=logits, validate_args=validate_on(logits))

    def mode(self, d) -> torch.Tensor:
        return d.logits.argmax(-1)


class SoftQPolicy(CategoricalMLP):
    """q(a|s) = pi(a|s) exp(Q(s, a) / alpha) / Z(s) with pi uniform: the closed-form E-step of seed
    eq. (7) (and the optimal policy of the maximum-entropy eq. 10) for the network's own Q(s, a).

    The network outputs Q(s, a) for every action (:meth:`q_values`); the distribution's logits are
    Q / alpha, with the temperature alpha a buffer saved in the state dict (set it with
    :meth:`set_temperature`). Its mode is argmax_a Q(s, a), whatever alpha is.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
        rescale_obs: bool = False,
        temperature: float = 1.0,
    ):
        super().__init__(observation_space, action_space, hidden, activation, rescale_obs)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.set_temperature(temperature)

    def set_temperature(self, alpha: float | torch.Tensor) -> None:
        """Set alpha (a positive float, or a 0-d tensor: copied on the device, no host read)."""
        if not isinstance(alpha, torch.Tensor) and not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"temperature must be a positive finite number, got {alpha!r}")
        self.temperature.fill_(alpha)

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """Q(s, a) for every action: ``[*B, A]``."""
        return self.features(obs)

    def soft_value(self, q_values: torch.Tensor) -> torch.Tensor:
        """V(s) = alpha log sum_a pi(a) exp(Q(s, a) / alpha) = E_q[Q - alpha (log q - log pi)] over the
        last axis, pi uniform (the soft maximum, tending to max_a Q as alpha -> 0)."""
        alpha = self.temperature.to(q_values.dtype)
        return alpha * (torch.logsumexp(q_values / alpha, dim=-1) - math.log(q_values.shape[-1]))

    def forward(self, obs: torch.Tensor) -> dist.Categorical:
        logits = self.q_values(obs) / self.temperature.to(self.net[0].weight.dtype)
        return dist.Categorical(logits=logits, validate_args=validate_on(logits))


def is_bounded_box(space: gym.Space) -> bool:
    """Whether ``space`` is a Box with every bound finite: what a squashed policy, a rescaling onto
    the box or a clip into it needs (a Gaussian alone can act on an unbounded one)."""
    return isinstance(space, gym.spaces.Box) and bool(
        np.isfinite(space.low).all() and np.isfinite(space.high).all()
    )


def _box_bounds(action_space: gym.Space) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise TypeError(f"a Gaussian policy needs a 1-D Box action space, got {action_space}")
    return action_space.low.astype(np.float64), action_space.high.astype(np.float64)


class GaussianMLP(_MLPPolicy):
    """q(a|s) = Normal(mu(obs), diag(sigma^2)), unbounded.

    sigma is a learned per-dimension vector, or with ``state_dependent_std=True`` a softplus output
    of the network (MPO fits the covariance per state). Reparameterizable (pathwise gradients). Its
    support is the whole real line, so pair it with a ``GaussianPrior`` or
    ``UniformPrior(space, beyond_box="flat")`` (the proper uniform on a box makes KL(q || pi)
    infinite, and ``TrajectoryELBO`` refuses it); environments clip out-of-range actions.

    ``rescale_obs=True`` maps bounded observation coordinates onto [-1, 1] (:class:`ObservationEncoder`).
    ``rescale_actions=True`` makes the network act in the unit box: with mid = (high + low) / 2 and
    half = (high - low) / 2, q(a|s) = Normal(mid + half mu(obs), half sigma(obs)), so that outputs of
    order one span a box of any size (Pendulum's torque in [-2, 2], a motor in [-0.4, 0.4]) and
    ``init_std`` is a fraction of the box's half-width. It needs a bounded box.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        init_std: float = 1.0,
        state_dependent_std: bool = False,
        rescale_obs: bool = False,
        rescale_actions: bool = False,
    ):
        low, high = _box_bounds(action_space)
        dim = int(action_space.shape[0])
        self.state_dependent_std = bool(state_dependent_std)
        super().__init__(
            observation_space, 2 * dim if state_dependent_std else dim, hidden, activation, rescale_obs
        )
        self.rescale_actions = bool(rescale_actions)
        if self.rescale_actions:
            if not is_bounded_box(action_space):
                raise ValueError(f"rescale_actions needs a bounded action space, got {action_space}")
            # from the space, like the encoder's map: not saved, rebuilt from the run's spec
            mid, half = (high + low) / 2, (high - low) / 2
            self.register_buffer("action_mid", torch.as_tensor(mid, dtype=torch.float32), persistent=False)
            self.register_buffer("action_half", torch.as_tensor(half, dtype=torch.float32), persistent=False)
        if state_dependent_std:
            with torch.no_grad():
                self.net[-1].weight[dim:].mul_(0.01)
                self.net[-1].bias[dim:].fill_(float(np.log(np.expm1(init_std))))  # softplus^-1(init_std)
        else:
            self.log_std = nn.Parameter(torch.full((dim,), float(np.log(init_std))))

    def params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, standard deviation) of q(.|obs), each ``[B, action_dim]``."""
        out = self.features(obs)
        if self.state_dependent_std:
            loc, raw = out.chunk(2, dim=-1)
            scale = nn.functional.softplus(raw) + 1e-4
        else:
            loc, scale = out, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp().expand_as(out)
        if self.rescale_actions:
            half = self.action_half.to(loc.dtype)
            return self.action_mid.to(loc.dtype) + half * loc, half * scale
        return loc, scale

    def forward(self, obs: torch.Tensor) -> dist.Independent:
        loc, scale = self.params(obs)
        return dist.Normal(loc, scale, validate_args=validate_on(loc)).to_event(1)

    def mode(self, d) -> torch.Tensor:
        return d.base_dist.loc


class TanhGaussianMLP(_MLPPolicy):
    """q(a|s): u ~ Normal(mu(obs), sigma(obs)^2), a = mid + half * tanh(u), inside the action box.

    The density includes the exact log-determinant of the squashing (:class:`SquashedNormal`,
    computed stably from u and cached, so log q of a saturated action stays finite). Support is
    the box, so KL against ``UniformPrior`` is finite: ELBO (10) = E[r]/alpha + H(q) - log vol.

    ``rescale_obs=True`` maps bounded observation coordinates onto [-1, 1] (:class:`ObservationEncoder`).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        init_std: float = 1.0,
        rescale_obs: bool = False,
    ):
        low, high = _box_bounds(action_space)
        if not is_bounded_box(action_space):
            raise ValueError(f"TanhGaussianMLP needs a bounded action space, got {action_space}")
        dim = int(action_space.shape[0])
        super().__init__(observation_space, 2 * dim, hidden, activation, rescale_obs)
        self.register_buffer("action_mid", torch.as_tensor((high + low) / 2, dtype=torch.float32))
        self.register_buffer("action_half", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        # The box's own bounds, into which actions are clamped: mid + half can round past them.
        # Not persistent, so state dicts (and checkpoints) keep their keys.
        self.register_buffer("action_low", torch.as_tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.as_tensor(high, dtype=torch.float32), persistent=False)
        # the bounds on the host: a frozen copy (a prior pi_k) compares boxes without a device read.
        # They come from action_space, not from the buffers: build the policy for the box it acts in
        # (a state_dict of another box would leave the key stale).
        self.box = (tuple(map(float, low)), tuple(map(float, high)))
        with torch.no_grad():
            self.net[-1].weight[dim:].mul_(0.01)
            self.net[-1].bias[dim:].fill_(float(np.log(init_std)))

    def forward(self, obs: torch.Tensor) -> SquashedNormal:
        loc, log_std = self.features(obs).chunk(2, dim=-1)
        scale = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        return squashed_gaussian(
            loc, scale, self.action_mid, self.action_half, self.box, self.action_low, self.action_high
        )

    def mode(self, d) -> torch.Tensor:
        return d.mode
