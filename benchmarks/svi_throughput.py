"""Env-steps per second of gradient-carrying SVI steps on Pendulum-v1.

One SVI step = roll out N episodes of T steps from a 64x64 TanhGaussianMLP guide, evaluate the
maximum-entropy ELBO (the source's eq. 10) with pathwise gradients, back-propagate, take an Adam step.
Compared on the same batch, in the same process:

- ``hand``: a hand-written torch loss of the same objective (no Pyro): the floor to beat;
- ``trajectory_elbo``: ``rlai.TrajectoryELBO()`` through ``pyro.infer.SVI`` (fused evaluation);
- ``trajectory_elbo_traced``: the same loss forced to trace the guide and replay the model;
- ``trace_elbo``: Pyro's ``Trace_ELBO`` on the same model and guide.

Targets: TrajectoryELBO <= 1.25x the hand-written loss's time; >= 1e8 env-steps/s on one H100 at
N = 65,536. Run:

    python benchmarks/svi_throughput.py --device cpu --sizes 256,4096 --markdown
    python benchmarks/svi_throughput.py --device cuda --sizes 256,4096,65536 --markdown
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import time

import pyro
import torch

import rl_as_inference as rlai
from rl_as_inference import envs, guides, models

MODES = ("hand", "trajectory_elbo", "trajectory_elbo_traced", "trace_elbo")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(mode: str, n: int, horizon: int, device: torch.device, seed: int):
    """A zero-argument callable doing one full SVI step of ``mode``."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    env = envs.make("Pendulum-v1", device=device)
    policy = guides.TanhGaussianMLP(env.observation_space, env.action_space, hidden=(64, 64)).to(device)
    if mode == "hand":
        optim = torch.optim.Adam(policy.parameters(), lr=1e-3)
        log_volume = math.log(4.0)  # uniform prior on [-2, 2]: log pi = -log 4

        def step():
            state = env.reset(n)
            total = torch.zeros(n, device=device)
            for _ in range(horizon):
                d = policy(env.observe(state))
                action = d.rsample()
                out = env.step(state, action)
                total = total + out.reward - (d.log_prob(action) + log_volume)
                state = out.state
            loss = -total.mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            return loss.item()

        return step
    model = models.TrajectoryModel(env, models.UniformPrior(env.action_space), horizon=horizon)
    guide = guides.PolicyGuide(env, policy, horizon=horizon)
    loss = {
        "trajectory_elbo": rlai.TrajectoryELBO(),
        "trajectory_elbo_traced": rlai.TrajectoryELBO(fused=False),
        "trace_elbo": pyro.infer.Trace_ELBO(),
    }[mode]
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=loss)
    return lambda: svi.step(n)


def measure(mode: str, n: int, horizon: int, device: torch.device, repeats: int, seed: int) -> list[float]:
    step = make_step(mode, n, horizon, device, seed)
    step()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--sizes", default="256,4096", help="comma-separated numbers of episodes N")
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="timed SVI steps per cell (median reported)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    device = envs.base.resolve_device(args.device)
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)  # as users training for speed would; validation costs ~15% per step
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    sizes = [int(s) for s in args.sizes.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# SVI throughput: Pendulum-v1, T={args.horizon}, 64x64 TanhGaussianMLP guide, float32")
    print(
        f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, device {device} ({name}), "
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}"
    )
    rows = []
    for n in sizes:
        base = None
        for mode in modes:
            times = measure(mode, n, args.horizon, device, args.repeats, args.seed)
            med = statistics.median(times)
            if mode == "hand":
                base = med
            ratio = f"{med / base:.2f}x" if base else "-"
            rows.append((n, mode, med, min(times), max(times), n * args.horizon / med, ratio))
    header = ("N", "mode", "median s/step", "min", "max", "env-steps/s", "time vs hand")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for n, mode, med, lo, hi, rate, ratio in rows:
            print(f"| {n} | {mode} | {med:.4f} | {lo:.4f} | {hi:.4f} | {rate:.3g} | {ratio} |")
    else:
        print(f"{'N':>7} {'mode':<24}{'median s':>10}{'min':>9}{'max':>9}{'steps/s':>11}{'vs hand':>9}")
        for n, mode, med, lo, hi, rate, ratio in rows:
            print(f"{n:>7} {mode:<24}{med:>10.4f}{lo:>9.4f}{hi:>9.4f}{rate:>11.3g}{ratio:>9}")


if __name__ == "__main__":
    main()
