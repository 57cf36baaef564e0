"""``make demo``: batched rollouts of the default environment, then train and evaluate a policy.

Rolls out N Pendulum-v1 episodes in one batch with the functional torch port, under a uniform random
policy and under a simple energy-shaping controller, prints env-steps per second and the returns,
and checks one controller episode against Gymnasium's own environment. Then it trains a policy with
the shipped recipe (what ``rlai train --env Pendulum-v1`` does, a minute or two on a laptop CPU) and
evaluates it on 100 episodes of Gymnasium's own Pendulum-v1.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from . import envs


def energy_controller(obs: torch.Tensor) -> torch.Tensor:
    """Swing up by pumping energy, then balance with a PD law near the top (a hand-made baseline)."""
    cos, sin, thdot = obs.unbind(-1)
    theta = torch.atan2(sin, cos)
    # theta'' = 15 sin(theta) + 3u, so E = theta_dot^2 / 2 + 15 cos(theta) changes at rate 3 u theta_dot
    # and equals 15 at the upright rest state: push along theta_dot until E reaches 15.
    energy = 0.5 * thdot**2 + 15.0 * cos
    swing = 2.0 * torch.sign(thdot + 1e-6) * torch.sign(15.0 - energy)
    balance = -10.0 * theta - 2.0 * thdot
    near_top = cos > 0.9
    return torch.where(near_top, balance, swing).clamp(-2.0, 2.0).unsqueeze(-1)


def rollout(
    env: envs.FunctionalEnv, policy, num_envs: int, horizon: int, seed: int
) -> tuple[torch.Tensor, float]:
    """Total reward of ``num_envs`` episodes of ``horizon`` steps, and the wall-clock seconds taken."""
    gen = torch.Generator(device=env.device).manual_seed(seed)
    state = env.reset(num_envs, generator=gen)
    total = torch.zeros(num_envs, device=env.device, dtype=env.dtype)
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    start = time.perf_counter()
    for _ in range(horizon):
        action = policy(env.observe(state), gen)
        state, reward, _ = env.step(state, action)
        total += reward
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    return total, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=4096, help="episodes rolled out in one batch")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="only the rollout part")
    parser.add_argument("--out", default="runs/demo-Pendulum-v1", help="run directory of the training part")
    args = parser.parse_args(argv)

    env = envs.make("Pendulum-v1", device=args.device)
    horizon = env.max_episode_steps
    policies = {
        "uniform random": lambda obs, g: torch.rand(obs.shape[0], 1, generator=g, device=env.device) * 4 - 2,
        "energy controller": lambda obs, g: energy_controller(obs),
    }
    print(f"rl_as_inference demo: {env.id}, {args.num_envs} episodes x {horizon} steps on {env.device}")
    print(f"{'policy':<20}{'env-steps/s':>14}{'mean return':>14}{'std':>10}")
    for name, policy in policies.items():
        rollout(env, policy, min(args.num_envs, 64), 5, args.seed)  # warm-up
        returns, seconds = rollout(env, policy, args.num_envs, horizon, args.seed)
        steps = args.num_envs * horizon / seconds
        print(f"{name:<20}{steps:>14.3g}{returns.mean().item():>14.1f}{returns.std().item():>10.1f}")

    # The same controller on Gymnasium's own Pendulum-v1: the port and the original agree.
    ref = gym.make("Pendulum-v1")
    obs, _ = ref.reset(seed=args.seed)
    gym_return = 0.0
    for _ in range(horizon):
        action = energy_controller(torch.as_tensor(obs)[None]).numpy()[0].astype(np.float32)
        obs, reward, terminated, truncated, _ = ref.step(action)
        gym_return += float(reward)
        if terminated or truncated:
            break
    print(
        f"one controller episode on Gymnasium's own Pendulum-v1 (seed {args.seed}): return {gym_return:.1f}"
    )
    if args.no_train:
        return
    from . import runs

    print(f"\ntraining with the shipped Pendulum-v1 recipe (rlai train --env Pendulum-v1 --seed {args.seed})")
    run_dir = runs.train_run("Pendulum-v1", seed=args.seed, out=args.out, device=args.device)
    print((run_dir / "eval.json").read_text().strip())
    print(f"run directory: {run_dir}; evaluate again with: rlai evaluate {run_dir}")


if __name__ == "__main__":
    main()
