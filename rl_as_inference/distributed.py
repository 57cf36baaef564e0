"""Data parallelism on ``torch.distributed``: K processes, each rolling out its own episodes, that
hold identical parameters because every optimizer step applies the same averaged gradient.

The scheme is the one of data-parallel SGD (and of Pyro's Horovod wrapper): every rank computes the
gradient of its own loss, one all-reduce of all gradients flattened into a single buffer averages
them, and every rank applies the same optimizer step to the same parameters. With a loss that is a
mean over episodes (``TrajectoryELBO``'s default reduction), K ranks of N/K episodes each take the
step one process takes with the N episodes together:

    grad (1/N) sum_{i<N} f_i = (1/K) sum_k [ (1/(N/K)) sum_{i in rank k} f_i ]'

Processes are started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...);
:func:`init_from_environment` joins the group with gloo on CPU or NCCL on CUDA. Every collective of
this module runs under the group's timeout and turns a failure (a rank that died, a rank that
reached a different collective) into :class:`DistributedError` naming the rank and the operation, so
the surviving ranks exit with a message instead of hanging.

This module sits below the inference layer: it knows torch, Pyro's param store and nothing of
models or algorithms.
"""

from __future__ import annotations

import datetime
import os
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyro
import torch
import torch.distributed as dist
from pyro.optim import PyroOptim

__all__ = [
    "DistributedError",
    "DistributedOptim",
    "active",
    "all_gather_cat",
    "all_reduce_mean",
    "all_reduce_sum",
    "mean_of_finite",
    "average_gradients",
    "barrier",
    "broadcast_modules",
    "broadcast_object",
    "broadcast_param_store",
    "broadcast_tensors",
    "gather_objects",
    "scatter_objects",
    "init_from_environment",
    "is_main",
    "rank",
    "rank_seed",
    "world_size",
]

# Seconds a collective waits for the other ranks before failing (the default of torch, 30 minutes,
# would leave a run whose peer died hanging for half an hour). RLAI_DIST_TIMEOUT overrides it.
DEFAULT_TIMEOUT_S = 300.0


class DistributedError(RuntimeError):
    """A collective failed: another rank exited or is at a different point of the program."""


