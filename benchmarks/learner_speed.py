"""Training cost per env step: our MPO (and SAC) against Stable-Baselines3's SAC, once learning runs.

For each environment and variant the script trains, in a fresh child process of this one and with
the same torch thread count, ``--warmup`` env steps of random actions (not timed) and then
``--steps`` env steps with learning, and reports the wall-clock of the latter per env step
(collection and learner steps together: what a user's run pays once its warm-up is over). Each
variant runs ``--repeats`` times; the table gives the median and the range, and the ratio of the
median to SB3 SAC's median on the same env. Variants:

- ``sb3-sac``: SB3's SAC at its defaults (256x256, batch 256, one env, one gradient step per env
  step; the zoo's settings for Pendulum-v1 and Hopper-v5 change only the learning rate and warm-up);
- ``sac``, ``mpo``: ours at the dataclass defaults (256x256, one env, one learner step per env step;
  MPO samples 20 actions per state and evaluates the twin critic on each);
- ``mpo-single``: ``mpo`` with ``twin_critic = false``, one critic (the MPO paper's and Acme's);
- ``mpo-recipe``: the env's MPO recipe table, where there is one (``rl_as_inference/recipes``).

Extra variants: ``--variant "NAME=key=value;key=value"`` adds our MPO with those settings.

Run (the numbers in benchmarks/RESULTS.md):

    python benchmarks/learner_speed.py --envs Pendulum-v1 Hopper-v5 --repeats 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import sys
import time

try:  # run as a script from benchmarks/ (as solve.py is), or imported from the repository root
    from solve import machine_info
except ModuleNotFoundError:
    from benchmarks.solve import machine_info

BASE_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "sac": ("sac", []),
    "mpo": ("mpo", []),
    "mpo-single": ("mpo", ["twin_critic=false"]),
}


def _sets_for(env_id: str, sets: list[str], warmup: int, steps: int) -> list[str]:
    # one metric row when learning starts and one at the end: their wall_time difference is timed
    timing = [f"learning_starts={warmup}", f"total_env_steps={warmup + steps}", f"log_every={warmup}"]
    return [f"env={env_id}", *sets, *timing]


def time_ours(job: dict) -> float:
    """Seconds per env step of our ``job['algo']`` over the learning phase (see the module docstring)."""
    import torch

    from rl_as_inference.config import apply_overrides, build_config, parse_assignment
    from rl_as_inference.runs import ALGORITHMS

    torch.set_num_threads(job["threads"])
    config_cls, train = ALGORITHMS[job["algo"]]
    sets = _sets_for(job["env"], job["sets"], job["warmup"], job["steps"]) + [f"seed={job['seed']}"]
    if job["recipe"]:  # the recipe's table under these sets
        config = build_config(config_cls, job["env"], job["algo"], sets=sets)
    else:  # the dataclass defaults under these sets
        values = apply_overrides(config_cls, {}, dict(parse_assignment(s) for s in sets), source="--set")
        config = config_cls(**values)
    rows: list[dict] = []
    train(config, callback=rows.append)
    start = next(r for r in rows if r["env_steps"] >= job["warmup"])
    end = rows[-1]
    return (end["wall_time"] - start["wall_time"]) / (end["env_steps"] - start["env_steps"])


def time_sb3(job: dict) -> float:
    """Seconds per env step of SB3 SAC (its defaults; learning rate 1e-3) over the learning phase."""
    import gymnasium as gym
    import stable_baselines3 as sb3
    import torch

    torch.set_num_threads(job["threads"])
    env = gym.make(job["env"])
    model = sb3.SAC(
        "MlpPolicy", env, learning_rate=1e-3, learning_starts=job["warmup"], seed=job["seed"], verbose=0
    )
    model.learn(job["warmup"])
    begin = time.perf_counter()
    model.learn(job["steps"], reset_num_timesteps=False)
    return (time.perf_counter() - begin) / job["steps"]


def _run(job: dict) -> float:
    return time_sb3(job) if job["algo"] == "sb3-sac" else time_ours(job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1"])
    parser.add_argument("--warmup", type=int, default=1000, help="random env steps before learning (untimed)")
    parser.add_argument("--steps", type=int, default=1000, help="timed env steps with learning")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value;key=value (our MPO)")
    parser.add_argument("--only", nargs="+", help="run only these variants")
    args = parser.parse_args()

    from rl_as_inference.config import load_recipe

    variants = {"sb3-sac": ("sb3-sac", [])} | BASE_VARIANTS
    for spec in args.variant:
        name, _, sets = spec.partition("=")
        variants[name] = ("mpo", [s for s in sets.split(";") if s])
    for line in machine_info(["benchmarks/learner_speed.py", *sys.argv[1:]], args.threads):
        print(f"- {line}")
    print(f"- warm-up {args.warmup} steps, timed {args.steps} steps\n")
    print("| env | variant | ms per env step (median) | range | / SB3 SAC |")
    print("|---|---|---|---|---|")
    context = multiprocessing.get_context("spawn")
    for env_id in args.envs:
        env_variants = dict(variants)
        if "mpo" in load_recipe(env_id):
            env_variants["mpo-recipe"] = ("mpo", [])
        if args.only:
            env_variants = {k: v for k, v in env_variants.items() if k in args.only}
        medians: dict[str, float] = {}
        for name, (algo, sets) in env_variants.items():
            times = []
            for seed in range(args.repeats):
                job = {
                    "env": env_id,
                    "algo": algo,
                    "sets": sets,
                    "recipe": name == "mpo-recipe",
                    "seed": seed,
                }
                job |= {"warmup": args.warmup, "steps": args.steps, "threads": args.threads}
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                    times.append(pool.submit(_run, job).result() * 1000)
            medians[name] = statistics.median(times)
            ratio = medians[name] / medians["sb3-sac"] if "sb3-sac" in medians else float("nan")
            print(
                f"| {env_id} | {name} | {medians[name]:.2f} | {min(times):.2f}-{max(times):.2f} | {ratio:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
