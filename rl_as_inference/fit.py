"""``fit``: stochastic variational inference on a trajectory model from a script."""

from __future__ import annotations

import contextlib
import math
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from tqdm import tqdm

from rl_as_inference.envs.base import resolve_device

from . import distributed as dp
from . import signals
from .checkpoint import (
    FORMAT,
    get_rng_state,
    load_tagged,
    restore_checkpoint,
    save_checkpoint,
    set_rng_state,
)
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
    distributed: bool = False,
) -> FitResult:
    """Maximize the ELBO of ``model`` over the guide's parameters with Pyro's SVI.

    Each step rolls out ``num_episodes`` episodes from the guide, replays them in the model and takes
    one optimizer step on the ELBO of the source's eq. (2) (eq. (10) with a uniform prior).

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
        distributed: data-parallel SVI over the ranks of a ``torch.distributed`` process group
            (joined from ``torchrun``'s environment if not yet initialized). Every rank runs this
            call with the same arguments and rolls out its own ``num_episodes`` episodes; the
            parameters are created by a first trace and broadcast from rank 0; each step's
            gradients are averaged over ranks (:class:`~rl_as_inference.distributed.DistributedOptim`
            wraps ``optim``), so every rank holds the same parameters after every step, and with
            the per-episode mean ELBO K ranks take the step one process would take with K x
            ``num_episodes`` episodes. ``TrajectoryELBO``'s running baseline is averaged over
            ranks. Rank r draws its episodes from seed :func:`~rl_as_inference.distributed.rank_seed`
            ``(seed, r)``. The history (ELBO, return) and the stats passed to callbacks are means
            over ranks; callbacks run on every rank and a ``StopIteration`` on any rank stops all.
            Only rank 0 shows progress and writes the checkpoint (which holds every rank's random
            state, so a resumed run continues each rank's stream; resuming with another world
            size is refused). A signal to any rank saves and stops all of them at the same step.

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
    loss = TrajectoryELBO() if loss is None else loss
    if distributed:
        optim, seed = _join(optim, loss, seed, device)
    if seed is not None:
        pyro.set_rng_seed(int(seed))
    svi = SVI(model, guide, optim, loss=loss)
    result = FitResult(svi=svi)
    start_step = 0
    state = _read_checkpoint(checkpoint, distributed) if resume and checkpoint is not None else None
    if state is not None:
        restore_checkpoint(state, optim=optim, guide=guide)
        start_step = state["step"]
        # continue the random stream: bit-identical to an uninterrupted run
        set_rng_state(state["extra"]["rank_rng"][dp.rank()] if distributed else state["rng"])
        if "loss" in state["extra"] and hasattr(loss, "load_state_dict"):
            loss.load_state_dict(state["extra"]["loss"])
        result.elbo = list(state["extra"].get("elbo", []))
        result.returns = list(state["extra"].get("returns", []))
    elif distributed:
        _same_start(model, guide, num_episodes, seed)
    progress = progress and (not distributed or dp.is_main())
    began = time.perf_counter()
    bar = tqdm(range(start_step, num_steps), disable=not progress, desc="SVI", dynamic_ncols=True)
    step = start_step
    # with a checkpoint, a SIGINT/SIGTERM/SIGHUP saves before the next step and raises
    # TrainingInterrupted (a SystemExit); without one, signals keep their usual effect
    guard = signals.deferred_signals() if checkpoint is not None else contextlib.nullcontext()
    signalled = 0  # the signal some rank received (after the previous step's agreement), or 0
    with guard:
        try:
            for step in bar:
                if not distributed:
                    signalled = signals.pending() or 0
                if checkpoint is not None and signalled:
                    _save(checkpoint, optim, step, result, loss, distributed)
                    _stop_if_signalled(checkpoint, step, signalled)
                value = -svi.step(num_episodes)
                traj = getattr(loss, "last", None)
                traj = traj.trajectory if traj is not None else None
                mean_return = traj.returns.mean().item() if traj is not None else float("nan")
                if distributed:  # one small all-reduce: the history is the mean over ranks
                    value, mean_return = dp.all_reduce_mean(torch.tensor([value, mean_return])).tolist()
                result.elbo.append(value)
                result.returns.append(mean_return)
                if progress:
                    bar.set_postfix(elbo=f"{value:.4g}", ret=f"{mean_return:.4g}", refresh=False)
                if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                    _save(checkpoint, optim, step + 1, result, loss, distributed)
                stop = False
                try:
                    for callback in callbacks:
                        callback(step, {"elbo": value, "return": mean_return})
                except StopIteration:
                    stop = True
                if distributed:  # agree on stopping and on signals (a signal may reach one rank)
                    local = torch.tensor([float(stop), float(signals.pending() or 0)])
                    agreed = dp.all_reduce_max(local).tolist()
                    stop, signalled = bool(agreed[0]), int(agreed[1])
                if stop:
                    step += 1
                    break
            else:
                step = num_steps
        finally:
            bar.close()
        result.num_steps = max(step, start_step)
        result.wall_time = time.perf_counter() - began
        if checkpoint is not None:
            _save(checkpoint, optim, result.num_steps, result, loss, distributed)
            # a signal during the last step: the run is saved and complete; still stop as asked
            _stop_if_signalled(checkpoint, result.num_steps, signalled or signals.pending() or 0)
    return result


def _join(optim, loss, seed: int | None, device) -> tuple:
    """Join the process group, wrap ``optim``, make the loss reduce its statistics over ranks and
    agree on a base seed (rank 0's, drawn when ``seed`` is None, so ranks never share a stream)."""
    if not dp.init_from_environment(device=resolve_device(device) if device is not None else None):
        raise ValueError(
            "fit(distributed=True) needs a torch.distributed process group: launch the script with "
            "`torchrun --nproc_per_node=K script.py` or call torch.distributed.init_process_group first"
        )
    if isinstance(loss, TrajectoryELBO):
        loss.distributed = True
    if not isinstance(optim, dp.DistributedOptim):
        optim = dp.DistributedOptim(optim)
    if seed is None:
        # from the OS: torch's and numpy's default generators start alike in every process
        seed = secrets.randbits(31) if dp.is_main() else 0
    return optim, dp.broadcast_object(int(seed))


def _same_start(model, guide, num_episodes: int, seed: int) -> None:
    """Create every parameter with one trace of the guide and the model replayed on it (all ranks
    from the same seed), broadcast rank 0's values, then give each rank its own stream."""
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(num_episodes)
        poutine.replay(model, trace=guide_trace)(num_episodes)
    dp.broadcast_param_store()
    module = getattr(guide, "policy", None)
    if isinstance(module, torch.nn.Module):
        dp.broadcast_tensors(list(module.buffers()))
    pyro.set_rng_seed(dp.rank_seed(seed, dp.rank()))


def _read_checkpoint(path: str, distributed: bool) -> dict | None:
    """The checkpoint at ``path`` (None if there is none); distributed, rank 0 reads it and sends
    it to the others (no shared file system needed), and a different world size is refused."""
    if distributed and not dp.is_main():
        state = dp.broadcast_object(None)
    else:
        try:
            state = load_tagged(path, FORMAT, "checkpoint")
        except (FileNotFoundError, ValueError) as exc:
            state = exc if isinstance(exc, ValueError) else None
        if distributed:
            dp.broadcast_object(state)
    if isinstance(state, ValueError):
        raise state
    if state is None or not distributed:
        return state
    saved = state["extra"].get("world_size")
    if saved != dp.world_size():
        raise ValueError(
            f"{path} was written by a run of world size {saved if saved is not None else '1 (not distributed)'}"
            f", this one has {dp.world_size()}: resume with the same number of processes "
            "(each rank continues its own random stream)"
        )
    return state


def _stop_if_signalled(checkpoint: str, step: int, signum: int) -> None:
    """After the save: raise TrainingInterrupted for a pending signal (``signum``, 0 for none: in a
    distributed run, possibly one another rank received), saying where and how to go on (a script
    that does not catch it exits with 128 + signum, and SystemExit prints nothing)."""
    if not signum:
        return
    signals.clear()
    try:
        raise signals.TrainingInterrupted(signum, Path(checkpoint), step, unit="SVI steps")
    except signals.TrainingInterrupted as stop:
        if dp.is_main():
            print(
                f"rl_as_inference.fit: {stop}; resume with fit(..., checkpoint={str(checkpoint)!r}, resume=True)",
                file=sys.stderr,
            )
        raise


def _save(path: str, optim, step: int, result: FitResult, loss, distributed: bool = False) -> None:
    extra = {"elbo": result.elbo, "returns": result.returns}
    if hasattr(loss, "state_dict"):
        extra["loss"] = loss.state_dict()
    if distributed:  # every rank's random state, gathered on rank 0 (a collective: all ranks call)
        extra["rank_rng"] = dp.gather_objects(get_rng_state())
        extra["world_size"] = dp.world_size()
        if not dp.is_main():
            return
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
