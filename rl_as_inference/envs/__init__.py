"""Functional, batched, torch-native environments (layer 1 of the library).

``make(id)`` builds a pure torch port of a Gymnasium classic-control task whose ``step`` reproduces
Gymnasium; ``TabularMDP`` builds finite MDPs; ``make_vec`` wraps any functional env as a Gymnasium
``VectorEnv`` with torch tensors in and out; ``from_gymnasium`` wraps any Gymnasium env the same
way for data collection and evaluation (it cannot re-simulate from a state).
"""

from .acrobot import Acrobot
from .base import FunctionalEnv, Step
from .cartpole import CartPole
from .gymnasium_adapter import TorchVectorWrapper, from_gymnasium
from .mountain_car import MountainCar, MountainCarContinuous
from .pendulum import Pendulum
from .registry import PORTED, make
from .tabular import TabularMDP, chain, gridworld, random_mdp
from .vector import FunctionalVectorEnv, make_vec

__all__ = [
    "PORTED",
    "Acrobot",
    "CartPole",
    "FunctionalEnv",
    "FunctionalVectorEnv",
    "MountainCar",
    "MountainCarContinuous",
    "Pendulum",
    "Step",
    "TabularMDP",
    "TorchVectorWrapper",
    "chain",
    "from_gymnasium",
    "gridworld",
    "make",
    "make_vec",
    "random_mdp",
]
