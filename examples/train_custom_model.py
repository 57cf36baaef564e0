"""Train your own trajectory model from Python: Pendulum-v1 with an unknown pole mass.

The model is a plain Pyro function that follows the site convention of
``rl_as_inference.models.sites``: episodes in ``pyro.plate("episodes", N)``, the initial state ``s_0``,
an action site ``a_t`` and an optimality factor ``O_t = r_t / alpha`` per step, step t under
``poutine.scale(gamma**t)``. The mass m ~ LogNormal(0, 0.3) is one more latent, outside the plate.
The guide learns q(m) and a tanh-Gaussian policy q(a | s); ``rlai.fit`` maximizes ``TrajectoryELBO``.
Conditioning on optimality makes q(m) optimistic (a light pole is easy to swing up;
notebooks/02_custom_model.ipynb explains why), so the return is measured on the library's own
Pendulum-v1 port, whose mass is 1.

    python examples/train_custom_model.py            # about 30 s on 2 CPUs
    python examples/train_custom_model.py --small    # a few seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

import rl_as_inference as rlai
from rl_as_inference import envs, guides, models

ALPHA, GAMMA = 1.0, 0.99  # temperature; probability that the episode goes on after each step
MASS_PRIOR = dist.LogNormal(0.0, 0.3)
ENV = envs.make("Pendulum-v1")  # for its spaces, its reset law and the evaluation at m = 1
ACTION_PRIOR = models.UniformPrior(ENV.action_space)  # pi: uniform torque (the max-entropy ELBO)


def pendulum_step(
    state: torch.Tensor, action: torch.Tensor, mass: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pendulum-v1's semi-implicit Euler step with the pole mass as an argument: (next state, reward)."""
    theta, theta_dot = state.unbind(-1)
    u = action[..., 0].clamp(-2.0, 2.0)
    wrapped = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi  # theta in [-pi, pi), 0 upright
    reward = -(wrapped**2 + 0.1 * theta_dot**2 + 0.001 * u**2)
    theta_dot = (theta_dot + (15.0 * torch.sin(theta) + 3.0 / mass * u) * 0.05).clamp(-8.0, 8.0)
    return torch.stack((theta + theta_dot * 0.05, theta_dot), -1), reward


def initial_states(n: int) -> dist.Distribution:
    """Pendulum-v1's p(s_0): theta ~ U(-pi, pi), theta_dot ~ U(-1, 1)."""
    low, high = torch.tensor([-math.pi, -1.0]), torch.tensor([math.pi, 1.0])
    return dist.Uniform(low, high).expand([n, 2]).to_event(1)


def make_model_and_guide(horizon: int, policy: torch.nn.Module) -> tuple[Callable[[int], None], ...]:
    """The model p(m, tau, O) and the guide q(m) q(tau | m), both Pyro functions of the episode count."""

    def model(n: int) -> None:
        mass = pyro.sample("mass", MASS_PRIOR)  # outside the plate: one mass shared by every episode
        with pyro.plate("episodes", n):
            state = pyro.sample("s_0", initial_states(n))
            for t in range(horizon):
                with poutine.scale(scale=GAMMA**t):  # the episode is still running with prob. gamma^t
                    action = pyro.sample(f"a_{t}", ACTION_PRIOR.dist(state, ENV))
                    state, reward = pendulum_step(state, action, mass)
                    pyro.factor(f"O_{t}", reward / ALPHA)

    def guide(n: int) -> None:
        loc = pyro.param("mass_loc", torch.tensor(0.0))
        scale = pyro.param("mass_scale", torch.tensor(0.3), constraint=constraints.positive)
        mass = pyro.sample("mass", dist.LogNormal(loc, scale))
        pyro.module("policy", policy)
        with pyro.plate("episodes", n):
            state = pyro.sample("s_0", initial_states(n))  # the same p(s_0) and dynamics as the model
            for t in range(horizon):
                with poutine.scale(scale=GAMMA**t):  # the guide shares the death time too
                    action = pyro.sample(f"a_{t}", policy(ENV.observe(state)))
                    state, _ = pendulum_step(state, action, mass)

    return model, guide


def mean_return(policy: torch.nn.Module, steps: int, episodes: int = 200) -> float:
    """Mean undiscounted return of the policy's mode on the library's Pendulum-v1 port (m = 1)."""
    state, total = ENV.reset(episodes, seed=7), torch.zeros(episodes)
    with torch.no_grad():
        for _ in range(steps):
            out = ENV.step(state, policy.act(ENV.observe(state)))
            state, total = out.state, total + out.reward
    return total.mean().item()


def main(small: bool) -> None:
    torch.set_num_threads(1)  # small networks run fastest on one thread (as rlai's --threads default)
    horizon, num_steps, num_episodes = (30, 60, 32) if small else (50, 300, 128)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # before the network is built: its initial weights are drawn here
    policy = guides.TanhGaussianMLP(ENV.observation_space, ENV.action_space, hidden=(64, 64))
    model, guide = make_model_and_guide(horizon, policy)
    before = mean_return(policy, horizon)
    result = rlai.fit(
        model, guide, num_steps=num_steps, num_episodes=num_episodes, lr=3e-3, seed=0, progress=False
    )
    k = max(1, num_steps // 10)  # one batch's ELBO is noisy: average the first and last tenth
    print(f"ELBO per episode: {sum(result.elbo[:k]) / k:.2f} -> {sum(result.elbo[-k:]) / k:.2f}")
    print(f"{horizon}-step return at m = 1: {before:.2f} -> {mean_return(policy, horizon):.2f}")
    loc, scale = pyro.param("mass_loc").item(), pyro.param("mass_scale").item()
    print(f"q(m): median {math.exp(loc):.3f}, log-scale sd {scale:.3f} (prior: median 1, sd 0.3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="the size the test suite runs")
    main(parser.parse_args().small)
