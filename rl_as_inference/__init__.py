"""rl_as_inference: reinforcement learning as probabilistic inference in Pyro."""

from . import envs

__version__ = "0.1.0"
__all__ = ["__version__", "envs"]
