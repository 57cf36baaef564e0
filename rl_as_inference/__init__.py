"""rl_as_inference: reinforcement learning as probabilistic inference in Pyro.

Layers (each imports only from those below it): ``envs`` (functional torch environments),
``models`` and ``guides`` (trajectory models and variational policies as Pyro programs), inference
(``TrajectoryELBO``, ``fit``, ``exact``, ``bellman``, critics, ``algos``), then runs and the
command line (``rlai``).
"""

from . import algos, bellman, envs, exact, guides, models, runs, trust_region
from .baselines import ValueBaseline
from .checkpoint import load_checkpoint, save_checkpoint
from .elbo import TrajectoryELBO
from .fit import FitResult, fit
from .runs import evaluate, load_policy
from .trust_region import TrustRegion

__version__ = "0.1.0"
__all__ = [
    "FitResult",
    "TrajectoryELBO",
    "TrustRegion",
    "ValueBaseline",
    "__version__",
    "algos",
    "bellman",
    "envs",
    "evaluate",
    "exact",
    "fit",
    "guides",
    "load_checkpoint",
    "load_policy",
    "models",
    "runs",
    "save_checkpoint",
    "trust_region",
]
