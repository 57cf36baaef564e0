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
import math
import os
import shutil
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from rl_as_inference import distributed as dp
from rl_as_inference import envs, guides
from rl_as_inference.algos import REGISTRY
from rl_as_inference.algos.collect import EnvActions, check_observation_space, constructed, resolve_backend
from rl_as_inference.algos.settings import ENV_KWARGS, FLAG, RULES, rank_share
from rl_as_inference.checkpoint import (
    atomic_torch_save,
    atomic_write_text,
    load_error_detail,
    load_tagged,
)
from rl_as_inference.config import (
    apply_overrides,
    build_config,
    parse_assignment,
    read_toml,
    run_env_kwargs,
    to_toml,
)
from rl_as_inference.envs.base import resolve_device
from rl_as_inference.envs.gymnasium_adapter import naming_missing_packages
from rl_as_inference.envs.ids import check_env_id, import_env_module
from rl_as_inference.envs.observations import flat_observation, flat_observation_space, is_composite
from rl_as_inference.guides.normalization import (
    DEFAULT_OBS_CLIP,
    RunningObsNormalizer,
    attach_obs_normalizer,
    obs_normalizer_of,
)
from rl_as_inference.guides.policies import activation_class, is_bounded_box
from rl_as_inference.resume import Checkpointer, read_train_state
from rl_as_inference.signals import deferred_signals, raise_if_pending

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
# what a run writes besides config.toml: removed when a run that never checkpointed starts over
RUN_OUTPUTS = ("metrics.csv", "checkpoint.pt", "eval.json", "tensorboard")
# config keys a resumed run may see changed in config.toml: how long to train, and where
RESUMABLE_CHANGES = ("total_env_steps", "device")


