"""Guides (layer 2): variational policies q rolled out through the model's dynamics.

``PolicyGuide`` wraps a policy network (``GaussianMLP``, ``TanhGaussianMLP``, ``CategoricalMLP``),
``TabularGuide`` is a time-dependent softmax table for finite MDPs, ``OpenLoopGuide`` a per-step
action plan (planning as inference).
"""

from .guides import OpenLoopGuide, PolicyGuide, TabularGuide, TrajectoryGuide
from .normalization import RunningObsNormalizer, attach_obs_normalizer
from .policies import (
    CategoricalMLP,
    GaussianMLP,
    ObservationEncoder,
    Policy,
    SoftQPolicy,
    TanhGaussianMLP,
    mlp,
)
from .squashed import SquashedNormal

__all__ = [
    "CategoricalMLP",
    "GaussianMLP",
    "ObservationEncoder",
    "OpenLoopGuide",
    "Policy",
    "PolicyGuide",
    "RunningObsNormalizer",
    "SoftQPolicy",
    "SquashedNormal",
    "TabularGuide",
    "TanhGaussianMLP",
    "TrajectoryGuide",
    "attach_obs_normalizer",
    "mlp",
]
