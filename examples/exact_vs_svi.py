"""Exact inference against SVI on a slippery gridworld, where the right answer is known.

``exact.solve`` gives log p(O), the best ELBO over policies that keep the true dynamics, and the
optimal time-dependent policy q*. SVI trains a ``TabularGuide`` (a softmax table q_t(a | s)) on the
same trajectory model with ``TrajectoryELBO`` (score-function gradients: the actions are discrete).
The script prints how far SVI's policy is from the optimum, scored exactly by ``exact.elbo_of``
(no Monte-Carlo noise), and the total variation between the two policies, averaged over the
states q* visits. On a slippery floor log p(O) lies above the best ELBO (the posterior counts on
lucky slips, which no policy can); SVI climbs to the ELBO, not to the evidence.

    python examples/exact_vs_svi.py            # about 10 s on 2 CPUs
    python examples/exact_vs_svi.py --small    # a few seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse

import torch

import rl_as_inference as rlai
from rl_as_inference import envs, exact, guides, models

HORIZON, ALPHA = 10, 0.25
WALLS = [(1, 1), (1, 2), (2, 1)]


def visitation(mdp: envs.TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """[T, S]: the probability that the episode is alive in state s at step t under a [T, S, A] policy."""
    d, out = mdp.initial.double(), []
    for t in range(policy.shape[0]):
        out.append(d)
        d = torch.einsum("s,sa,sax->x", d, policy[t].double(), mdp.transition.double()) * (~mdp.terminal)
    return torch.stack(out)


def main(small: bool) -> None:
    torch.set_num_threads(1)  # small tables run fastest on one thread (as rlai's --threads default)
    num_steps, num_episodes = (150, 128) if small else (600, 512)
    mdp = envs.gridworld(4, 4, walls=WALLS, slip=0.1)  # start top left, goal bottom right, -1 per move
    solution = exact.solve(mdp, horizon=HORIZON, alpha=ALPHA)
    uniform = torch.full((mdp.num_states, mdp.num_actions), 1.0 / mdp.num_actions)
    print(f"exact: log p(O) = {solution.log_evidence:.4f}, max ELBO = {solution.elbo:.4f}")
    print(f"ELBO of the uniform policy = {exact.elbo_of(mdp, uniform, horizon=HORIZON, alpha=ALPHA):.4f}")

    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=HORIZON, alpha=ALPHA)
    guide = guides.TabularGuide(mdp, horizon=HORIZON)
    result = rlai.fit(
        model,
        guide,
        num_steps=num_steps,
        num_episodes=num_episodes,
        lr=0.1,
        loss=rlai.TrajectoryELBO(),  # fit's default; TraceEnum_ELBO is exact but costs (S A)^H here
        seed=0,
        progress=False,
    )
    policy = guide.policy()  # [T, S, A], the layout of solution.policy
    svi_elbo = exact.elbo_of(mdp, policy, horizon=HORIZON, alpha=ALPHA)
    print(f"SVI, {num_steps} steps x {num_episodes} episodes: last estimate {result.elbo[-1]:.4f}")
    print(f"exact ELBO of SVI's policy = {svi_elbo:.4f}, gap to the optimum = {solution.elbo - svi_elbo:.4f}")

    # A state that q* never reaches gets no episodes and keeps its initial (uniform) row: weigh each
    # (t, s) by how often q* is there, so that the distance measures the behaviour that matters.
    d = visitation(mdp, solution.policy)

    def distance(p: torch.Tensor) -> float:
        tv = 0.5 * (p.double() - solution.policy).abs().sum(-1)  # [T, S]
        return ((d * tv).sum() / d.sum()).item()

    print(
        f"total variation to q*, weighted by q*'s visits: {distance(policy):.4f} "
        f"(the uniform policy: {distance(uniform.expand_as(policy)):.4f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="the size the test suite runs")
    main(parser.parse_args().small)
