"""``rlai plan``: the planner of :mod:`rl_as_inference.planning` controlling Gymnasium's own env.

Each control step reads the true state of Gymnasium's environment (``env.unwrapped.state``, the
layout the torch ports share with Gymnasium's classic-control code), plans on the torch port's
dynamics and applies the first action to Gymnasium's env, so the return is Gymnasium's. Episodes
are reset with seeds ``seed + i``. The per-step diagnostics (the weights' ESS, the temperature and,
where the log weights are kept, PSIS k-hat) go to an ArviZ ``InferenceData`` whose
``sample_stats`` group has dims ``(chain, draw)`` = (episode, control step), the layout ArviZ's
own functions read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rl_as_inference import envs
from rl_as_inference.algos.collect import constructed
from rl_as_inference.algos.settings import ENV_KWARGS
from rl_as_inference.diagnostics import pareto_k_per_step, to_netcdf
from rl_as_inference.planning import MPC

__all__ = ["PlanResult", "control_gymnasium", "plan_episodes", "write_inference_data"]


@dataclass
class PlanResult:
    """What :func:`plan_episodes` measured."""

    returns: list[float]
    ms_per_step: float  # wall-clock of the planner's act per control step, median over steps
    steps: int
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)  # [episode, step] each

    def to_inference_data(self):
        """The per-step diagnostics as ArviZ ``InferenceData`` (episodes as chains, steps as draws)."""
        import arviz as az

        steps = next(iter(self.diagnostics.values())).shape[1]  # episodes padded to one length
        stats = dict(self.diagnostics)
        stats["episode_return"] = np.repeat(np.asarray(self.returns)[:, None], steps, axis=1)
        return az.from_dict(sample_stats=stats)


def control_gymnasium(
    env_id: str,
    make_command: Callable[[int], Callable[[np.ndarray], object]],
    episodes: int,
    seed: int,
    env_kwargs: dict | None = None,
) -> tuple[list[float], list[float]]:
    """Run ``episodes`` episodes of ``gymnasium.make(env_id, **env_kwargs)`` under a controller of
    its true state.

    Episode i is reset with seed ``seed + i`` and controlled by ``make_command(i)``, a function of
    ``env.unwrapped.state`` (float64) returning the action to apply; it runs until Gymnasium's own
    termination or time limit. Returns the undiscounted returns and every command's wall-clock in
    seconds (only the command is timed)."""
    import gymnasium as gym

    env_kwargs = dict(env_kwargs or {})
    with constructed(env_id, env_kwargs, "gymnasium"):
        env = gym.make(env_id, **env_kwargs)
    returns, seconds = [], []
    try:
        for i in range(episodes):
            env.reset(seed=seed + i)
            command = make_command(i)
            total, done = 0.0, False
            while not done:
                raw = getattr(env.unwrapped, "state", None)
                if raw is None:
                    raise ValueError(
                        f"{env_id}: Gymnasium's env exposes no .state to plan from; rlai plan reads the "
                        "state of the classic-control ports (Pendulum-v1, CartPole-v1, MountainCar-v0, "
                        "MountainCarContinuous-v0, Acrobot-v1)"
                    )
                start = time.perf_counter()
                action = command(np.asarray(raw, dtype=np.float64))
                seconds.append(time.perf_counter() - start)
                _, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns, seconds


def plan_episodes(
    env_id: str,
    *,
    method: str = "mppi",
    horizon: int = 15,
    num_samples: int = 1000,
    episodes: int = 10,
    seed: int = 10_000,
    device: str | None = None,
    record: bool = True,
    env_kwargs: dict | None = None,
    **planner,
) -> PlanResult:
    """Plan ``episodes`` episodes of Gymnasium's ``env_id`` with an :class:`MPC` on its torch port.

    Args:
        env_id: a Gymnasium id with a torch port (its dynamics are what the planner rolls out).
        method, horizon, num_samples, ``**planner``: the :class:`MPC`'s settings.
        episodes: episodes to run; episode i is reset with seed ``seed + i``.
        device: where the planner runs (the port's device).
        record: keep the log weights for PSIS k-hat.
        env_kwargs: constructor arguments of both envs, the torch port the planner rolls out and
            Gymnasium's env it controls (``{"g": 2.0}`` on Pendulum-v1): the plan is only as good
            as the port's dynamics are Gymnasium's, so an argument either one does not take is an
            error rather than a plan on other dynamics.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} is not allowed; use an int >= 1")
    if isinstance(env_id, str) and not envs.has_torch_env(env_id):
        known = sorted({*envs.PORTED, *envs.registered_ids()})
        raise ValueError(
            f"planning rolls the dynamics out ahead of the env, so it needs a torch env, and {env_id!r} "
            f"has none (torch envs here: {', '.join(known)}; add yours with envs.register)"
        )
    env_kwargs = {} if env_kwargs is None else env_kwargs
    if not ENV_KWARGS.ok(env_kwargs):
        raise ValueError(f"env_kwargs={env_kwargs!r} is not allowed; use {ENV_KWARGS.allowed}")
    both = "; the planner rolls out its dynamics, so planning needs arguments that both it and Gymnasium's env take"
    with constructed(env_id, env_kwargs, "functional", hint=both):
        port = envs.make(env_id, device=device, **env_kwargs)
    discrete = port.action_space.shape == ()
    planners = []

    def make_command(i: int):
        mpc = MPC(
            port, method, horizon=horizon, num_samples=num_samples, seed=seed + i, record=record, **planner
        )
        planners.append(mpc)

        def command(state: np.ndarray):
            action = mpc.act(torch.as_tensor(state, dtype=port.dtype, device=port.device)[None])[0]
            a = action.cpu().numpy()  # waits for the device: the timing includes the plan's work
            return int(a) if discrete else a.astype(port.action_space.dtype)

        return command

    returns, seconds = control_gymnasium(env_id, make_command, episodes, seed, env_kwargs)
    per_episode = []
    for mpc in planners:
        found = mpc.diagnostics()
        episode = {"ess": found["ess"][:, 0], "alpha": found["alpha"][:, 0]}
        if "log_weights" in found:
            episode["pareto_k"] = pareto_k_per_step(found["log_weights"][:, :, :1])[:, 0]
        per_episode.append(episode)
    longest = max(len(d["ess"]) for d in per_episode)
    diagnostics = {
        k: np.stack([np.pad(d[k], (0, longest - len(d[k])), constant_values=np.nan) for d in per_episode])
        for k in per_episode[0]
    }
    return PlanResult(returns, 1e3 * float(np.median(seconds)), len(seconds), diagnostics)


def write_inference_data(result: PlanResult, out: str | Path) -> Path:
    """Write the diagnostics as ``OUT/plan.nc`` (atomically); returns the path."""
    return to_netcdf(result.to_inference_data(), Path(out) / "plan.nc")
