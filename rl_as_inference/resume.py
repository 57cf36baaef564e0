"""Resumable training loops: periodic, atomic checkpoints of everything a run needs to continue.

An algorithm hands a :class:`Checkpointer` its components (networks, optimizers, duals, the
collector with its replay buffer, the temperature) and a dict of loop counters. Every ``every`` env
steps, at the top of its loop, the checkpointer writes all their states plus the global random
generators to one file, atomically (temporary file + rename), so a crash never leaves a torn
checkpoint and the previous one stays valid until the new one is complete. Resuming loads them
back in place; on CPU the continued run then ends with parameters bit-identical to an
uninterrupted one.

In a data-parallel run (``torch.distributed``, more than one rank) the ranks hold the same networks
and optimizers but their own envs, replay buffers and random generators. Attaching broadcasts rank
0's networks (each rank built its own from its own seed); saving gathers every rank's state to rank
0, which writes one file (rank 0's state where a single process keeps it, the others' under
``other_ranks``); resuming reads it on rank 0 and hands each rank its own part, and refuses a file
written with another number of ranks. The ranks agree on signals: one that reaches any rank saves
and stops all of them at the same step.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from rl_as_inference import distributed as dp
from rl_as_inference import signals
from rl_as_inference.checkpoint import (
    atomic_torch_save,
    get_rng_state,
    load_error_detail,
    load_tagged,
    set_rng_state,
)

__all__ = ["TRAIN_STATE_FORMAT", "Checkpointer", "read_train_state"]

TRAIN_STATE_FORMAT = "rl_as_inference.train_state/1"


def read_train_state(path: str | os.PathLike, map_location: str | torch.device | None = None) -> dict:
    """Load a training-state file (``weights_only=True``); a ValueError if it is corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no training state to resume from")
    return load_tagged(path, TRAIN_STATE_FORMAT, "training state", map_location)


def _state_of(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, list | tuple):
        return [_state_of(o) for o in obj]
    return obj.state_dict()


def _load_into(obj: Any, state: Any, name: str) -> None:
    if isinstance(obj, torch.Tensor):
        with torch.no_grad():
            obj.copy_(state)
    elif isinstance(obj, list | tuple):
        if len(obj) != len(state):
            raise ValueError(f"training state: {name} has {len(state)} entries, this run {len(obj)}")
        for i, (o, s) in enumerate(zip(obj, state, strict=True)):
            _load_into(o, s, f"{name}[{i}]")
    else:
        try:
            obj.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(
                f"training state: {name} does not fit this run's {name} ({load_error_detail(exc)}); "
                "was the config changed since it was written?"
            ) from None


def _tensors_of(components) -> list[torch.Tensor]:
    """The tensors among ``components`` (and inside lists of them): the duals of an algorithm."""
    out = []
    for c in components:
        if isinstance(c, torch.Tensor):
            out.append(c)
        elif isinstance(c, list | tuple):
            out += _tensors_of(c)
    return out


def _to_device(state: Any, device) -> Any:
    """``state`` with every tensor moved to ``device`` (the map_location of a state sent by rank 0)."""
    if device is None:
        return state
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_to_device(v, device) for v in state)
    return state


def _world_size_message(path, saved: int, now: int) -> str:
    return (
        f"{path} was written by a run on {saved} process(es), this one has {now}: resume with "
        f"--nproc {saved} (each rank continues its own envs, replay buffer and random streams)"
    )


