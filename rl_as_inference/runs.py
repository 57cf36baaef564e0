"""Training runs on disk: ``train_run`` (what ``rlai train`` does), ``load_policy`` and ``evaluate``.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.csv`` (one row per
logging interval; also TensorBoard event files under ``tensorboard/`` when the ``tensorboard``
package is installed), ``train_state.pt`` (everything needed to continue: written atomically every
``checkpoint_every`` env steps and at the end, read by ``rlai train --resume``), ``checkpoint.pt``
(the trained policy and what is needed to rebuild it, written atomically) and ``eval.json``
(returns on Gymnasium's own environment).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from rl_as_inference import guides
from rl_as_inference.algos import REGISTRY
from rl_as_inference.checkpoint import atomic_torch_save, load_tagged
from rl_as_inference.config import apply_overrides, build_config, read_toml, to_toml
from rl_as_inference.envs.base import resolve_device
from rl_as_inference.resume import Checkpointer, read_train_state

__all__ = [
    "ALGORITHMS",
    "DEFAULT_CHECKPOINT_EVERY",
    "LoadedPolicy",
    "episode_returns",
    "evaluate",
    "load_policy",
    "resume_run",
    "train_run",
]

# (config class, train) by algorithm name, from the algorithms' own registrations
ALGORITHMS = {name: (algorithm.config, algorithm.train) for name, algorithm in REGISTRY.items()}
POLICY_CLASSES = {
    cls.__name__: cls
    for cls in (guides.TanhGaussianMLP, guides.GaussianMLP, guides.CategoricalMLP, guides.SoftQPolicy)
}
RUN_FORMAT = "rl_as_inference.run/1"
DEFAULT_CHECKPOINT_EVERY = 5_000  # env steps between training-state checkpoints
TRAIN_STATE = "train_state.pt"


def _policy_spec(policy: torch.nn.Module, config) -> dict:
    activation = next((type(m).__name__ for m in policy.net if not isinstance(m, torch.nn.Linear)), "Tanh")
    spec = {"class": type(policy).__name__, "hidden": list(config.hidden), "activation": activation}
    if hasattr(policy, "state_dependent_std"):
        spec["state_dependent_std"] = policy.state_dependent_std
    if policy.rescale_obs:  # absent in runs written before the option: False
        spec["rescale_obs"] = True
    return spec


def train_run(
    env_id: str,
    *,
    algo: str | None = None,
    config_file: str | None = None,
    sets: list[str] = (),
    seed: int | None = None,
    device: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    eval_episodes: int = 100,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
) -> Path:
    """Train ``algo`` (default: the recipe's) on ``env_id`` and write the run directory; returns its path.

    The training state is checkpointed every ``checkpoint_every`` env steps (0: only at the end)
    so that :func:`resume_run` can continue an interrupted run.
    """
    from rl_as_inference.config import load_recipe

    algo = algo or load_recipe(env_id).get("default_algo", "sac")
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; available: {', '.join(sorted(ALGORITHMS))}")
    config_cls, _ = ALGORITHMS[algo]
    extra = (
        [f"env={env_id}"]
        + ([f"seed={seed}"] if seed is not None else [])
        + ([f"device={device}"] if device else [])
    )
    config = build_config(config_cls, env_id, algo, file=config_file, sets=[*extra, *sets])
    run_dir = Path(out) if out is not None else Path("runs") / f"{env_id}-{algo}-seed{config.seed}"
    if (run_dir / TRAIN_STATE).exists():
        raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {"algo": algo, "checkpoint_every": checkpoint_every, **dataclasses.asdict(config)}
    (run_dir / "config.toml").write_text(to_toml(resolved))
    checkpointer = Checkpointer(
        run_dir / TRAIN_STATE, every=checkpoint_every, device=resolve_device(config.device)
    )
    return _run(run_dir, algo, config, checkpointer, progress=progress, eval_episodes=eval_episodes)


def resume_run(run_dir: str | os.PathLike, *, progress: bool = True, eval_episodes: int = 100) -> Path:
    """Continue the run in ``run_dir`` from its last training-state checkpoint, with its own config.

    Metric rows logged after that checkpoint are dropped and logged again by the continued run; on
    CPU the final parameters are bit-identical to those of an uninterrupted run.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no config.toml")
    table = read_toml(config_path, str(config_path))
    algo = table.pop("algo", None)
    if algo not in ALGORITHMS:
        raise ValueError(f"{config_path}: unknown algorithm {algo!r}")
    every = table.pop("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
    config_cls, _ = ALGORITHMS[algo]
    config = config_cls(**apply_overrides(config_cls, {}, table, source=str(config_path)))
    state = read_train_state(run_dir / TRAIN_STATE, map_location="cpu")
    _truncate_metrics(run_dir / "metrics.csv", int(state["env_steps"]))
    checkpointer = Checkpointer(
        run_dir / TRAIN_STATE, every=every, resume=True, device=resolve_device(config.device)
    )
    return _run(run_dir, algo, config, checkpointer, progress=progress, eval_episodes=eval_episodes)


def _truncate_metrics(path: Path, env_steps: int) -> None:
    """Keep the metric rows up to ``env_steps`` (the rest is logged again by the resumed run)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and float(r[0]) <= env_steps]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


class _MetricLog:
    """metrics.csv (appended to on resume), TensorBoard when installed, and the progress bar."""

    def __init__(self, run_dir: Path, algo: str, config, progress: bool):
        path = run_dir / "metrics.csv"
        self.fieldnames = None
        if path.is_file() and path.stat().st_size:
            with open(path, newline="") as f:
                self.fieldnames = next(csv.reader(f), None)
        self.file = open(path, "a", newline="")  # noqa: SIM115 (closed in close())
        self.writer = csv.DictWriter(self.file, fieldnames=self.fieldnames) if self.fieldnames else None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tensorboard = None
        self.bar = tqdm(
            total=config.total_env_steps, disable=not progress, desc=f"{algo} {config.env}", unit="step"
        )

    def __call__(self, row: dict) -> None:
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "env_steps" and isinstance(value, int | float):
                    self.tensorboard.add_scalar(key, value, row["env_steps"])
        self.bar.set_postfix(
            ret=f"{row['return']:.1f}", elbo=f"{row.get('elbo', float('nan')):.3g}", refresh=False
        )
        self.bar.update(row["env_steps"] - self.bar.n)  # redraws with the postfix of this row

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _run(run_dir: Path, algo: str, config, checkpointer: Checkpointer, *, progress: bool, eval_episodes: int):
    _, train = ALGORITHMS[algo]
    log = _MetricLog(run_dir, algo, config, progress)
    try:
        result = train(config, callback=log, checkpointer=checkpointer)
    finally:
        log.close()
    atomic_torch_save(
        {
            "format": RUN_FORMAT,
            "algo": algo,
            "env": config.env,
            "policy": _policy_spec(result.policy, config),
            "state_dict": result.policy.state_dict(),
            "env_steps": result.env_steps,
        },
        run_dir / "checkpoint.pt",
    )
    summary = {
        "algo": algo,
        "env": config.env,
        "env_steps": result.env_steps,
        "train_seconds": result.wall_time,  # across resumes: the clock continues from the checkpoint
    }
    if eval_episodes > 0:
        returns = evaluate(run_dir, episodes=eval_episodes, seed=10_000)
        summary |= {
            "episodes": len(returns),
            "mean_return": float(np.mean(returns)),
            "std_return": float(np.std(returns)),
        }
    (run_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return run_dir


class LoadedPolicy:
    """A trained policy for Gymnasium observations: ``act(obs)`` returns actions Gymnasium accepts."""

    def __init__(self, module: torch.nn.Module, env_id: str, device: torch.device):
        probe = gym.make(env_id)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        self.module, self.env_id, self.device = module.eval(), env_id, device

    def act(self, obs, deterministic: bool = True, generator: torch.Generator | None = None):
        """Action(s) for one observation or a batch (numpy or torch); the mode unless ``deterministic=False``."""
        obs_t = torch.as_tensor(np.asarray(obs), device=self.device)
        single = obs_t.dim() == len(self.observation_space.shape)
        if single:
            obs_t = obs_t.unsqueeze(0)
        with torch.no_grad():
            d = self.module(obs_t)
            if deterministic:
                action = self.module.mode(d)
            else:
                action = d.sample() if generator is None else _sample_with(d, generator, self.device)
        action = action.cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Discrete):
            action = action.astype(np.int64)
            return int(action[0]) if single else action
        action = np.clip(
            action.astype(self.action_space.dtype), self.action_space.low, self.action_space.high
        )
        return action[0] if single else action


def _sample_with(d, generator: torch.Generator, device: torch.device):
    # torch distributions draw from the global RNG of the policy's device; fork the generators that
    # manual_seed reseeds (the CPU's, and every CUDA device's once CUDA is in use) so a seeded
    # evaluation is reproducible without disturbing the caller's streams.
    cuda = torch.device(device).type == "cuda" or torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return d.sample()


def load_policy(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedPolicy:
    """The policy of a run directory written by ``rlai train`` (loaded with ``weights_only=True``)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no checkpoint.pt")
    state = load_tagged(path, RUN_FORMAT, "run checkpoint", device)
    spec = state["policy"]
    probe = gym.make(state["env"])
    cls = POLICY_CLASSES[spec["class"]]
    extra = {"state_dependent_std": spec["state_dependent_std"]} if "state_dependent_std" in spec else {}
    extra["rescale_obs"] = spec.get("rescale_obs", False)
    module = cls(
        probe.observation_space,
        probe.action_space,
        hidden=tuple(spec["hidden"]),
        activation=getattr(torch.nn, spec["activation"]),
        **extra,
    )
    probe.close()
    module.load_state_dict(state["state_dict"])
    return LoadedPolicy(module.to(device), state["env"], torch.device(device))


def _check_episodes(episodes) -> None:
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")


def episode_returns(
    policy: LoadedPolicy, *, episodes: int = 100, seed: int = 0, stochastic: bool = False
) -> list[float]:
    """Returns of ``episodes`` episodes of ``policy`` on Gymnasium's own environment (episode i reset
    with seed + i); the mode of each action unless ``stochastic`` (then sampled reproducibly from ``seed``)."""
    _check_episodes(episodes)
    env = gym.make(policy.env_id)
    generator = torch.Generator().manual_seed(seed)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs, not stochastic, generator))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def evaluate(run_dir, *, episodes: int = 100, seed: int = 0, stochastic: bool = False) -> list[float]:
    """Returns of ``episodes`` episodes of a run directory's policy (:func:`episode_returns`)."""
    _check_episodes(episodes)  # before reading the run: a bad count is reported first
    return episode_returns(load_policy(run_dir), episodes=episodes, seed=seed, stochastic=stochastic)
