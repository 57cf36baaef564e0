"""Data-parallel SVI on Pendulum-v1 from a script, on as many processes as torchrun starts:

    torchrun --standalone --nproc_per_node=2 examples/distributed_fit.py [STEPS [EPISODES]]

Each rank rolls out EPISODES / K episodes (default 64) per step through the differentiable pendulum; the
gradients are averaged, so every rank holds the same policy after every step and the run takes the
steps one process would take with all EPISODES episodes. Only rank 0 prints. Run without
torchrun (``python examples/distributed_fit.py``) it is the same script on one process.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

import rl_as_inference as rlai
from rl_as_inference import distributed, envs, guides, models

TOTAL_EPISODES = 64
HORIZON = 50


def main(steps: int = 150, total_episodes: int = TOTAL_EPISODES) -> rlai.FitResult:
    launched = distributed.init_from_environment()  # False without torchrun: one process
    world = distributed.world_size()
    if total_episodes % world:
        raise SystemExit(f"{total_episodes} episodes do not split over {world} processes")
    env = envs.make("Pendulum-v1")
    torch.manual_seed(0)  # fit broadcasts rank 0's parameters anyway; this keeps runs repeatable
    policy = guides.GaussianMLP(env.observation_space, env.action_space, hidden=(32,))
    model = models.TrajectoryModel(env, models.GaussianPrior(1.0), horizon=HORIZON, alpha=1.0)
    guide = guides.PolicyGuide(env, policy, horizon=HORIZON)
    result = rlai.fit(
        model,
        guide,
        num_steps=steps,
        num_episodes=total_episodes // world,
        lr=3e-3,
        seed=0,
        progress=False,
        distributed=launched,
    )
    if distributed.is_main():
        first, last = sum(result.returns[:10]) / 10, sum(result.returns[-10:]) / 10
        print(
            f"{world} process(es): mean {HORIZON}-step return {first:.1f} -> {last:.1f} in {result.wall_time:.1f} s"
        )
    if launched:
        dist.barrier()  # all ranks finished before the group is torn down
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
