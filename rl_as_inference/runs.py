"""Training runs on disk: ``train_run`` (what ``rlai train`` does), ``load_policy`` and ``evaluate``.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.csv`` (one row per
logging interval), ``checkpoint.pt`` (the trained policy and what is needed to rebuild it, written
atomically) and ``eval.json`` (returns on Gymnasium's own environment).
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
from rl_as_inference.algos import em, mpo, sac, svi
from rl_as_inference.checkpoint import atomic_torch_save
from rl_as_inference.config import build_config, to_toml

__all__ = ["ALGORITHMS", "LoadedPolicy", "evaluate", "load_policy", "train_run"]

ALGORITHMS = {
    "em": (em.EMConfig, em.train),
    "mpo": (mpo.MPOConfig, mpo.train),
    "sac": (sac.SACConfig, sac.train),
    "svi": (svi.SVIConfig, svi.train),
}
POLICY_CLASSES = {
    cls.__name__: cls for cls in (guides.TanhGaussianMLP, guides.GaussianMLP, guides.CategoricalMLP)
}
RUN_FORMAT = "rl_as_inference.run/1"


def _policy_spec(policy: torch.nn.Module, config) -> dict:
    activation = next((type(m).__name__ for m in policy.net if not isinstance(m, torch.nn.Linear)), "Tanh")
    spec = {"class": type(policy).__name__, "hidden": list(config.hidden), "activation": activation}
    if hasattr(policy, "state_dependent_std"):
        spec["state_dependent_std"] = policy.state_dependent_std
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
) -> Path:
    """Train ``algo`` (default: the recipe's) on ``env_id`` and write the run directory; returns its path."""
    from rl_as_inference.config import load_recipe

    algo = algo or load_recipe(env_id).get("default_algo", "sac")
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; available: {', '.join(sorted(ALGORITHMS))}")
    config_cls, train = ALGORITHMS[algo]
    extra = (
        [f"env={env_id}"]
        + ([f"seed={seed}"] if seed is not None else [])
        + ([f"device={device}"] if device else [])
    )
    config = build_config(config_cls, env_id, algo, file=config_file, sets=[*extra, *sets])
    run_dir = Path(out) if out is not None else Path("runs") / f"{env_id}-{algo}-seed{config.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {"algo": algo, **dataclasses.asdict(config)}
    (run_dir / "config.toml").write_text(to_toml(resolved))

    bar = tqdm(total=config.total_env_steps, disable=not progress, desc=f"{algo} {env_id}", unit="step")
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = None

        def log(row: dict) -> None:
            nonlocal writer
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            bar.set_postfix(
                ret=f"{row['return']:.1f}", elbo=f"{row.get('elbo', float('nan')):.3g}", refresh=False
            )
            bar.update(row["env_steps"] - bar.n)  # redraws with the postfix of this row

        result = train(config, callback=log)
    bar.close()
    atomic_torch_save(
        {
            "format": RUN_FORMAT,
            "algo": algo,
            "env": env_id,
            "policy": _policy_spec(result.policy, config),
            "state_dict": result.policy.state_dict(),
            "env_steps": result.env_steps,
        },
        run_dir / "checkpoint.pt",
    )
    summary = {"algo": algo, "env": env_id, "env_steps": result.env_steps, "train_seconds": result.wall_time}
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
                action = d.sample() if generator is None else _sample_with(d, generator)
        action = action.cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Discrete):
            action = action.astype(np.int64)
            return int(action[0]) if single else action
        action = np.clip(
            action.astype(self.action_space.dtype), self.action_space.low, self.action_space.high
        )
        return action[0] if single else action


def _sample_with(d, generator: torch.Generator):
    # torch distributions draw from the global RNG; fork it so a seeded evaluation is reproducible
    # without disturbing the caller's stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return d.sample()


def load_policy(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedPolicy:
    """The policy of a run directory written by ``rlai train`` (loaded with ``weights_only=True``)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no checkpoint.pt")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise ValueError(f"{path} is not an rl_as_inference run checkpoint")
    spec = state["policy"]
    probe = gym.make(state["env"])
    cls = POLICY_CLASSES[spec["class"]]
    extra = {"state_dependent_std": spec["state_dependent_std"]} if "state_dependent_std" in spec else {}
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


def evaluate(run_dir, *, episodes: int = 100, seed: int = 0, stochastic: bool = False) -> list[float]:
    """Returns of ``episodes`` episodes on Gymnasium's own environment (episode i reset with seed + i)."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    policy = load_policy(run_dir)
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
