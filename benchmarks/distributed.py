"""Data parallelism on this machine: env steps per second and time to threshold at 1 and K processes.

Each run is a subprocess as a user runs it, `rlai train --env ENV --seed S [--nproc K]` with the
env's default recipe (so K processes split its num_envs and batch sizes, and count every rank's
env steps against the same budget), followed by the run's own 100-episode evaluation of
Gymnasium's env. From the run directory:

- env steps/s: the budget over the training seconds rank 0 measured (`eval.json`'s
  `train_seconds`: the training loop alone, without process start, imports or evaluation);
- seconds to threshold: the `wall_time` of the first metric row whose training-episode mean return
  (stochastic actions, the episodes that ended in that logging interval, averaged over ranks) is
  >= the threshold. This is coarser than solve.py's deterministic evaluations, and is printed to
  compare process counts with each other, not libraries;
- the final 100-episode mean return, to show the K-process run learns as well;
- scaling efficiency: (env steps/s at K) / (K x env steps/s at 1), medians over seeds.

``--fit`` also times `examples/distributed_fit.py` (data-parallel ``rlai.fit`` on Pendulum-v1,
``--fit-episodes`` episodes per step split over the ranks, 64 by default): SVI steps per second at
each process count, which shows from what batch size on a step's compute outweighs its all-reduces.

    python benchmarks/distributed.py --envs CartPole-v1 Pendulum-v1 --nprocs 1 2 --seeds 0 1 2 --fit
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# solve.py lies beside this file; `python -P` (as benchmarks/gpu_checks.sh runs it, so that the
# installed wheel is imported, not a checkout) leaves this folder off sys.path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from solve import THRESHOLDS, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 1800


def train_once(env: str, seed: int, nproc: int, workdir: Path, device: str = "cpu") -> dict:
    """One `rlai train` run; its throughput, time to threshold and final evaluation."""
    out = workdir / f"{env}-k{nproc}-s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "rl_as_inference",
        "train",
        "--env",
        env,
        "--seed",
        str(seed),
        "--device",
        device,
    ]
    cmd += ["--out", str(out), "--no-progress", "--eval-episodes", "100"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "eval.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    threshold = THRESHOLDS[env]
    first = next((r for r in rows if float(r["return"]) >= threshold), None)
    return {
        "env": env,
        "seed": seed,
        "nproc": nproc,
        "env_steps": summary["env_steps"],
        "train_s": summary["train_seconds"],
        "steps_per_s": summary["env_steps"] / summary["train_seconds"],
        "to_threshold_s": float(first["wall_time"]) if first else None,
        "to_threshold_steps": int(first["env_steps"]) if first else None,
        "final": summary["mean_return"],
        "process_s": elapsed,
        "device": device,
    }


def fit_once(nproc: int, steps: int, episodes: int) -> dict:
    """`examples/distributed_fit.py` on ``nproc`` processes, ``episodes`` per step: SVI steps per second."""
    script = str(ROOT / "examples" / "distributed_fit.py")
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd += [script, str(steps), str(episodes)]
    else:
        cmd = [sys.executable, script, str(steps), str(episodes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    match = re.search(r"return (\S+) -> (\S+) in (\S+) s", proc.stdout)
    first, last, seconds = (float(g) for g in match.groups())
    return {
        "nproc": nproc,
        "episodes": episodes,
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "last": last,
    }


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="*", default=["CartPole-v1", "Pendulum-v1"], help="none: --fit alone")
    parser.add_argument("--nprocs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--fit", action="store_true", help="also time examples/distributed_fit.py")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where every rank trains (cuda: NCCL with a GPU per rank, gloo when ranks share a GPU)",
    )
    parser.add_argument("--fit-steps", type=int, default=100)
    parser.add_argument(
        "--fit-episodes",
        nargs="+",
        type=int,
        default=[64],
        help="episodes per SVI step (split over the processes): the larger, the more each step computes",
    )
    parser.add_argument("--json", help="also write every run's figures")
    args = parser.parse_args()
    for line in machine_info(sys.argv, threads=1, device=args.device):
        print(f"- {line}")
    results, fits = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for env in args.envs:
            for seed in args.seeds:
                for nproc in args.nprocs:  # interleaved, so drifting machine load hits all counts
                    r = train_once(env, seed, nproc, Path(tmp), args.device)
                    results.append(r)
                    print(
                        f"  [{env} seed {seed} K={nproc}] {r['steps_per_s']:.0f} env steps/s, threshold at "
                        f"{_fmt(r['to_threshold_s'], '.1f')} s, final {r['final']:.1f}",
                        flush=True,
                    )
    if args.fit:
        for episodes in args.fit_episodes:
            for nproc in args.nprocs:
                fits.append(fit_once(nproc, args.fit_steps, episodes))
    if results:
        print()
        print(
            "| env | processes | seed | env steps | train s | env steps/s | s to threshold (training returns) "
            "| final mean (100 episodes) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r['env']} | {r['nproc']} | {r['seed']} | {r['env_steps']:,} | {r['train_s']:.1f} | "
                f"{r['steps_per_s']:.0f} | {_fmt(r['to_threshold_s'], '.1f')} | {r['final']:.1f} |"
            )
        print()
        print("| env | processes | median env steps/s | scaling efficiency | median s to threshold |")
        print("|---|---|---|---|---|")
        for env in args.envs:
            base = (
                statistics.median(r["steps_per_s"] for r in results if r["env"] == env and r["nproc"] == 1)
                if 1 in args.nprocs
                else None
            )
            for nproc in args.nprocs:
                mine = [r for r in results if r["env"] == env and r["nproc"] == nproc]
                sps = statistics.median(r["steps_per_s"] for r in mine)
                times = [r["to_threshold_s"] for r in mine if r["to_threshold_s"] is not None]
                eff = sps / (nproc * base) if base else None
                print(
                    f"| {env} | {nproc} | {sps:.0f} | {_fmt(eff, '.2f')} | "
                    f"{_fmt(statistics.median(times) if times else None, '.1f')} ({len(times)}/{len(mine)} reached) |"
                )
    if fits:
        print()
        print(
            "| examples/distributed_fit.py | processes | SVI steps | seconds | steps/s | speed-up over 1 process "
            "| last 10-step mean return |"
        )
        print("|---|---|---|---|---|---|---|")
        for f in fits:
            one = next((g for g in fits if g["episodes"] == f["episodes"] and g["nproc"] == 1), None)
            speedup = f["steps_per_s"] / one["steps_per_s"] if one else None
            print(
                f"| Pendulum-v1, {f['episodes']} episodes per step | {f['nproc']} | {f['steps']} | "
                f"{f['seconds']:.1f} | {f['steps_per_s']:.2f} | {_fmt(speedup, '.2f')} | {f['last']:.1f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"train": results, "fit": fits}, indent=2))


if __name__ == "__main__":
    main()
