"""Trajectory models and prior policies (layer 2): a trajectory written as a Pyro model.

See :mod:`rl_as_inference.models.sites` for the site-naming convention that custom models follow.
"""

from .priors import GaussianPrior, PolicyPrior, Prior, TablePrior, UniformPrior, as_pyro_distribution
from .rollout import (
    InitialStateDistribution,
    Optimality,
    PyroSites,
    Trajectory,
    initial_distribution,
    rollout,
)
from .sites import EPISODES, SiteInfo, action_site, factor_site, parse_site, state_site
from .trajectory import TrajectoryModel, check_gamma, check_horizon

__all__ = [
    "EPISODES",
    "GaussianPrior",
    "InitialStateDistribution",
    "Optimality",
    "PolicyPrior",
    "Prior",
    "PyroSites",
    "SiteInfo",
    "Trajectory",
    "TablePrior",
    "TrajectoryModel",
    "UniformPrior",
    "action_site",
    "as_pyro_distribution",
    "check_gamma",
    "check_horizon",
    "factor_site",
    "initial_distribution",
    "parse_site",
    "rollout",
    "state_site",
]
