"""Running observation normalization, held inside the networks so that a saved policy carries it.

Gymnasium-scale tasks (MuJoCo's joint velocities, LunarLander's coordinates) have observations of
very different and unknown sizes, so their bounds cannot rescale them. The usual remedy
(Stable-Baselines3's ``VecNormalize``, Acme's observation normalizer) is a running estimate of each
coordinate's mean and variance over every observation collected so far, applied as

    o' = clip((o - mean) / sqrt(var + eps), -clip, clip).

Here the estimate is a module whose statistics are persistent buffers: one instance is shared by
the policy and every critic (:func:`attach_obs_normalizer`), so all of them see the same inputs,
its statistics travel in their state dicts (training checkpoints and the run's ``checkpoint.pt``),
and a policy loaded for evaluation normalizes raw observations exactly as it did when it was saved.
Only the collector calls :meth:`RunningObsNormalizer.update`; evaluating never changes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import gymnasium as gym
import torch
from torch import nn

from .policies import ObservationEncoder

__all__ = ["DEFAULT_OBS_CLIP", "RunningObsNormalizer", "attach_obs_normalizer", "obs_normalizer_of"]

DEFAULT_OBS_CLIP = 10.0  # VecNormalize's clip_obs: normalized coordinates beyond 10 sd are outliers


class RunningObsNormalizer(nn.Module):
    """Per-coordinate running mean and variance of observations, and the normalization they give.

    Args:
        dim: the number of observation coordinates (a 1-D Box observation space).
        clip: normalized coordinates are clipped to ``[-clip, clip]``.
        eps: added to the variance, so a constant coordinate maps to 0 instead of dividing by 0.

    The statistics are float64 buffers (``mean``, ``var``, ``count``), merged batch by batch with
    the parallel form of Welford's update (Chan, Golub and LeVeque 1979), so they equal the mean and
    the population variance of all observations passed to :meth:`update`, without a host read.
    Before any update the map is the identity (mean 0, variance 1).
    """

    def __init__(self, dim: int, clip: float = DEFAULT_OBS_CLIP, eps: float = 1e-8):
        super().__init__()
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"dim={dim!r} is not allowed; use an int >= 1")
        if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip={clip!r} is not allowed; use a positive finite number")
        self.clip, self.eps = float(clip), float(eps)
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @classmethod
    def for_space(cls, space: gym.Space, clip: float = DEFAULT_OBS_CLIP) -> RunningObsNormalizer:
        """A normalizer for a 1-D Box observation space; any other space is refused by name."""
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
            raise ValueError(
                f"normalize_obs needs a 1-D Box observation space, got {space} (Discrete observations "
                "are one-hot encoded and need no normalization)"
            )
        return cls(int(space.shape[0]), clip=clip)

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        """Merge a batch of observations ``[*B, dim]`` into the running statistics."""
        x = obs.detach().reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        if x.shape[0] == 0:
            return
        self.merge(x.shape[0], x.mean(0), x.var(0, unbiased=False))

    @torch.no_grad()
    def merge(self, n: int | torch.Tensor, batch_mean: torch.Tensor, batch_var: torch.Tensor) -> None:
        """Merge the moments of ``n`` observations (their mean and biased variance per coordinate)
        into the running statistics: what :meth:`update` does with a batch it holds, and what a
        data-parallel run does with the moments of every rank's batch together."""
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta.square() * (self.count * n / total)
        self.mean.add_(delta * (n / total))
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """clip((obs - mean) / sqrt(var + eps), -clip, clip), in ``obs``'s dtype."""
        mean = self.mean.to(obs.dtype)
        inv_std = torch.rsqrt(self.var + self.eps).to(obs.dtype)
        return ((obs - mean) * inv_std).clamp(-self.clip, self.clip)

    def extra_repr(self) -> str:
        return f"dim={self.mean.shape[0]}, clip={self.clip:g}"


def attach_obs_normalizer(normalizer: RunningObsNormalizer | None, *modules: nn.Module) -> None:
    """Make every :class:`ObservationEncoder` inside ``modules`` normalize with ``normalizer``.

    Call it after any ``copy.deepcopy`` of a network (target critics, a lagged policy): a copy made
    afterwards would hold its own, frozen, statistics. ``None`` does nothing, so callers need not
    branch on the setting.
    """
    if normalizer is None:
        return
    for module in modules:
        for m in module.modules():
            if isinstance(m, ObservationEncoder):
                m.attach_normalizer(normalizer)


def obs_normalizer_of(modules: Iterable[nn.Module] | nn.Module) -> RunningObsNormalizer | None:
    """The normalizer attached to a network (the first encoder that has one), or None."""
    for module in [modules] if isinstance(modules, nn.Module) else modules:
        for m in module.modules():
            if isinstance(m, ObservationEncoder) and m.normalizer is not None:
                return m.normalizer
    return None
