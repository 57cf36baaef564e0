"""The squashed Gaussian q(a|s) of bounded action spaces, with its density in closed form.

a = mid + half * tanh(u), u ~ Normal(loc, scale), independently per action coordinate. Written as
one Pyro distribution rather than torch's ``TransformedDistribution(Normal, [Tanh, Affine])``:
the policy builds one of these per time step of every rollout, and the transform stack costs
more to construct and score (its caches, its event-dim bookkeeping) than the arithmetic does.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions import Normal, register_kl
from torch.nn.functional import softplus

__all__ = ["SquashedNormal"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_2 = math.log(2.0)
_NO_SAMPLE_SHAPE = torch.Size()


class SquashedNormal(dist.TorchDistribution):
    """mid + half * tanh(u), u ~ Normal(loc, scale) per coordinate: a density on the box [mid - half, mid + half].

    The log-density is the change of variables
    log q(a) = sum_i [log N(u_i; loc_i, scale_i) - log half_i - log(1 - tanh(u_i)^2)],
    with log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), which stays finite where tanh(u)
    rounds to +-1. An action this distribution just sampled is scored from its cached u (exact,
    and differentiable through u, as the pathwise ELBO gradient of the source's eq. (10) needs); any other
    action is mapped back by atanh, clamped inside the open box so a stored saturated action keeps
    a finite density.

    In floating point mid + half * tanh(u) can round past the box: where tanh(u) rounds to +-1,
    mid + half and mid - half are rounded sums whose error is an ulp of the larger of mid and half,
    so on a box that is not symmetric the action can land outside [low, high] (log pi = -inf under
    a uniform prior on the box). Samples and the mode are therefore clamped into [low, high], the
    box's own bounds where they are given. The clamp moves a value by rounding errors only: the
    pathwise gradient stays that of mid + half * tanh(u) and the density that of the draw u.

    Args:
        loc, scale: ``[..., d]`` parameters of u (the last dimension is the event).
        mid, half: ``[d]`` (or broadcastable; numbers are accepted) centre and half-width of the
            action box.
        box: optional host-side key of the box (e.g. its bounds as a tuple of floats). The KL
            between two squashed Gaussians needs them on the same box; where both carry a key the
            keys are compared, not the tensors, whose comparison would synchronize a GPU.
        low, high: optional bounds of the box that ``mid`` and ``half`` describe (broadcastable
            like them), exactly as the action space stores them (``TanhGaussianMLP`` passes its
            space's): the support is [low, high] and actions are clamped into it. Without them
            the box is [mid - half, mid + half] as computed in ``mid``'s dtype.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        mid: torch.Tensor | float,
        half: torch.Tensor | float,
        validate_args: bool | None = None,
        box: Hashable | None = None,
        low: torch.Tensor | None = None,
        high: torch.Tensor | None = None,
    ):
        if loc.dim() < 1:
            raise ValueError(
                f"SquashedNormal needs loc with an event dimension, got shape {tuple(loc.shape)}"
            )
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        if not isinstance(mid, torch.Tensor) or not isinstance(half, torch.Tensor):
            mid = torch.as_tensor(mid, dtype=loc.dtype, device=loc.device)
            half = torch.as_tensor(half, dtype=loc.dtype, device=loc.device)
        self.mid, self.half, self.box = mid, half, box
        if (low is None) != (high is None):
            raise ValueError("SquashedNormal needs both low and high, or neither")
        self.low, self.high = (mid - half, mid + half) if low is None else (low, high)
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.independent(constraints.interval(self.low, self.high), 1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SquashedNormal, _instance)
        shape = torch.Size(batch_shape) + self.event_shape
        new.loc, new.scale = self.loc.expand(shape), self.scale.expand(shape)
        new.mid, new.half, new.box, new._cached = self.mid, self.half, self.box, None
        new.low, new.high = self.low, self.high
        super(SquashedNormal, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        u = self.loc + self.scale * eps
        action = self._into_box(self.mid + self.half * torch.tanh(u))
        self._cached = (action, u)
        return action

    def _into_box(self, action: torch.Tensor) -> torch.Tensor:
        """``action`` clamped into [low, high], with the gradient of the unclamped value (the clamp
        only undoes rounding: the value is exact, the derivative that of mid + half tanh(u))."""
        inside = torch.minimum(torch.maximum(action, self.low), self.high)
        if not action.requires_grad:
            return inside
        return inside.detach() + (action - action.detach())

    def pre_tanh(self, value: torch.Tensor) -> torch.Tensor:
        """u with mid + half * tanh(u) = value: the cached one for the last sample, else atanh."""
        if self._cached is not None and self._cached[0] is value:
            return self._cached[1]
        y = (value - self.mid) / self.half
        eps = torch.finfo(y.dtype).eps
        return torch.atanh(y.clamp(-1 + eps, 1 - eps))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        u = self.pre_tanh(value)
        z = (u - self.loc) / self.scale
        log_normal = -0.5 * z * z - self.scale.log() - _HALF_LOG_2PI
        log_jacobian = self.half.log() + 2 * (_LOG_2 - u - softplus(-2 * u))
        return (log_normal - log_jacobian).sum(-1)

    @property
    def mode(self) -> torch.Tensor:
        """The squashed location mid + half * tanh(loc), the action a deterministic policy takes."""
        return self._into_box(self.mid + self.half * torch.tanh(self.loc))

    def same_box(self, other: SquashedNormal) -> bool:
        """True if both live on the same action box: identical tensors, else equal ``box`` keys, else
        (one has no key) equal tensors."""
        if self.mid is other.mid and self.half is other.half:
            return True
        if self.box is not None and other.box is not None:
            return self.box == other.box
        return bool(torch.equal(self.mid, other.mid) and torch.equal(self.half, other.half))


@register_kl(SquashedNormal, SquashedNormal)
def _kl_squashed_squashed(q: SquashedNormal, p: SquashedNormal) -> torch.Tensor:
    """KL(q || p) = KL of the pre-tanh Gaussians: the same invertible map squashes both."""
    if not q.same_box(p):
        raise NotImplementedError("KL between squashed Gaussians on different boxes")
    # q and p checked their parameters when they were built: no second validation (a device sync)
    pre_q, pre_p = Normal(q.loc, q.scale, validate_args=False), Normal(p.loc, p.scale, validate_args=False)
    return torch.distributions.kl_divergence(pre_q, pre_p).sum(-1)
