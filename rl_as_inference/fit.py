"""``fit``: stochastic variational inference on a trajectory model from a script."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from tqdm import tqdm

from rl_as_inference.envs.base import resolve_device

from . import signals
from .checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from .elbo import TrajectoryELBO

__all__ = ["FitResult", "fit"]


@dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes:
        elbo: ELBO estimate of every step (per episode with TrajectoryELBO's default reduction).
        returns: mean undiscounted return of the episodes of every step (NaN when the model does not
            return a ``Trajectory``).
        num_steps: steps taken (including those of a resumed checkpoint).
        wall_time: seconds spent in this call.
        svi: the ``pyro.infer.SVI`` object (its ``optim`` holds the optimizer state).
    """

    elbo: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    num_steps: int = 0
    wall_time: float = 0.0
    svi: SVI | None = None


def fit(
    model,
    guide,
    *,
    num_steps: int,
    num_episodes: int,
    lr: float = 1e-3,
    optim: pyro.optim.PyroOptim | None = None,
    loss=None,
    seed: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    callbacks: Sequence[Callable[[int, dict], object]] = (),
    checkpoint: str | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> FitResult:
    """Maximize the ELBO of ``model`` over the guide's parameters with Pyro's SVI.

    Each step rolls out ``num_episodes`` episodes from the guide, replays them in the model and takes
    one optimizer step on the ELBO of seed eq. (2) (eq. (10) with a uniform prior).

    Args:
        model, guide: Pyro callables taking ``(num_episodes)`` that follow the site convention.
        num_steps: optimizer steps to take (in total, when resuming).
        num_episodes: episodes per step (the ``episodes`` plate size).
        lr: learning rate of the default optimizer, ``pyro.optim.Adam({"lr": lr})``.
        optim: a ``pyro.optim.PyroOptim`` to use instead.
        loss: the loss (default ``TrajectoryELBO()``).
        seed: seeds Pyro, torch, numpy and random (``pyro.set_rng_seed``): with it, CPU runs are
            reproducible. Networks created before ``fit`` are initialized by your own seeding.
        device: where the guide's modules live; defaults to the model env's device. A model whose
            env is elsewhere is an error (build the env with ``device=``).
        progress: show a progress bar with the ELBO and the mean return.
        callbacks: ``f(step, stats)`` called after every step with ``stats = {"elbo", "return"}``;
            raise ``StopIteration`` in one to stop early.
        checkpoint: file to save parameters and optimizer state to (atomically) every
            ``checkpoint_every`` steps and at the end.
        checkpoint_every: steps between checkpoints (default: only at the end).
        resume: continue from ``checkpoint`` if it exists: parameters, optimizer state, random
            generators and history come back, so a resumed CPU run ends bit-identical to one that
            was never interrupted.

    Returns:
        A :class:`FitResult` with the ELBO history.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"num_episodes must be an int >= 1, got {num_episodes!r}")
    if optim is None:
        if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        optim = pyro.optim.Adam({"lr": float(lr)})
    elif not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(
            f"optim must be a pyro.optim optimizer (e.g. pyro.optim.Adam), got {type(optim).__name__}"
        )
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    _place(model, guide, device)
    if seed is not None:
        pyro.set_rng_seed(int(seed))
    loss = TrajectoryELBO() if loss is None else loss
    svi = SVI(model, guide, optim, loss=loss)
    result = FitResult(svi=svi)
    start_step = 0
    if resume and checkpoint is not None:
        try:
            state = load_checkpoint(checkpoint, optim=optim, guide=guide)
        except FileNotFoundError:
            state = None
        if state is not None:
            start_step = state["step"]
            set_rng_state(state["rng"])  # continue the random stream: bit-identical to an uninterrupted run
            if "loss" in state["extra"] and hasattr(loss, "load_state_dict"):
                loss.load_state_dict(state["extra"]["loss"])
            result.elbo = list(state["extra"].get("elbo", []))
            result.returns = list(state["extra"].get("returns", []))
    began = time.perf_counter()
    bar = tqdm(range(start_step, num_steps), disable=not progress, desc="SVI", dynamic_ncols=True)
    step = start_step
    # with a checkpoint, a SIGINT/SIGTERM/SIGHUP saves before the next step and raises
    # TrainingInterrupted (a SystemExit); without one, signals keep their usual effect
    guard = signals.deferred_signals() if checkpoint is not None else contextlib.nullcontext()
    with guard:
        try:
            for step in bar:
                if checkpoint is not None and signals.pending() is not None:
                    _save(checkpoint, optim, step, result, loss)
                    _stop_if_signalled(checkpoint, step)
                value = -svi.step(num_episodes)
                traj = getattr(loss, "last", None)
                traj = traj.trajectory if traj is not None else None
                mean_return = traj.returns.mean().item() if traj is not None else float("nan")
                result.elbo.append(value)
                result.returns.append(mean_return)
                if progress:
                    bar.set_postfix(elbo=f"{value:.4g}", ret=f"{mean_return:.4g}", refresh=False)
                if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                    _save(checkpoint, optim, step + 1, result, loss)
                try:
                    for callback in callbacks:
                        callback(step, {"elbo": value, "return": mean_return})
                except StopIteration:
                    step += 1
                    break
            else:
                step = num_steps
        finally:
            bar.close()
        result.num_steps = max(step, start_step)
        result.wall_time = time.perf_counter() - began
        if checkpoint is not None:
            _save(checkpoint, optim, result.num_steps, result, loss)
            # a signal during the last step: the run is saved and complete; still stop as asked
            _stop_if_signalled(checkpoint, result.num_steps)
    return result


def _stop_if_signalled(checkpoint: str, step: int) -> None:
    """After the save: raise TrainingInterrupted for a pending signal, saying where and how to go on
    (a script that does not catch it exits with 128 + signum, and SystemExit prints nothing)."""
    try:
        signals.raise_if_pending(Path(checkpoint), step, unit="SVI steps")
    except signals.TrainingInterrupted as stop:
        print(
            f"rl_as_inference.fit: {stop}; resume with fit(..., checkpoint={str(checkpoint)!r}, resume=True)",
            file=sys.stderr,
        )
        raise


def _save(path: str, optim, step: int, result: FitResult, loss) -> None:
    extra = {"elbo": result.elbo, "returns": result.returns}
    if hasattr(loss, "state_dict"):
        extra["loss"] = loss.state_dict()
    save_checkpoint(path, optim=optim, step=step, extra=extra)


def _place(model, guide, device) -> None:
    env = getattr(model, "env", None)
    if device is None:
        return
    target = resolve_device(device)
    if env is not None and env.device.type != target.type:
        raise ValueError(
            f"device={device!r} but the model's env runs on {env.device}: build the env with device="
        )
    module = getattr(guide, "policy", None)
    if isinstance(module, torch.nn.Module):
        module.to(target)
