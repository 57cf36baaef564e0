"""Guides (layer 2): variational policies q rolled out through the model's dynamics.

``PolicyGuide`` wraps a policy network (``GaussianMLP``, ``TanhGaussianMLP``, ``CategoricalMLP``),
``TabularGuide`` is a time-dependent softmax table for finite MDPs, ``OpenLoopGuide`` a per-step
action plan (planning as inference).
"""

from .guides import OpenLoopGuide, PolicyGuide, TabularGuide, TrajectoryGuide
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
    "SoftQPolicy",
    "SquashedNormal",
    "TabularGuide",
    "TanhGaussianMLP",
    "TrajectoryGuide",
    "mlp",
]
