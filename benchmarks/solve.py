"""Time to solve: our default recipes against Stable-Baselines3's zoo settings.

For every environment and seed this script trains, one run at a time and each in a fresh child
process of this one (the same machine, the same process tree, the same torch thread count):

- ``ours``: the environment's default recipe (``rl_as_inference/recipes/<env>.toml``, its
  ``default_algo``; ``--algo`` and ``--set key=value`` override it; an environment with neither a
  recipe nor ``--algo`` runs SB3 only), through the algorithm's own ``train`` function;
- ``sb3``: Stable-Baselines3 with the rl-baselines3-zoo hyperparameters of that environment
  (:data:`ZOO`, copied from the zoo's ``hyperparams/*.yml``; SB3 is an optional benchmark
  dependency, ``pip install -e .[bench]``, never a runtime one);
- ``rejax`` (with ``--rejax``, CartPole-v1 and Pendulum-v1 only): rejax's PPO and SAC with rejax's
  own published settings, its whole training loop compiled by JAX, compiled ahead of time before
  the clock starts and the compilation reported apart (``benchmarks/rejax_baseline.py``).

Evaluation protocol (identical for both libraries):

- Gymnasium's own environment, ``gymnasium.make(env_id)`` (its TimeLimit included), never the
  training envs or our torch ports;
- deterministic actions (our policies' ``mode``; SB3's ``predict(deterministic=True)``, with the
  observation normalized by the frozen VecNormalize statistics where the zoo normalizes);
- episode i reset with seed ``10_000 + i``; the score is the mean undiscounted return;
- during training, every ``--eval-every`` env steps (counted over all parallel envs, checked at the
  top of our loops and after every vectorized step of SB3), ``--eval-episodes`` (default 20)
  episodes; training stops at the first evaluation whose mean reaches the threshold
  (:data:`THRESHOLDS`) unless ``--full`` is given; with ``--confirm-episodes N`` such an evaluation
  is extended to N episodes (the same seeds extended) and stops training only if their mean
  reaches the threshold too (a cheaper way to the N-episode criterion than ``--eval-episodes N``
  at every evaluation: the first evaluation meeting both); if the budget runs out, one last
  evaluation is made at the final step count;
- then the final policy is confirmed on ``--final-episodes`` (default 100) episodes, the same
  seeds extended (so the first 20 are the detection episodes).

"Wall-clock to threshold" runs from just before the learner is built (our ``train`` call, which
builds the collector and networks; SB3's ``make_vec_env`` and model constructor) to the evaluation
that reached the threshold, minus the time spent in every evaluation (measured around each one).
Imports and the child process's start are excluded for both (``torch._dynamo`` included, which
torch.optim would otherwise import inside the clock at the first optimizer constructor, ~1 s).
"Env steps to threshold" is the env step count at that evaluation, so its resolution is
``--eval-every`` (and, for batched learners, their collection batch). Budgets: our recipe's ``total_env_steps`` and the zoo's ``n_timesteps``,
each times ``--budget-scale`` (a changed budget also stretches any schedule tied to it, e.g. SB3's
``lin_`` learning rates or our temperature annealing). Ratios are ours / SB3 (below 1: ours is
faster); if only SB3 reached the threshold the ratio is infinite, if SB3 did not there is none. The
median and the worst (largest) ratio over seeds are printed per environment. ``--budget N`` gives
both libraries exactly N env steps (with ``--full``: a comparison at a fixed budget, as for
Hopper-v5 at 100k steps). Where the zoo has settings of a second algorithm for a task
(:data:`ZOO_ALTERNATIVES`), ``--sb3-algo ENV=ALGO`` runs SB3 with those instead.

``--device cuda`` (or ``auto``: CUDA when torch sees it) trains both libraries there (ours through
the config's ``device``, SB3 through its ``device`` argument; ``--set device=...`` still overrides
ours alone). CUDA's context is created before either clock starts (like the imports); the clock
synchronizes CUDA before every reading, so queued training work is never timed as evaluation; our
evaluation runs a CPU copy of the policy, as Gymnasium steps on the CPU.

Run (the numbers in benchmarks/RESULTS.md):

    python benchmarks/solve.py --envs Pendulum-v1 CartPole-v1 --seeds 0 --threads 1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

EVAL_SEED = 10_000

# Mean return over evaluation episodes of Gymnasium's own environment that counts as solved.
THRESHOLDS: dict[str, float] = {
    "Pendulum-v1": -200.0,
    "CartPole-v1": 475.0,
    "MountainCarContinuous-v0": 90.0,
    "Acrobot-v1": -100.0,
    "MountainCar-v0": -110.0,
    # Box2D and MuJoCo: Gymnasium's reward_threshold where it has one
    "LunarLander-v3": 200.0,
    "LunarLanderContinuous-v3": 200.0,
    "InvertedPendulum-v5": 950.0,
    "InvertedDoublePendulum-v5": 9000.0,
    # Hopper is compared at a fixed budget (--budget 100000 --full), not by time to a threshold
    "Hopper-v5": 3800.0,
    # a cheap MuJoCo task with 2-D actions, where per-dimension KL bounds can differ from joint ones
    "Reacher-v5": -3.75,
}

# Env steps between evaluations during training, per environment (overridden by --eval-every).
EVAL_EVERY: dict[str, int] = {
    "Pendulum-v1": 1_000,
    "CartPole-v1": 2_000,
    "MountainCarContinuous-v0": 2_000,
    "Acrobot-v1": 5_000,
    "MountainCar-v0": 5_000,
    "LunarLander-v3": 10_000,
    "LunarLanderContinuous-v3": 10_000,
    "InvertedPendulum-v5": 1_000,
    "InvertedDoublePendulum-v5": 5_000,
    "Hopper-v5": 10_000,
    "Reacher-v5": 5_000,
}

# rl-baselines3-zoo settings (github.com/DLR-RM/rl-baselines3-zoo, hyperparams/sac.yml at c94924e,
# ppo.yml at 208b6fd, dqn.yml at ce95481). Keys as in the zoo's YAML: n_timesteps, n_envs and
# normalize are the zoo's own; everything else goes to the SB3 constructor (``lin_X``: a linear
# schedule from X to 0; policy_kwargs are written out as dicts). SB3 defaults fill the rest.
ZOO: dict[str, dict[str, Any]] = {
    # sac.yml, Pendulum-v1: n_timesteps 20000, policy MlpPolicy, learning_rate 1e-3
    # (SB3's SAC defaults: 256x256, batch 256, tau 0.005, gamma 0.99, ent_coef auto, learning_starts 100).
    "Pendulum-v1": {"algo": "SAC", "n_timesteps": 20_000, "learning_rate": 1e-3},
    # ppo.yml, CartPole-v1 (tuned).
    "CartPole-v1": {
        "algo": "PPO",
        "n_timesteps": 100_000,
        "n_envs": 8,
        "n_steps": 32,
        "batch_size": 256,
        "gae_lambda": 0.8,
        "gamma": 0.98,
        "n_epochs": 20,
        "ent_coef": 0.0,
        "learning_rate": "lin_0.001",
        "clip_range": "lin_0.2",
    },
    # sac.yml, MountainCarContinuous-v0 (tuned).
    "MountainCarContinuous-v0": {
        "algo": "SAC",
        "n_timesteps": 50_000,
        "learning_rate": 3e-4,
        "buffer_size": 50_000,
        "batch_size": 512,
        "ent_coef": 0.1,
        "train_freq": 32,
        "gradient_steps": 32,
        "gamma": 0.9999,
        "tau": 0.01,
        "learning_starts": 0,
        "use_sde": True,
        "policy_kwargs": {"log_std_init": -3.67, "net_arch": [64, 64]},
    },
    # ppo.yml, Acrobot-v1.
    "Acrobot-v1": {
        "algo": "PPO",
        "n_timesteps": 1_000_000,
        "normalize": True,
        "n_envs": 16,
        "n_steps": 256,
        "gae_lambda": 0.94,
        "gamma": 0.99,
        "n_epochs": 4,
        "ent_coef": 0.0,
    },
    # dqn.yml, MountainCar-v0 (tuned).
    "MountainCar-v0": {
        "algo": "DQN",
        "n_timesteps": 120_000,
        "learning_rate": 4e-3,
        "batch_size": 128,
        "buffer_size": 10_000,
        "learning_starts": 1_000,
        "gamma": 0.98,
        "target_update_interval": 600,
        "train_freq": 16,
        "gradient_steps": 8,
        "exploration_fraction": 0.2,
        "exploration_final_eps": 0.07,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
    # ppo.yml, LunarLander-v2 (the same task as v3, whose Box2D fixes changed no dynamics here).
    "LunarLander-v3": {
        "algo": "PPO",
        "n_timesteps": 1_000_000,
        "n_envs": 16,
        "n_steps": 1024,
        "batch_size": 64,
        "gae_lambda": 0.98,
        "gamma": 0.999,
        "n_epochs": 4,
        "ent_coef": 0.01,
    },
    # sac.yml, LunarLanderContinuous-v2.
    "LunarLanderContinuous-v3": {
        "algo": "SAC",
        "n_timesteps": 500_000,
        "batch_size": 256,
        "learning_rate": "lin_7.3e-4",
        "buffer_size": 1_000_000,
        "gamma": 0.99,
        "tau": 0.01,
        "learning_starts": 10_000,
        "policy_kwargs": {"net_arch": [400, 300]},
    },
    # ppo.yml, InvertedPendulum-v2 (tuned; written for v2, the same task as v5).
    "InvertedPendulum-v5": {
        "algo": "PPO",
        "n_timesteps": 1_000_000,
        "normalize": True,
        "n_envs": 1,
        "batch_size": 64,
        "n_steps": 32,
        "gamma": 0.999,
        "learning_rate": 0.000222425,
        "ent_coef": 1.37976e-07,
        "clip_range": 0.4,
        "n_epochs": 5,
        "gae_lambda": 0.9,
        "max_grad_norm": 0.3,
        "vf_coef": 0.19816,
    },
    # ppo.yml, InvertedDoublePendulum-v2 (tuned).
    "InvertedDoublePendulum-v5": {
        "algo": "PPO",
        "n_timesteps": 1_000_000,
        "normalize": True,
        "n_envs": 1,
        "batch_size": 512,
        "n_steps": 128,
        "gamma": 0.98,
        "learning_rate": 0.000155454,
        "ent_coef": 1.05057e-06,
        "clip_range": 0.4,
        "n_epochs": 10,
        "gae_lambda": 0.8,
        "max_grad_norm": 0.5,
        "vf_coef": 0.695929,
    },
    # sac.yml, "mujoco-defaults" (HalfCheetah-v3, Hopper-v3, ...): SB3's SAC defaults otherwise.
    "Hopper-v5": {"algo": "SAC", "n_timesteps": 1_000_000, "learning_starts": 10_000},
}
# The zoo's other algorithm where it has one for the task: --sb3-algo ENV=ALGO picks it.
MUJOCO_SAC = {"algo": "SAC", "n_timesteps": 1_000_000, "learning_starts": 10_000}  # sac.yml mujoco-defaults
ZOO_ALTERNATIVES: dict[str, dict[str, dict[str, Any]]] = {
    "InvertedPendulum-v5": {"SAC": MUJOCO_SAC},
    "InvertedDoublePendulum-v5": {"SAC": MUJOCO_SAC},
    # dqn.yml, LunarLander-v2 (tuned)
    "LunarLander-v3": {
        "DQN": {
            "algo": "DQN",
            "n_timesteps": 100_000,
            "learning_rate": 6.3e-4,
            "batch_size": 128,
            "buffer_size": 50_000,
            "learning_starts": 0,
            "gamma": 0.99,
            "target_update_interval": 250,
            "train_freq": 4,
            "gradient_steps": -1,
            "exploration_fraction": 0.12,
            "exploration_final_eps": 0.1,
            "policy_kwargs": {"net_arch": [256, 256]},
        }
    },
}


def zoo_entry(env_id: str, algo: str | None) -> dict[str, Any]:
    """The zoo settings SB3 runs with on ``env_id``: :data:`ZOO`'s, or the ``algo`` alternative."""
    if algo is None or algo == ZOO[env_id]["algo"]:
        return ZOO[env_id]
    options = ZOO_ALTERNATIVES.get(env_id, {})
    if algo not in options:
        raise ValueError(f"no zoo {algo} settings for {env_id}; have {[ZOO[env_id]['algo'], *options]}")
    return options[algo]


