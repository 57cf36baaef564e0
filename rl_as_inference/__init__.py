"""rl_as_inference: reinforcement learning as probabilistic inference in Pyro.

Layers (each imports only from those below it): ``envs`` (functional torch environments),
``models`` and ``guides`` (trajectory models and variational policies as Pyro programs), inference
(``TrajectoryELBO``, ``fit``, ``exact``), then diagnostics and the command line.
"""

from . import envs, exact, guides, models
from .baselines import ValueBaseline
from .checkpoint import load_checkpoint, save_checkpoint
from .elbo import TrajectoryELBO
from .fit import FitResult, fit

__version__ = "0.1.0"
__all__ = [
    "FitResult",
    "TrajectoryELBO",
    "ValueBaseline",
    "__version__",
    "envs",
    "exact",
    "fit",
    "guides",
    "load_checkpoint",
    "models",
    "save_checkpoint",
]