def _remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the temporary files of atomic saves cut off by a kill (``.NAME.*.tmp``); returns them."""
    stale = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _start_over(run_dir: Path) -> None:
    """Empty a run directory whose run stopped before its first training-state checkpoint."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _policy_spec(policy: torch.nn.Module, config) -> dict:
    activation = next((type(m).__name__ for m in policy.net if not isinstance(m, torch.nn.Linear)), "Tanh")
    spec = {"class": type(policy).__name__, "hidden": list(config.hidden), "activation": activation}
    if hasattr(policy, "state_dependent_std"):
        spec["state_dependent_std"] = policy.state_dependent_std
    if policy.rescale_obs:  # absent in runs written before the option: False
        spec["rescale_obs"] = True
    if getattr(policy, "rescale_actions", False):  # likewise
        spec["rescale_actions"] = True
    normalizer = obs_normalizer_of(policy)
    if normalizer is not None:  # its statistics are buffers in the state dict
        spec["normalize_obs"] = True
        spec["obs_clip"] = normalizer.clip
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
    so that :func:`resume_run` can continue an interrupted run. A directory that holds a training
    state is refused (resume it instead); one that holds only the start of a run that never
    checkpointed (``config.toml``, perhaps ``metrics.csv``) is started over, with a note on stderr,
    so two runs' rows are never mixed in one ``metrics.csv``.

    Raises:
        ValueError: a bad algorithm, config key or value, or ``sets`` that contradict ``env_id``,
            ``seed`` or ``device`` (``--env CartPole-v1 --set env=Acrobot-v1``).
    """
    from rl_as_inference.config import load_recipe, recipe_family

    _check_eval_episodes(eval_episodes)
    if isinstance(env_id, str) and ":" in env_id:  # typed by the caller, never read from a file
        env_id = import_env_module(env_id)
    env_id = check_env_id(env_id, source="env")
    env_kwargs = run_env_kwargs(config_file, sets)
    _, action_space = _spaces(env_id, env_kwargs)
    if algo is None:
        algo = _recipe_algorithm(env_id, action_space) or _generic_algorithm(env_id, action_space)
    family = recipe_family(env_id)
    if family is not None and algo in load_recipe(env_id) and is_rank_0():  # the family's table sets this run
        print(
            f"rlai: note: {env_id} has no recipe of its own; {algo} with the {family} defaults "
            f"(rl_as_inference/recipes/families/{family}.toml)",
            file=sys.stderr,
        )
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; available: {', '.join(sorted(ALGORITHMS))}")
    kind = type(action_space).__name__
    if kind not in REGISTRY[algo].action_spaces:
        takes = ", ".join(sorted(name for name, a in REGISTRY.items() if kind in a.action_spaces))
        raise ValueError(
            f"{algo} takes {' or '.join(REGISTRY[algo].action_spaces)} actions, and {env_id} has "
            f"{action_space}; " + (f"use one of {takes}" if takes else "no algorithm here takes it")
        )
    if _unbounded_box(action_space) and not REGISTRY[algo].unbounded_box:
        takes = ", ".join(sorted(name for name, a in REGISTRY.items() if a.unbounded_box))
        raise ValueError(
            f"{algo} needs a bounded action box (it squashes its actions into the box or draws its "
            f"warm-up actions uniformly from it), and {env_id} has {action_space}; use {takes}, or "
            "give the env finite action bounds"
        )
    if REGISTRY[algo].needs_dynamics and not envs.has_torch_env(env_id):
        takes = ", ".join(sorted(name for name, a in REGISTRY.items() if not a.needs_dynamics))
        raise ValueError(
            f"{algo} differentiates and re-simulates the env's dynamics, and {env_id} runs only as "
            f"Gymnasium's own env, which exposes neither; use one of {takes}, or add a torch env "
            "with envs.register"
        )
    config_cls, _ = ALGORITHMS[algo]
    given = {"env": env_id, "seed": seed, "device": device}
    for text in sets:
        key, value = parse_assignment(text)
        if key in given and given[key] is not None and value != str(given[key]):
            flag = "--env" if key == "env" else f"--{key}"
            raise ValueError(f"--set {key}={value} contradicts {flag} {given[key]}: give one of them")
    extra = [f"{key}={value}" for key, value in given.items() if value is not None]
    notes: list[str] = []
    config = build_config(config_cls, env_id, algo, file=config_file, sets=[*extra, *sets], notes=notes)
    for note in notes if is_rank_0() else ():
        print(f"rlai: note: {note}", file=sys.stderr)
    if REGISTRY[algo].needs_dynamics and config.backend == "gymnasium":
        raise ValueError(
            f"backend='gymnasium' but {algo} differentiates and re-simulates the dynamics, which "
            "Gymnasium's own envs do not expose; leave backend at 'auto' (the torch env)"
        )
    _check_torch_env_kwargs(config, algo)
    Checkpointer(None, every=checkpoint_every)  # checks the interval before anything is written
    _join_process_group(config)
    rank_share(config)  # a size that does not split over the ranks fails before any write
    run_dir = Path(out) if out is not None else Path("runs") / f"{env_id}-{algo}-seed{config.seed}"

    def prepare() -> None:
        if (run_dir / TRAIN_STATE).exists():
            raise ValueError(
                f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick --out"
            )
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"run directory {run_dir} exists and is not a directory")
        if (run_dir / "config.toml").exists():
            print(
                f"rlai: note: {run_dir} holds a run that stopped before its first checkpoint; starting it over",
                file=sys.stderr,
            )
            _start_over(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(run_dir)
        resolved = {"algo": algo, "checkpoint_every": checkpoint_every, **dataclasses.asdict(config)}
        atomic_write_text(run_dir / "config.toml", to_toml(resolved))

    _on_rank_0(prepare)
    checkpointer = Checkpointer(
        run_dir / TRAIN_STATE,
        every=checkpoint_every,
        device=resolve_device(config.device),
        meta={"config": _config_record(config)},
    )
    return _run(run_dir, algo, config, checkpointer, progress=progress, eval_episodes=eval_episodes)


def _check_torch_env_kwargs(config, algo: str) -> None:
    """Build the torch env once with ``config.env_kwargs`` where the run will (the spaces were
    probed on Gymnasium's own env, which takes arguments a port does not model), so that refused
    arguments are reported before anything is written."""
    if not config.env_kwargs or config.env not in gym.registry:
        return  # an id with only a torch env: the spaces probe built that env with them already
    backend = "functional" if REGISTRY[algo].needs_dynamics else resolve_backend(config.env, config.backend)
    if backend == "functional":
        with constructed(config.env, config.env_kwargs, backend):
            envs.make(config.env, **config.env_kwargs)


# The algorithm of an id without a shipped recipe, by its action space: V-MPO is the recipe of
# the discrete ports (CartPole-v1, Acrobot-v1) and SAC the common choice for continuous control.
GENERIC_ALGORITHMS = {"Discrete": "vmpo", "Box": "sac"}


def _spaces(env_id: str, env_kwargs: dict | None = None) -> tuple[gym.Space, gym.Space]:
    """(observation, action) space of one env, built once before anything is written: a missing
    package (Box2D, MuJoCo), constructor arguments the env refuses or a space the networks cannot
    take is reported with no run directory. The spaces may depend on ``env_kwargs``
    (LunarLander-v3's ``continuous``), so they, and the algorithm chosen by them, are read from it."""
    probe = gymnasium_env(env_id, env_kwargs)
    try:
        check_observation_space(env_id, probe.observation_space)
        return probe.observation_space, probe.action_space
    finally:
        probe.close()


def gymnasium_env(env_id: str, env_kwargs: dict | None = None) -> gym.Env:
    """One env of ``env_id`` behind Gymnasium's API, for evaluation: Gymnasium's own where the id is
    in its registry (the ports' originals included), else the registered torch env in
    :class:`~rl_as_inference.envs.GymnasiumEnv` (float64, numpy I/O) with its time limit; built
    with the constructor arguments ``env_kwargs``."""
    env_kwargs = dict(env_kwargs or {})
    if env_id in gym.registry:
        with naming_missing_packages(env_id), constructed(env_id, env_kwargs, "gymnasium"):
            return gym.make(env_id, **env_kwargs)
    with constructed(env_id, env_kwargs, "functional"):
        port = envs.make(env_id, dtype=torch.float64, **env_kwargs)
    env = envs.GymnasiumEnv(env=port)
    limit = env.env.max_episode_steps
    return gym.wrappers.TimeLimit(env, limit) if limit is not None else env


def _unbounded_box(space: gym.Space) -> bool:
    """Whether ``space`` is a Box with an infinite bound (which only a Gaussian policy can act on)."""
    return isinstance(space, gym.spaces.Box) and not is_bounded_box(space)


def _recipe_algorithm(env_id: str, space: gym.Space) -> str | None:
    """The recipe's ``default_algo`` where it takes ``space`` (None: no recipe, or constructor
    arguments gave the env other actions than the recipe was written for, as LunarLander-v3's
    ``continuous``)."""
    from rl_as_inference.config import load_recipe

    algo = load_recipe(env_id).get("default_algo")
    if algo is None or algo not in REGISTRY or type(space).__name__ in REGISTRY[algo].action_spaces:
        return algo
    if is_rank_0():
        print(
            f"rlai: note: {env_id}'s recipe runs {algo}, which does not take this env's {space} "
            "actions (set by env_kwargs)",
            file=sys.stderr,
        )
    return None


def _generic_algorithm(env_id: str, space: gym.Space) -> str:
    """The documented default for an id without a recipe (:data:`GENERIC_ALGORITHMS`; V-MPO for a
    Box with infinite bounds, which SAC's squashed policy cannot cover), announced."""
    kind = type(space).__name__
    algo = GENERIC_ALGORITHMS.get(kind)
    if algo is None:
        raise ValueError(
            f"{env_id} has action space {space}; the algorithms here take Discrete or Box actions"
        )
    if _unbounded_box(space):
        algo, kind = "vmpo", "Box (unbounded)"
    print(
        f"rlai: note: {env_id} has no shipped recipe for these actions; {kind} actions: {algo} with "
        "its default settings (pick another with --algo, tune with --set key=value)",
        file=sys.stderr,
    )
    return algo


def _config_record(config) -> dict:
    """The config as plain values that load with ``weights_only=True`` (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def _check_eval_episodes(eval_episodes) -> None:
    if isinstance(eval_episodes, bool) or not isinstance(eval_episodes, int) or eval_episodes < 0:
        raise ValueError(
            f"eval_episodes={eval_episodes!r} is not allowed; use an int >= 0 (0: no evaluation)"
        )


def _check_same_config(state: dict, config, path: Path) -> None:
    """Refuse a training state written under another config (another env, num_envs, network...)."""
    saved = state.get("meta", {}).get("config")
    if saved is None:  # a state written before configs were recorded: the load itself checks shapes
        return
    now = _config_record(config)
    defaults = _config_record(type(config)(env=config.env))
    changed = [
        f"{key} {saved.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(saved) | set(now))
        if key not in RESUMABLE_CHANGES
        and saved.get(key) != now.get(key)
        # a key added to the configs after the state was written, at its default: nothing changed
        and not (key not in saved and now.get(key) == defaults.get(key))
    ]
    if changed:
        raise ValueError(
            f"{path} was written under another config than {path.parent / 'config.toml'} "
            f"({'; '.join(changed)}); only {', '.join(RESUMABLE_CHANGES)} may change on resume"
        )


def resume_run(run_dir: str | os.PathLike, *, progress: bool = True, eval_episodes: int = 100) -> Path:
    """Continue the run in ``run_dir`` from its last training-state checkpoint, with its own config.

    Metric rows logged after that checkpoint are dropped and logged again by the continued run; on
    CPU the final parameters are bit-identical to those of an uninterrupted run.
    """
    run_dir = Path(run_dir)
    _check_eval_episodes(eval_episodes)
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no config.toml")
    table = read_toml(config_path, str(config_path))
    algo = table.pop("algo", None)
    if algo not in ALGORITHMS:
        raise ValueError(
            f"{config_path}: algo={algo!r} is not allowed; use one of {', '.join(sorted(ALGORITHMS))}"
        )
    every = table.pop("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
    config_cls, _ = ALGORITHMS[algo]
    # every value read from the file goes through the config rules (env ids included: no imports)
    try:
        config = config_cls(**apply_overrides(config_cls, {}, table, source=str(config_path)))
    except ValueError as exc:
        raise ValueError(f"{config_path}: {exc}") from None
    if not (run_dir / TRAIN_STATE).is_file():
        raise ValueError(
            f"{run_dir} has no {TRAIN_STATE}: its run stopped before its first checkpoint; "
            f"start it over with rlai train --out {run_dir} (and the same options)"
        )
    _join_process_group(config)

    def prepare() -> None:
        _remove_stale_temporaries(run_dir)
        state = read_train_state(run_dir / TRAIN_STATE, map_location="cpu")
        _check_same_config(state, config, run_dir / TRAIN_STATE)
        _truncate_metrics(run_dir / "metrics.csv", int(state["env_steps"]))

    _on_rank_0(prepare)
    checkpointer = Checkpointer(
        run_dir / TRAIN_STATE,
        every=every,
        resume=True,
        device=resolve_device(config.device),
        meta={"config": _config_record(config)},
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
        # Only the figures this algorithm reports: V-MPO logs no ELBO, and "elbo=nan" reads as a fault.
        shown = {
            label: f"{row[key]:{spec}}"
            for key, label, spec in (("return", "ret", ".1f"), ("elbo", "elbo", ".3g"))
            if isinstance(row.get(key), int | float) and math.isfinite(row[key])
        }
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(row["env_steps"] - self.bar.n)  # redraws with the postfix of this row

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _run(run_dir: Path, algo: str, config, checkpointer: Checkpointer, *, progress: bool, eval_episodes: int):
    _, train = ALGORITHMS[algo]
    main = dp.is_main()  # in a data-parallel run, rank 0 logs and writes; every rank trains
    log = _MetricLog(run_dir, algo, config, progress) if main else None
    # a SIGINT, SIGTERM or SIGHUP while training saves the state at the loop's next iteration and
    # raises TrainingInterrupted (a SystemExit with code 128 + signum)
    with deferred_signals():
        try:
            result = train(config, callback=log, checkpointer=checkpointer)
        finally:
            if log is not None:
                log.close()
        if not main:
            dp.barrier()  # rank 0 evaluates and writes; the group ends when all are done
            return run_dir
        atomic_torch_save(
            {
                "format": RUN_FORMAT,
                "algo": algo,
                "env": config.env,
                "env_kwargs": config.env_kwargs,
                "policy": _policy_spec(result.policy, config),
                "state_dict": result.policy.state_dict(),
                "env_steps": result.env_steps,
            },
            run_dir / "checkpoint.pt",
        )
        # a signal after the loop's last look: the run is saved and complete; still stop as asked
        raise_if_pending(checkpointer.path, result.env_steps)
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
    atomic_write_text(run_dir / "eval.json", json.dumps(summary, indent=2) + "\n")
    dp.barrier()
    return run_dir


def is_rank_0() -> bool:
    """Rank 0, or a process outside torchrun (also before the process group is joined)."""
    return int(os.environ.get("RANK", "0")) == 0


def _join_process_group(config) -> None:
    """Under torchrun, join the process group: NCCL where the run trains on CUDA, else gloo."""
    dp.init_from_environment(device=resolve_device(config.device))


def _on_rank_0(fn):
    """Run ``fn`` (work on the run directory) on rank 0 only; the other ranks wait for it and raise
    the same error if it raised one, so every rank stops with the same message."""
    if dp.world_size() == 1:
        return fn()
    outcome: tuple = ("ok", None)
    if dp.is_main():
        try:
            outcome = ("ok", fn())
        except (ValueError, OSError) as exc:
            outcome = ("error", exc)
    outcome = dp.broadcast_object(outcome)
    if outcome[0] == "error":
        outcome[1].raised_on_every_rank = True  # the CLI prints it once, on rank 0
        raise outcome[1]
    return outcome[1]


class LoadedPolicy:
    """A trained policy for Gymnasium observations: ``act(obs)`` returns actions Gymnasium accepts."""

    def __init__(
        self, module: torch.nn.Module, env_id: str, device: torch.device, env_kwargs: dict | None = None
    ):
        self.env_kwargs = dict(env_kwargs or {})  # the env's constructor arguments in training
        probe = gymnasium_env(env_id, self.env_kwargs)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        self.module, self.env_id, self.device = module.eval(), env_id, device
        self._env_actions = EnvActions(self.action_space, device)  # as the collectors hand them over

    def act(self, obs, deterministic: bool = True, generator: torch.Generator | None = None):
        """Action(s) for one observation or a batch (numpy or torch); the mode unless ``deterministic=False``.

        Where the env observes a Tuple or Dict (Blackjack-v1's tuple), a batch is a sequence of
        such observations; each is flattened as in training
        (:func:`~rl_as_inference.envs.observations.flat_observation`)."""
        if is_composite(self.observation_space):
            obs, single = self._flat(obs)
            obs_t = torch.as_tensor(obs, device=self.device)
        else:
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
        action = self._env_actions(action).cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Discrete):
            action = action.astype(np.int64)
            return int(action[0]) if single else action
        action = action.astype(self.action_space.dtype)
        return action[0] if single else action

    def _flat(self, obs) -> tuple[np.ndarray, bool]:
        """A composite observation, or a sequence of them, as flat float32 rows; and whether it was one."""
        space = self.observation_space
        if space.contains(obs):
            return flat_observation(space, obs), True
        if isinstance(obs, dict) or not hasattr(obs, "__len__") or len(obs) == 0:
            raise ValueError(f"observation {obs!r} is neither an element of {space} nor a sequence of them")
        return np.stack([flat_observation(space, o) for o in obs]), False


def _sample_with(d, generator: torch.Generator, device: torch.device):
    # torch distributions draw from the global RNG of the policy's device; fork the generators that
    # manual_seed reseeds (the CPU's, and every CUDA device's once CUDA is in use) so a seeded
    # evaluation is reproducible without disturbing the caller's streams.
    cuda = torch.device(device).type == "cuda" or torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return d.sample()


def _checked_spec(spec: object, path: Path) -> dict:
    """The policy spec of a checkpoint, every entry checked: a file names classes, never code."""
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: policy={spec!r} is not a policy description")
    if spec.get("class") not in POLICY_CLASSES:
        raise ValueError(
            f"{path}: policy class={spec.get('class')!r} is not allowed; use one of {', '.join(POLICY_CLASSES)}"
        )
    hidden = spec.get("hidden")
    if not RULES["hidden"].ok(hidden):
        raise ValueError(f"{path}: policy hidden={hidden!r} is not allowed; use {RULES['hidden'].allowed}")
    try:
        activation_class(spec.get("activation"))
    except ValueError as exc:
        raise ValueError(f"{path}: policy {exc}") from None
    for flag in ("state_dependent_std", "rescale_obs", "rescale_actions", "normalize_obs"):
        if not FLAG.ok(spec.get(flag, False)):
            raise ValueError(f"{path}: policy {flag}={spec[flag]!r} is not allowed; use {FLAG.allowed}")
    clip = spec.get("obs_clip", DEFAULT_OBS_CLIP)
    if not RULES["obs_clip"].ok(clip):
        raise ValueError(f"{path}: policy obs_clip={clip!r} is not allowed; use {RULES['obs_clip'].allowed}")
    return spec


def load_policy(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedPolicy:
    """The policy of a run directory written by ``rlai train``.

    Opening a run directory runs no code from it: the file is loaded with ``weights_only=True``,
    its env id must be a ported or registered id without a ``module:`` prefix (which would make
    Gymnasium import a module, possibly one shipped in the directory), and its policy is rebuilt
    from a fixed set of classes and activations.

    Raises:
        ValueError: naming the file and the entry, if it is missing, corrupt, foreign, or names
            an env, class or activation outside those sets, or weights that do not fit.
    """
    device = resolve_device(device)
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory: no checkpoint.pt")
    state = load_tagged(path, RUN_FORMAT, "run checkpoint", device)
    env_id = check_env_id(state.get("env"), source=f"{path}: env")
    env_kwargs = state.get("env_kwargs", {})  # absent from the checkpoints of earlier versions
    if not ENV_KWARGS.ok(env_kwargs):
        raise ValueError(f"{path}: env_kwargs={env_kwargs!r} is not allowed; use {ENV_KWARGS.allowed}")
    spec = _checked_spec(state.get("policy"), path)
    probe = gymnasium_env(env_id, env_kwargs)
    cls = POLICY_CLASSES[spec["class"]]
    extra = {"state_dependent_std": spec["state_dependent_std"]} if "state_dependent_std" in spec else {}
    extra["rescale_obs"] = spec.get("rescale_obs", False)
    if spec.get("rescale_actions", False):
        extra["rescale_actions"] = True
    try:
        observation_space = probe.observation_space
        if is_composite(observation_space):  # flat, as collection saw it
            observation_space = flat_observation_space(observation_space)
        module = cls(
            observation_space,
            probe.action_space,
            hidden=tuple(spec["hidden"]),
            activation=activation_class(spec["activation"]),
            **extra,
        )
        if spec.get("normalize_obs", False):
            normalizer = RunningObsNormalizer.for_space(
                observation_space, clip=float(spec.get("obs_clip", DEFAULT_OBS_CLIP))
            )
            attach_obs_normalizer(normalizer, module)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: a {spec['class']} does not fit {env_id}'s spaces ({exc})") from None
    finally:
        probe.close()
    weights = state.get("state_dict")
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: state_dict is missing")
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: the weights do not fit a {spec['class']} for {env_id} ({load_error_detail(exc)})"
        ) from None
    return LoadedPolicy(module.to(device), env_id, device, env_kwargs)


def _check_episodes(episodes) -> None:
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")


def _check_seed(seed) -> None:
    # episode i is reset with seed + i, which Gymnasium (numpy) takes in [0, 2**63)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise ValueError(f"seed={seed!r} is not allowed; use an int in [0, 2**62)")


def episode_returns(
    policy: LoadedPolicy,
    *,
    episodes: int = 100,
    seed: int = 0,
    stochastic: bool = False,
    progress: bool = False,
) -> list[float]:
    """Returns of ``episodes`` episodes of ``policy`` on Gymnasium's own environment (episode i reset
    with seed + i); the mode of each action unless ``stochastic`` (then sampled reproducibly from
    ``seed``). ``progress`` shows a bar over episodes with its estimate of the time left."""
    _check_episodes(episodes)
    _check_seed(seed)
    env = gymnasium_env(policy.env_id, policy.env_kwargs)
    limit = _episode_limit(env)
    if limit is None:
        # an env registered without a time limit whose episodes need not end (a good policy keeps
        # a pendulum up forever): an evaluation must end, so it cuts them as MuJoCo's ids do
        limit = UNLIMITED_EVAL_STEPS
        print(
            f"rlai: note: {policy.env_id} has no time limit; evaluation episodes stop after {limit} "
            "steps (register it with max_episode_steps=N for its own)",
            file=sys.stderr,
        )
    generator = torch.Generator().manual_seed(seed)
    returns = []
    bar = tqdm(range(episodes), disable=not progress, desc=f"evaluate {policy.env_id}", unit="episode")
    for i in bar:
        obs, _ = env.reset(seed=seed + i)
        total, done, steps = 0.0, False, 0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs, not stochastic, generator))
            total += float(reward)
            steps += 1
            done = terminated or truncated or steps >= limit
        returns.append(total)
    env.close()
    return returns


# steps after which an evaluation episode of an env without a time limit is cut (MuJoCo's limit)
UNLIMITED_EVAL_STEPS = 1000


def _episode_limit(env: gym.Env) -> int | None:
    """The time limit of ``env``: its ``TimeLimit`` wrapper's, else its spec's; None if it has none."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return int(env._max_episode_steps)
        env = env.env
    spec = getattr(env, "spec", None)
    return None if spec is None or spec.max_episode_steps is None else int(spec.max_episode_steps)


def evaluate(
    run_dir, *, episodes: int = 100, seed: int = 0, stochastic: bool = False, progress: bool = False
) -> list[float]:
    """Returns of ``episodes`` episodes of a run directory's policy (:func:`episode_returns`)."""
    _check_episodes(episodes)  # before reading the run: a bad count is reported first
    _check_seed(seed)
    return episode_returns(
        load_policy(run_dir), episodes=episodes, seed=seed, stochastic=stochastic, progress=progress
    )
