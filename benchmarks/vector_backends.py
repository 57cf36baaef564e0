"""Env steps per second of Gymnasium's vector envs (sync, async) against EnvPool, here.

EnvPool (``pip install envpool``, not a dependency of this project) steps its envs in C++ threads;
the question this script answers is whether it would collect faster than the Gymnasium vector
envs the model-free algorithms use (``vectorization = "sync"`` or ``"async"``) on this machine, at
the env counts the recipes use. Each backend steps N envs with uniformly random actions (drawn
before the clock) for ``--seconds`` after a warm-up, autoresetting; the figure is env steps
(N per call) per second of wall-clock, the median of ``--repeats`` timings.

    python benchmarks/vector_backends.py --envs Hopper-v5 LunarLanderContinuous-v3 --num-envs 1 2 4 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solve import machine_info  # noqa: E402

BACKENDS = ("sync", "async", "envpool")


def make(backend: str, env_id: str, num_envs: int, threads: int):
    """A vector env of ``num_envs`` copies of ``env_id`` on ``backend`` (EnvPool: ``threads`` C++ threads)."""
    if backend == "envpool":
        import envpool

        return envpool.make_gymnasium(env_id, num_envs=num_envs, seed=0, num_threads=min(threads, num_envs))
    return gym.make_vec(env_id, num_envs, vectorization_mode=backend)


def steps_per_second(
    backend: str, env_id: str, num_envs: int, seconds: float, repeats: int, threads: int
) -> float:
    env = make(backend, env_id, num_envs, threads)
    try:
        env.reset(seed=0)
        # Gymnasium's vector envs have a batched action space, EnvPool's is one env's
        batched = backend != "envpool"
        space = env.action_space
        space.seed(0)
        draw = space.sample if batched else lambda: np.stack([space.sample() for _ in range(num_envs)])
        actions = [draw() for _ in range(256)]  # drawn before the clock
        for i in range(50):  # warm-up: worker start, first resets, caches
            env.step(actions[i % len(actions)])
        rates = []
        for _ in range(repeats):
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                env.step(actions[calls % len(actions)])
                calls += 1
            rates.append(calls * num_envs / (time.perf_counter() - start))
        return statistics.median(rates)
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "LunarLanderContinuous-v3"])
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--seconds", type=float, default=2.0, help="wall-clock per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="EnvPool's C++ threads (at most N)")
    args = parser.parse_args()
    for line in machine_info(sys.argv, threads=1, device="cpu"):
        print(f"- {line}")
    if "envpool" in args.backends:
        try:
            import envpool

            print(f"- envpool {envpool.__version__}, {args.threads} threads at most")
        except ImportError:
            raise SystemExit(
                "EnvPool is not installed: pip install envpool (or drop it from --backends)"
            ) from None
    print()
    print("| env | N | " + " | ".join(f"{b} (env steps/s)" for b in args.backends) + " | envpool / sync |")
    print("|---|---|" + "---|" * len(args.backends) + "---|")
    for env_id in args.envs:
        for n in args.num_envs:
            rates = {
                b: steps_per_second(b, env_id, n, args.seconds, args.repeats, args.threads)
                for b in args.backends
            }
            ratio = f"{rates['envpool'] / rates['sync']:.2f}" if {"envpool", "sync"} <= set(rates) else "-"
            print(
                f"| {env_id} | {n} | "
                + " | ".join(f"{rates[b]:,.0f}" for b in args.backends)
                + f" | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