@dataclasses.dataclass
class RunResult:
    """One training run of one library on one (env, seed)."""

    library: str
    env: str
    seed: int
    algo: str
    budget: int
    threshold: float
    solved: bool = False
    steps_to_threshold: int | None = None
    seconds_to_threshold: float | None = None
    final_env_steps: int = 0
    train_seconds: float = 0.0  # training wall-clock of the whole run, evaluations excluded
    eval_seconds: float = 0.0
    final_mean: float = float("nan")
    final_std: float = float("nan")
    final_episodes: int = 0
    evals: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)
    error: str | None = None


def evaluate_returns(
    act: Callable[[np.ndarray], Any], env_id: str, episodes: int, seed: int = EVAL_SEED
) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes of ``gymnasium.make(env_id)``, episode i reset
    with ``seed + i``, actions from ``act(obs)``."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


class _Solved(Exception):
    """Raised from the evaluation hook to stop a run at the threshold."""


class Tracker:
    """Evaluations every ``every`` env steps, with their time kept out of the training clock."""

    def __init__(
        self,
        result: RunResult,
        every: int,
        episodes: int,
        stop_at_threshold: bool,
        device: str = "cpu",
        confirm_episodes: int = 0,
    ):
        self.result, self.every, self.episodes = result, every, episodes
        self.confirm_episodes = confirm_episodes
        self.stop_at_threshold = stop_at_threshold
        self.cuda = device.startswith("cuda")
        self.next_eval = every
        self.last_eval_steps = -1
        self.start = time.perf_counter()

    @classmethod
    def for_job(cls, result: RunResult, job: dict, device: str) -> Tracker:
        """The tracker of one job of :func:`main` (its evaluation settings)."""
        return cls(
            result,
            job["eval_every"],
            job["eval_episodes"],
            not job["full"],
            device,
            job.get("confirm_episodes", 0),
        )

    def restart_clock(self) -> None:
        """Start the training clock (just before the learner is built)."""
        self.start = time.perf_counter()

    def train_seconds(self) -> float:
        """Wall-clock since :meth:`restart_clock`, evaluations excluded."""
        if self.cuda:
            # CUDA kernels run asynchronously: without this, training work still queued would be
            # finished, and timed, inside the evaluation that follows.
            import torch

            torch.cuda.synchronize()
        return time.perf_counter() - self.start - self.result.eval_seconds

    def due(self, env_steps: int) -> bool:
        return env_steps >= self.next_eval

    def evaluate(self, env_steps: int, act: Callable[[np.ndarray], Any]) -> bool:
        """Evaluate now; True if the run should stop (threshold reached and not ``--full``)."""
        r = self.result
        train_s = self.train_seconds()
        t0 = time.perf_counter()
        returns = evaluate_returns(act, r.env, self.episodes)
        mean = float(np.mean(returns))
        if mean >= r.threshold and self.confirm_episodes > len(returns):
            # the screen passed: the same seeds extended decide (a policy lucky on the first
            # episodes does not count as solved, and training goes on)
            more = evaluate_returns(
                act, r.env, self.confirm_episodes - len(returns), seed=EVAL_SEED + len(returns)
            )
            mean = float(np.mean(returns + more))
        r.eval_seconds += time.perf_counter() - t0
        r.evals.append((env_steps, train_s, mean))
        # progress of long runs, as it happens (the child shares the parent's stderr)
        print(
            f"  [{r.library} {r.env} seed {r.seed}] {env_steps:,} steps, {train_s:.1f} s: {mean:.1f}",
            file=sys.stderr,
            flush=True,
        )
        self.last_eval_steps = env_steps
        self.next_eval = (env_steps // self.every + 1) * self.every
        if mean >= r.threshold and not r.solved:
            r.solved, r.steps_to_threshold, r.seconds_to_threshold = True, env_steps, train_s
        return r.solved and self.stop_at_threshold

    def finish(self, env_steps: int, act: Callable[[np.ndarray], Any]) -> None:
        """The end of training: total time, and a last threshold check at the final step count."""
        self.result.train_seconds = self.train_seconds()
        self.result.final_env_steps = env_steps
        if not self.result.solved and self.last_eval_steps != env_steps:
            self.evaluate(env_steps, act)


# ---------------------------------------------------------------------------------------------- ours
def _resolve_algorithm(name: str):
    """(ConfigClass, train) of our algorithm ``name`` (``rl_as_inference.runs.ALGORITHMS``)."""
    from rl_as_inference.runs import ALGORITHMS

    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def our_algo(env_id: str, override: dict[str, str]) -> str | None:
    """Our algorithm for ``env_id``: ``--algo``, else the recipe's ``default_algo`` (None: no recipe)."""
    from rl_as_inference.config import load_recipe

    if env_id in override or "*" in override:
        return override.get(env_id, override.get("*"))
    return load_recipe(env_id).get("default_algo")


def run_ours(job: dict) -> RunResult:
    """Train our recipe for one (env, seed), evaluating during training (see the module docstring)."""
    import torch

    from rl_as_inference.config import build_config
    from rl_as_inference.envs.base import resolve_device
    from rl_as_inference.resume import Checkpointer
    from rl_as_inference.runs import LoadedPolicy

    env_id, seed, algo = job["env"], job["seed"], job["algo"]
    config_cls, train = _resolve_algorithm(algo)
    sets = [f"env={env_id}", f"seed={seed}", f"device={job['device']}", *job["sets"]]
    config = build_config(config_cls, env_id, algo, sets=sets)
    budget = job["budget"] or int(round(config.total_env_steps * job["budget_scale"]))
    config = dataclasses.replace(config, total_env_steps=budget)
    result = RunResult("ours", env_id, seed, algo, budget, THRESHOLDS[env_id])
    device = resolve_device(config.device).type  # --set device=auto is resolved here too
    tracker = Tracker.for_job(result, job, device)

    def actor(module: torch.nn.Module) -> Callable[[np.ndarray], Any]:
        if next(module.parameters()).device.type != "cpu":
            # Gymnasium steps one env on the CPU: a CPU copy spares a device round trip per step
            module = copy.deepcopy(module).cpu()
        loaded = LoadedPolicy(module, env_id, torch.device("cpu"))  # sets eval mode: restored below
        return loaded.act

    class EvalHook(Checkpointer):
        """A checkpointer that never writes but evaluates the live policy every ``eval_every`` steps."""

        def __init__(self) -> None:
            super().__init__(None)
            self.env_steps = 0

        def maybe_save(self, env_steps: int, wall_time: float) -> None:
            super().maybe_save(env_steps, wall_time)
            self.env_steps = env_steps
            if tracker.due(env_steps):
                policy = self.components["policy"]
                training = policy.training
                stop = tracker.evaluate(env_steps, actor(policy))
                policy.train(training)
                if stop:
                    raise _Solved

    hook = EvalHook()
    tracker.restart_clock()
    try:
        out = train(config, callback=None, checkpointer=hook)
        env_steps = out.env_steps
    except _Solved:
        env_steps = hook.env_steps
    policy = hook.components["policy"]
    tracker.finish(env_steps, actor(policy))
    confirm_final(result, actor(policy), job["final_episodes"])
    return result


# ----------------------------------------------------------------------------------------------- sb3
def _linear(initial: float) -> Callable[[float], float]:
    """The zoo's ``lin_X`` schedule: X times the remaining progress (1 -> 0)."""
    return lambda progress_remaining: progress_remaining * initial


def sb3_kwargs(zoo: dict[str, Any]) -> dict[str, Any]:
    """Constructor keyword arguments of the SB3 algorithm from a :data:`ZOO` entry."""
    kwargs = {}
    for key, value in zoo.items():
        if key in ("algo", "n_timesteps", "n_envs", "normalize"):
            continue
        if isinstance(value, str) and value.startswith("lin_"):
            value = _linear(float(value.removeprefix("lin_")))
        kwargs[key] = value
    return kwargs


def run_sb3(job: dict) -> RunResult:
    """Train SB3 with the zoo settings for one (env, seed), with the same evaluation protocol."""
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env_id, seed = job["env"], job["seed"]
    zoo = zoo_entry(env_id, job.get("sb3_algo"))
    budget = job["budget"] or int(round(zoo["n_timesteps"] * job["budget_scale"]))
    result = RunResult("sb3", env_id, seed, zoo["algo"], budget, THRESHOLDS[env_id])
    tracker = Tracker.for_job(result, job, job["device"])
    holder: dict[str, Any] = {}

    def act(obs: np.ndarray) -> Any:
        model, venv = holder["model"], holder["venv"]
        if isinstance(venv, VecNormalize):  # the zoo evaluates with the frozen training statistics
            obs = venv.normalize_obs(obs)
        action, _ = model.predict(obs, deterministic=True)
        return action

    class EvalCallback(BaseCallback):
        """Evaluates every ``eval_every`` env steps; returning False stops ``learn``."""

        def _on_step(self) -> bool:
            if tracker.due(self.num_timesteps):
                return not tracker.evaluate(self.num_timesteps, act)
            return True

    tracker.restart_clock()
    venv = make_vec_env(env_id, n_envs=zoo.get("n_envs", 1), seed=seed)
    if zoo.get("normalize"):
        extra = {"gamma": zoo["gamma"]} if "gamma" in zoo else {}  # the zoo uses the algorithm's gamma
        venv = VecNormalize(venv, **extra)
    model = getattr(sb3, zoo["algo"])(
        "MlpPolicy", venv, seed=seed, device=job["device"], verbose=0, **sb3_kwargs(zoo)
    )
    holder.update(model=model, venv=venv)
    model.learn(total_timesteps=budget, callback=EvalCallback())
    tracker.finish(model.num_timesteps, act)
    confirm_final(result, act, job["final_episodes"])
    venv.close()
    return result


def confirm_final(result: RunResult, act: Callable[[np.ndarray], Any], episodes: int) -> None:
    """Score the stopped policy on ``episodes`` evaluation episodes into ``result.final_*`` (0: skip)."""
    if episodes > 0:
        returns = evaluate_returns(act, result.env, episodes)
        result.final_mean, result.final_std = float(np.mean(returns)), float(np.std(returns))
        result.final_episodes = len(returns)


def run_job(job: dict) -> RunResult:
    """Entry point of a child process: one training run with ``job["threads"]`` torch threads."""
    import torch

    torch.set_num_threads(job["threads"])
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(job["threads"])
    # torch.optim imports torch._dynamo lazily, at the first optimizer either library builds (about
    # 1 s on these machines): an import, so it is done here, before either clock starts.
    import torch._dynamo  # noqa: F401

    if job["device"] == "cuda":  # likewise CUDA's context and cuBLAS handle (start-up, not training)
        torch.ones(2, 2, device="cuda").matmul(torch.ones(2, 2, device="cuda"))
        torch.cuda.synchronize()

    if job["library"] == "rejax":  # JAX, not torch: its own runner (benchmarks/rejax_baseline.py)
        from rejax_baseline import run_rejax_job

        return run_rejax_job(job)
    try:
        return run_ours(job) if job["library"] == "ours" else run_sb3(job)
    except Exception as exc:  # a failed run is reported in the table, not fatal to the others
        algo = job.get("algo") or job.get("sb3_algo") or ZOO[job["env"]]["algo"]
        return RunResult(
            job["library"], job["env"], job["seed"], algo, 0, THRESHOLDS[job["env"]], error=repr(exc)
        )


# ------------------------------------------------------------------------------------------- reports
def machine_info(argv: list[str], threads: int, device: str = "cpu") -> list[str]:
    """Lines describing the machine, the versions and the command."""
    import gymnasium
    import torch

    try:
        import stable_baselines3

        sb3_version = stable_baselines3.__version__
    except ImportError:
        sb3_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        git = "?"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    return [
        f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"command: {' '.join(argv)}",
        f"cpu: {cpu} ({os.cpu_count()} logical CPUs, {len(os.sched_getaffinity(0))} available)",
        f"python {platform.python_version()}, torch {torch.__version__}, gymnasium {gymnasium.__version__}, "
        f"numpy {np.__version__}, stable-baselines3 {sb3_version}",
        f"torch threads per run: {threads}; git: {git}",
        f"device: {torch.cuda.get_device_name(device) if device.startswith('cuda') else device}",
        f"load average at start: {[round(x, 2) for x in load]}",
    ]


def _fmt(x: float | int | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _ratio_tables(by_key: dict[tuple[str, int], dict[str, RunResult]], base: str, label: str) -> list[str]:
    """Ratio rows ours / ``base`` per (env, seed) where both ran, then their median and worst per env."""
    pairs = {k: v for k, v in by_key.items() if "ours" in v and base in v}
    if not pairs:
        return []
    lines = ["", f"| env | seed | steps ours/{label} | wall-clock ours/{label} |", "|---|---|---|---|"]
    per_env: dict[str, list[tuple[float | None, float | None]]] = {}
    for (env, seed), v in pairs.items():
        o, s = v["ours"], v[base]
        steps = _ratio(o.steps_to_threshold, s.steps_to_threshold)
        wall = _ratio(o.seconds_to_threshold, s.seconds_to_threshold)
        if not o.solved and s.solved:
            steps = wall = float("inf")  # ours never reached it: the worst possible ratio
        per_env.setdefault(env, []).append((steps, wall))
        lines.append(f"| {env} | {seed} | {_fmt(steps, '.2f')} | {_fmt(wall, '.2f')} |")
    lines += [
        "",
        f"| env | seeds | median steps ratio ours/{label} | worst steps ratio | median wall ratio | worst wall ratio |",
        "|---|---|---|---|---|---|",
    ]
    for env, rows in per_env.items():
        cells = []
        for i in (0, 1):
            vals = [row[i] for row in rows if row[i] is not None]
            cells += [_fmt(statistics.median(vals), ".2f"), _fmt(max(vals), ".2f")] if vals else ["-", "-"]
        lines.append(f"| {env} | {len(rows)} | {' | '.join(cells)} |")
    return lines


def tables(results: list[RunResult]) -> str:
    """Markdown: one row per run, ratio rows per (env, seed), and median/worst ratios per env."""
    lines = [
        "| env | seed | library | algorithm | budget | env steps to threshold | wall-clock to threshold (s) "
        "| evals | final env steps | train s (whole run) | final mean (std, episodes) | final >= threshold |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(
                f"| {r.env} | {r.seed} | {r.library} | {r.algo} | - | error: {r.error} |" + " - |" * 5
            )
            continue
        final = f"{_fmt(r.final_mean, '.1f')} ({_fmt(r.final_std, '.1f')}, {r.final_episodes})"
        lines.append(
            f"| {r.env} | {r.seed} | {r.library} | {r.algo} | {r.budget:,} | "
            f"{_fmt(r.steps_to_threshold, ',') if r.solved else 'not reached'} | "
            f"{_fmt(r.seconds_to_threshold, '.1f') if r.solved else '-'} | {len(r.evals)} | "
            f"{r.final_env_steps:,} | {r.train_seconds:.1f} | {final} | "
            f"{'-' if np.isnan(r.final_mean) else ('yes' if r.final_mean >= r.threshold else 'no')} |"
        )
    by_key: dict[tuple[str, int], dict[str, RunResult]] = {}
    for r in results:
        by_key.setdefault((r.env, r.seed), {})[r.library] = r
    for base, label in (("sb3", "SB3"), ("rejax", "rejax")):
        lines += _ratio_tables(by_key, base, label)
    return "\n".join(lines)


def _parse_algo(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        env, sep, algo = item.rpartition("=")
        out[env if sep else "*"] = algo
    return out


def die_with_parent() -> None:
    """In a worker (Linux): be sent SIGTERM when the process that started it dies.

    Without it, a benchmark stopped by a signal leaves its worker training for minutes, loading the
    machine under whatever is measured next. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    """Command line (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--envs",
        nargs="+",
        default=list(THRESHOLDS),
        choices=list(THRESHOLDS),
        metavar="ENV",
        help=", ".join(THRESHOLDS),
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--eval-every", type=int, default=None, help="env steps (default: per env)")
    parser.add_argument("--eval-episodes", type=int, default=20, help="episodes per evaluation in training")
    parser.add_argument(
        "--final-episodes", type=int, default=100, help="episodes confirming the final policy"
    )
    parser.add_argument(
        "--confirm-episodes",
        type=int,
        default=0,
        help="an evaluation that reaches the threshold is extended to this many episodes, which "
        "decide (0: the --eval-episodes alone decide)",
    )
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies both max budgets")
    parser.add_argument(
        "--budget", type=int, default=None, help="env steps of both libraries (replaces their budgets)"
    )
    parser.add_argument(
        "--sb3-algo",
        action="append",
        default=[],
        help="ENV=ALGO: the zoo's other algorithm for ENV (ZOO_ALTERNATIVES); repeatable",
    )
    parser.add_argument("--full", action="store_true", help="train the whole budget, not to the threshold")
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument("--sb3-only", action="store_true")
    parser.add_argument(
        "--algo", action="append", default=[], help="our algorithm: NAME (all envs) or ENV=NAME; repeatable"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        help="key=value for our config (every env); repeatable",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="where both libraries train (auto: CUDA when present); evaluation steps Gymnasium on the CPU",
    )
    parser.add_argument(
        "--rejax",
        action="store_true",
        help="also run rejax (JAX) where benchmarks/rejax_baseline.py has its settings "
        "(CartPole-v1 PPO, Pendulum-v1 SAC); compilation is reported apart from the clock",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write all results (and eval curves)")
    args = parser.parse_args(argv)
    if args.ours_only and args.sb3_only:
        parser.error("--ours-only and --sb3-only exclude each other")
    for text in args.sets:
        if text.partition("=")[0].strip().partition(".")[0] == "env_kwargs":
            # the thresholds, SB3's envs and the evaluation are the registered env's
            parser.error(
                f"--set {text}: the libraries are compared on each id's registered env (its threshold "
                "and SB3's env are that env's); register a variant under an id of its own instead"
            )

    import torch

    from rl_as_inference.envs.base import resolve_device

    device = resolve_device(args.device).type  # auto: CUDA when present
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    argv_printed = ["benchmarks/solve.py", *(sys.argv[1:] if argv is None else argv)]
    header = machine_info(argv_printed, args.threads, device)
    print("\n".join(f"- {line}" for line in header), flush=True)
    overrides = _parse_algo(args.algo)
    sb3_algos = _parse_algo(args.sb3_algo)
    jobs = []
    for env in args.envs:
        for seed in args.seeds:
            common = {
                "env": env,
                "seed": seed,
                "eval_every": args.eval_every or EVAL_EVERY[env],
                "eval_episodes": args.eval_episodes,
                "final_episodes": args.final_episodes,
                "confirm_episodes": args.confirm_episodes,
                "budget_scale": args.budget_scale,
                "budget": args.budget,
                "full": args.full,
                "threads": args.threads,
                "device": device,
                "sets": args.sets,
            }
            if not args.sb3_only:
                algo = our_algo(env, overrides)
                if algo is None:
                    print(f"- {env}: no recipe and no --algo: our side skipped", flush=True)
                else:
                    jobs.append({**common, "library": "ours", "algo": algo})
            if not args.ours_only:
                sb3_algo = sb3_algos.get(env, sb3_algos.get("*"))
                zoo_entry(env, sb3_algo)  # an unknown alternative fails before any run
                jobs.append({**common, "library": "sb3", "algo": None, "sb3_algo": sb3_algo})
            if args.rejax:
                from rejax_baseline import REJAX_CONFIGS

                if env in REJAX_CONFIGS:
                    jobs.append({**common, "library": "rejax", "algo": None})
                else:
                    print(
                        f"- {env}: no rejax settings (have {', '.join(REJAX_CONFIGS)}): rejax skipped",
                        flush=True,
                    )

    results = []
    context = multiprocessing.get_context("spawn")
    for job in jobs:  # one at a time, each in a fresh child process
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=context, initializer=die_with_parent
        ) as pool:
            r = pool.submit(run_job, job).result()
        results.append(r)
        status = (
            f"error {r.error}"
            if r.error
            else (
                f"threshold at {r.steps_to_threshold:,} steps, {r.seconds_to_threshold:.1f} s"
                if r.solved
                else f"threshold not reached in {r.final_env_steps:,} steps"
            )
            + f"; final {r.final_mean:.1f} over {r.final_episodes} episodes; load {os.getloadavg()[0]:.2f}"
        )
        if getattr(r, "compile_seconds", None) is not None:  # rejax: ahead-of-time compilation, unclocked
            status += f"; compilation {r.compile_seconds:.1f} s (outside the clock)"
        print(f"- {r.env} seed {r.seed} {r.library} {r.algo}: {status}", flush=True)
        curve = ", ".join(f"{steps}: {mean:.0f} ({secs:.0f} s)" for steps, secs, mean in r.evals)
        print(f"  evaluations (env steps: mean return (training s)): {curve or 'none'}", flush=True)
    print()
    print(tables(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"header": header, "results": [dataclasses.asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
