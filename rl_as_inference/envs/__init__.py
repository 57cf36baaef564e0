"""Functional, batched, torch-native environments (layer 1 of the library).

``make(id)`` builds a pure torch port of a Gymnasium classic-control task whose ``step`` reproduces
Gymnasium; ``TabularMDP`` builds finite MDPs; ``make_vec`` wraps any functional env as a Gymnasium
``VectorEnv`` with torch tensors in and out; ``from_gymnasium`` wraps any Gymnasium env the same
way for data collection and evaluation (it cannot re-simulate from a state). Importing this
package registers the ports in Gymnasium's registry as ``rl_as_inference/ID``
(:mod:`.gym_registration`): ``gymnasium.make_vec("rl_as_inference/CartPole-v1", 4096)``.
"""

from .acrobot import Acrobot
from .base import FunctionalEnv, Step
from .cartpole import CartPole
from .gym_registration import GymnasiumEnv, register_ported
from .gymnasium_adapter import TorchVectorWrapper, from_gymnasium, numpy_view
from .mountain_car import MountainCar, MountainCarContinuous
from .pendulum import Pendulum
from .registry import ENTRY_POINT_GROUP, PORTED, has_torch_env, make, register, registered_ids
from .tabular import TabularMDP, chain, gridworld, random_mdp
from .vector import FunctionalVectorEnv, make_vec

__all__ = [
    "ENTRY_POINT_GROUP",
    "PORTED",
    "Acrobot",
    "CartPole",
    "FunctionalEnv",
    "FunctionalVectorEnv",
    "GymnasiumEnv",
    "MountainCar",
    "MountainCarContinuous",
    "Pendulum",
    "Step",
    "TabularMDP",
    "TorchVectorWrapper",
    "chain",
    "from_gymnasium",
    "gridworld",
    "has_torch_env",
    "make",
    "make_vec",
    "numpy_view",
    "random_mdp",
    "register",
    "register_ported",
    "registered_ids",
]

register_ported()