def active() -> bool:
    """True inside an initialized process group (of any size)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the rank that logs, shows progress and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes a process group (``torchrun`` sets these variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_environment(
    backend: str | None = None, timeout_s: float | None = None, device: torch.device | None = None
) -> bool:
    """Join the process group described by the environment (``torchrun``), if any and not yet joined.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when ``device`` is CUDA and every rank of
            this node has a GPU of its own, else gloo.
        timeout_s: seconds a collective waits (default ``RLAI_DIST_TIMEOUT`` or 300).
        device: where the tensors to reduce live; on CUDA each rank takes GPU ``LOCAL_RANK`` modulo
            the visible count (several ranks may share one GPU).

    Returns:
        Whether a process group is active afterwards.
    """
    if active():
        return True
    if not launched_by_torchrun():
        return False
    if timeout_s is None:
        timeout_s = float(os.environ.get("RLAI_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not timeout_s > 0:
        raise ValueError(f"the collective timeout must be > 0 seconds, got {timeout_s!r}")
    cuda = device is not None and torch.device(device).type == "cuda"
    if backend is None:
        # NCCL refuses two ranks of one communicator on the same GPU: with more ranks on this node
        # than GPUs, gloo (which reduces CUDA tensors through host memory) is the one that works
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        backend = "nccl" if cuda and per_node <= torch.cuda.device_count() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r} is not supported; choose 'gloo' (CPU) or 'nccl' (CUDA)")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def _collective(operation: str, fn, *args, **kwargs):
    """Run one collective, turning any failure into a DistributedError that names this rank."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses of several kinds
        raise DistributedError(
            f"rank {rank()} of {world_size()}: {operation} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); another rank has probably exited "
            "or is at a different step; see its output"
        ) from exc


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (a new tensor on ``tensor``'s device; ``tensor`` itself
    outside a process group)."""
    if not active() or world_size() == 1:
        return tensor
    out = tensor.detach().to(_device_of_group(), copy=True)
    _collective("all_reduce", dist.all_reduce, out, op=dist.ReduceOp.SUM)
    return out.div_(world_size()).to(tensor.device)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on all), concatenated along dim 0 in rank order
    (``tensor`` itself outside a process group); not differentiable."""
    if not active() or world_size() == 1:
        return tensor
    local = tensor.detach().to(_device_of_group()).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    _collective("all_gather", dist.all_gather, parts, local)
    return torch.cat(parts).to(tensor.device)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of ``tensor`` over ranks (a new tensor)."""
    if not active() or world_size() == 1:
        return tensor
    out = tensor.detach().to(_device_of_group(), copy=True)
    _collective("all_reduce", dist.all_reduce, out, op=dist.ReduceOp.MAX)
    return out.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor on ``tensor``'s device)."""
    if not active() or world_size() == 1:
        return tensor
    out = tensor.detach().to(_device_of_group(), copy=True)
    _collective("all_reduce", dist.all_reduce, out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def mean_of_finite(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks where it is finite (NaN where it is finite on none): the
    metric rows of a data-parallel run, where a rank may have finished no episode in an interval.
    Every rank must pass the same keys."""
    if not active() or world_size() == 1 or not values:
        return values
    keys = list(values)
    x = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    finite = torch.isfinite(x)
    sums = all_reduce_sum(torch.cat([torch.where(finite, x, 0.0), finite.double()]))
    total, count = sums[: len(keys)], sums[len(keys) :]
    means = torch.where(count > 0, total / count.clamp_min(1), float("nan"))
    return dict(zip(keys, means.tolist(), strict=True))


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace every ``p.grad`` by its mean over ranks, with one all-reduce of one flat buffer.

    Every rank must pass the same parameters in the same order. A parameter without a gradient
    counts as zero (and gets the averaged gradient, zero if no rank had one): deciding per
    parameter whether any rank had one would read the device once per step.
    """
    if not active() or world_size() == 1 or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    _collective("all_reduce of the gradients", dist.all_reduce, flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size())
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (one broadcast of a flat buffer
    per dtype and device)."""
    if not active() or world_size() == 1 or not tensors:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for members in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in members])
        _collective("broadcast", dist.broadcast, flat, src=src)
        offset = 0
        with torch.no_grad():
            for t in members:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n


def broadcast_modules(modules: Iterable[torch.nn.Module], src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers of ``modules`` (in place)."""
    seen: dict[int, torch.Tensor] = {}  # a module shared by two (an observation normalizer) once
    for m in modules:
        for t in m.state_dict(keep_vars=True).values():
            seen.setdefault(id(t), t)
    broadcast_tensors(list(seen.values()), src=src)


def barrier() -> None:
    """Wait until every rank is here (nothing outside a process group)."""
    if active() and world_size() > 1:
        _collective("barrier", dist.barrier)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself outside a process group)."""
    if not active() or world_size() == 1:
        return obj
    box = [obj]
    _collective("broadcast_object_list", dist.broadcast_object_list, box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` outside a group)."""
    if not active() or world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    _collective("all_gather_object", dist.all_gather_object, out, obj)
    return out


def scatter_objects(objs: list | None, src: int = 0) -> Any:
    """Rank r's entry of rank ``src``'s list ``objs`` (one per rank; ignored on other ranks)."""
    if not active() or world_size() == 1:
        return objs[0]
    out: list = [None]
    _collective(
        "scatter_object_list", dist.scatter_object_list, out, objs if rank() == src else None, src=src
    )
    return out[0]


def check_same_names(names: Sequence[str], what: str) -> None:
    """Raise a ValueError on every rank unless all ranks hold the same ``names`` (one small all-reduce)."""
    if not active() or world_size() == 1:
        return
    digest = zlib.crc32("\0".join(names).encode()) & 0x7FFFFFFF
    mine = torch.tensor([digest, -digest, len(names), -len(names)], dtype=torch.int64)
    seen = all_reduce_max(mine)
    if int(seen[0]) != -int(seen[1]) or int(seen[2]) != -int(seen[3]):
        raise ValueError(
            f"rank {rank()}: the ranks hold different {what} ({len(names)} here: "
            f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); every rank must run the same "
            "model and guide, creating the same parameters"
        )