class Checkpointer:
    """Writes and restores the full state of a training loop.

    Args:
        path: the training-state file (e.g. ``RUN_DIR/train_state.pt``); None: a checkpointer that
            never writes (what an algorithm uses when it is given none).
        every: env steps between checkpoints (0: only when :meth:`save` is called).
        resume: load ``path`` in :meth:`attach` and continue from it.
        device: where the loaded tensors go.
        meta: plain values saved with the state (``runs`` keeps the run's config there, to refuse
            resuming under another one).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        *,
        every: int = 0,
        resume: bool = False,
        device: str | torch.device | None = None,
        meta: dict | None = None,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(
                f"checkpoint_every={every!r} is not allowed; use an int >= 0 env steps (0: only at the end)"
            )
        if resume and path is None:
            raise ValueError("resume needs the path of a training state")
        self.path = None if path is None else Path(path)
        self.every, self.resume, self.device = every, resume, device
        self.meta = dict(meta or {})
        self.components: dict[str, Any] = {}
        self.loop: dict[str, Any] = {}
        self.algorithm = ""
        self.next_save = every if every else math.inf

    def attach(self, algorithm: str, components: dict[str, Any], loop: dict[str, Any]) -> bool:
        """Register what to save; when resuming, restore it all (random generators last) in place.

        Args:
            algorithm: the algorithm's name (a state of another algorithm is refused).
            components: objects with ``state_dict``/``load_state_dict``, tensors or lists of them.
            loop: the loop's counters, a dict updated in place on resume.

        Returns:
            True if a state was restored.
        """
        self.algorithm, self.components, self.loop = algorithm, components, loop
        if not self.resume:
            if dp.world_size() > 1:  # every rank starts from rank 0's networks and duals
                dp.broadcast_modules(c for c in components.values() if isinstance(c, torch.nn.Module))
                dp.broadcast_tensors(_tensors_of(components.values()))
            return False
        state = self._read_for_this_rank()
        if state["algorithm"] != algorithm:
            raise ValueError(f"{self.path} holds a {state['algorithm']} run, not {algorithm}")
        missing = sorted(set(components) - set(state["components"]))
        if missing:
            raise ValueError(f"{self.path} lacks the state of {', '.join(missing)}")
        for name, obj in components.items():
            _load_into(obj, state["components"][name], name)
        loop.update(state["loop"])
        env_steps = int(state["env_steps"])
        self.next_save = (env_steps // self.every + 1) * self.every if self.every else math.inf
        set_rng_state(state["rng"])
        return True

    def maybe_save(self, env_steps: int, wall_time: float) -> None:
        """Save if ``env_steps`` reached the next multiple of the interval (call at the loop's top);
        ``wall_time`` (seconds trained so far) is kept in the loop counters.

        Raises:
            TrainingInterrupted: a SIGINT, SIGTERM or SIGHUP arrived (inside
                :func:`~rl_as_inference.signals.deferred_signals`) since the last call; the state
                is saved first, so nothing is lost.
        """
        self.loop["wall_time"] = wall_time
        signum = signals.pending()
        if dp.world_size() > 1:  # one small all-reduce: a signal that reached any rank stops all
            signum = int(dp.all_reduce_max(torch.tensor([signum or 0]))[0]) or None
        if signum is not None:
            self.save(env_steps)
            signals.clear()
            raise signals.TrainingInterrupted(signum, self.path, int(env_steps))
        if env_steps >= self.next_save:
            self.save(env_steps)
            self.next_save = (env_steps // self.every + 1) * self.every

    def save(self, env_steps: int, wall_time: float | None = None) -> None:
        """Write the state of every component, the loop counters and the random generators."""
        if wall_time is not None:
            self.loop["wall_time"] = wall_time
        if self.path is None:
            return
        state = {
            "format": TRAIN_STATE_FORMAT,
            "algorithm": self.algorithm,
            "env_steps": int(env_steps),
            "components": {name: _state_of(obj) for name, obj in self.components.items()},
            "loop": dict(self.loop),
            "rng": get_rng_state(),
            "meta": self.meta,
        }
        if dp.world_size() > 1:
            ranks = dp.gather_objects({k: state[k] for k in ("components", "loop", "rng")})
            if not dp.is_main():
                return
            state["world_size"] = dp.world_size()
            state["other_ranks"] = ranks[1:]
        atomic_torch_save(state, self.path)

    def _read_for_this_rank(self) -> dict:
        """The training state to restore here: the file's, or in a data-parallel run this rank's part
        of the file rank 0 read (the others' parts are never loaded where they are not used)."""
        if dp.world_size() == 1:
            state = read_train_state(self.path, self.device)
            if state.get("world_size", 1) != 1:
                raise ValueError(_world_size_message(self.path, state["world_size"], 1))
            return state
        parts = None
        if dp.is_main():
            try:
                state = read_train_state(self.path, "cpu")
                saved = state.get("world_size", 1)
                if saved != dp.world_size():
                    raise ValueError(_world_size_message(self.path, saved, dp.world_size()))
                parts = [state] + [dict(state, **part) for part in state["other_ranks"]]
                for part in parts:
                    part.pop("other_ranks", None)
            except ValueError as exc:
                parts = [exc] * dp.world_size()
        mine = dp.scatter_objects(parts)
        if isinstance(mine, ValueError):
            raise mine
        return _to_device(mine, self.device)