def _device_of_group() -> torch.device:
    """Where tensors handed to this group's collectives must live (NCCL: this rank's GPU)."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_param_store(src: int = 0) -> list[str]:
    """Give every rank rank ``src``'s values of all parameters in Pyro's param store.

    Pyro creates parameters when a model or guide first runs, each rank from its own random state;
    call this after a first trace so that all ranks start from the same point. Returns the names.
    """
    store = pyro.get_param_store()
    names = sorted(store.keys())
    check_same_names(names, "Pyro parameters")
    broadcast_tensors([store._params[name] for name in names], src=src)
    return names


def rank_seed(seed: int, rank_: int) -> int:
    """The seed of rank ``rank_``'s random streams: ``seed`` itself on rank 0 (so a world of one
    repeats a single-process run), and a value derived by numpy's SeedSequence from ``(seed, rank)``
    elsewhere (streams of different ranks, and of nearby seeds, do not overlap in practice)."""
    if rank_ == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank_)]).generate_state(1, np.uint32)[0])


class DistributedOptim(PyroOptim):
    """A ``pyro.optim`` optimizer that averages gradients over ranks before every step.

    ``SVI(model, guide, DistributedOptim(pyro.optim.Adam({"lr": 1e-3})), loss=TrajectoryELBO())``
    under ``torchrun`` runs data-parallel: each rank's SVI step computes the gradient of its own
    episodes; this wrapper sorts the step's parameters by their param-store names (the same order
    on every rank), averages their gradients with one all-reduce of one flat buffer, and lets the
    wrapped optimizer step. Parameters seen for the first time are first overwritten with rank 0's
    values, so ranks that created them from different random states agree from the first step on.
    Outside a process group it is the wrapped optimizer. State (``get_state``/``set_state``,
    ``save``/``load``) is the wrapped optimizer's.
    """

    def __init__(self, optim: PyroOptim):
        if not isinstance(optim, PyroOptim):
            raise TypeError(
                f"DistributedOptim wraps a pyro.optim optimizer (e.g. pyro.optim.Adam), got {type(optim).__name__}"
            )
        if isinstance(optim, DistributedOptim):
            optim = optim.inner
        # The wrapped optimizer keeps every piece of state; PyroOptim.__init__ is not called, so the
        # attributes it would set (optim_objs, ...) resolve to the wrapped one's through __getattr__.
        self.inner = optim
        # name -> the tensor already broadcast (PyroOptim keeps the same tensors alive anyway); a
        # parameter re-created under an old name is a new tensor and is broadcast again
        self._seen: dict[str, torch.Tensor] = {}

    def __getattr__(self, name: str):
        if name == "inner":  # not yet set: unpickling or a half-built object
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, params: Iterable[torch.Tensor], *args, **kwargs) -> None:
        name_of = pyro.get_param_store().param_name
        params = sorted(params, key=name_of)
        if active() and world_size() > 1:
            new = [p for p in params if self._seen.get(name_of(p)) is not p]
            if new:
                check_same_names([name_of(p) for p in params], "parameters in this SVI step")
                broadcast_tensors(new)
                self._seen.update((name_of(p), p) for p in new)
            average_gradients(params)
        self.inner(params, *args, **kwargs)

    def get_state(self) -> dict:
        return self.inner.get_state()

    def set_state(self, state_dict: dict) -> None:
        self.inner.set_state(state_dict)

    def save(self, filename: str) -> None:
        self.inner.save(filename)

    def load(self, filename: str, map_location=None) -> None:
        self.inner.load(filename, map_location=map_location)
