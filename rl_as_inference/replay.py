"""A replay buffer that lives on the device and is filled by batched rollouts.

It stores transitions and returns them, one at a time or as n-step paths; it computes no returns
(the targets of :mod:`rl_as_inference.bellman` need the current policy along the path)."""

from __future__ import annotations

import math

import torch

__all__ = ["ReplayBuffer", "available_memory", "storage_bytes", "transition_fields"]

Fields = dict[str, tuple[tuple[int, ...], torch.dtype]]


def transition_fields(
    obs_shape: tuple[int, ...],
    action_shape: tuple[int, ...],
    *,
    obs_dtype: torch.dtype = torch.float32,
    action_dtype: torch.dtype = torch.float32,
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The fields of a plain transition (s, a, r, s', terminated) for :class:`ReplayBuffer`."""
    return {
        "obs": (obs_shape, obs_dtype),
        "action": (action_shape, action_dtype),
        "reward": ((), torch.float32),
        "next_obs": (obs_shape, obs_dtype),
        "terminated": ((), torch.bool),
    }


def storage_bytes(capacity: int, fields: Fields) -> int:
    """Bytes that ``capacity`` transitions of ``fields`` take (what :class:`ReplayBuffer` allocates)."""
    return capacity * sum(math.prod(shape) * dtype.itemsize for shape, dtype in fields.values())


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device``, or None where that is not known.

    CUDA: the free memory the driver reports. CPU: Linux's ``MemAvailable`` (memory that can be
    handed out without swapping), lowered to a cgroup v2 limit's headroom inside a container;
    None on other systems.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        return None
    try:
        with (
            open("/sys/fs/cgroup/memory.max") as limit_file,
            open("/sys/fs/cgroup/memory.current") as used_file,
        ):
            limit, used = limit_file.read().strip(), used_file.read().strip()
        if limit != "max" and free is not None:
            free = min(free, max(int(limit) - int(used), 0))
    except (OSError, ValueError):
        pass
    return free


def _gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


class ReplayBuffer:
    """Circular storage of transitions as preallocated device tensors, one per named field.

    ``add`` takes a batch of transitions (one per parallel env) and writes it with index arithmetic
    on Python counters, so neither adding nor sampling reads anything back from the device. By
    convention ``terminated`` excludes time-limit truncations: those transitions still bootstrap.

    Args:
        capacity: number of transitions kept (the oldest are overwritten).
        fields: ``{name: (shape of one transition's entry, dtype)}``, e.g. :func:`transition_fields`
            plus the functional env's ``state`` for algorithms that re-simulate from stored states.
        device: where the storage lives.
    """

    def __init__(
        self,
        capacity: int,
        fields: Fields,
        *,
        device: torch.device | str = "cpu",
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.capacity, self.device = capacity, torch.device(device)
        self._check_fits(fields)
        self.storage = {
            name: torch.zeros((capacity, *shape), dtype=dtype, device=self.device)
            for name, (shape, dtype) in fields.items()
        }
        self.position = 0  # next slot to write
        self.size = 0

    def _check_fits(self, fields: Fields) -> None:
        # Zero-filling a buffer larger than the free memory gets the process killed by the
        # kernel's OOM killer, with no message, so say before allocating what would not fit.
        needed = storage_bytes(self.capacity, fields)
        free = available_memory(self.device)
        if free is None or needed <= free:
            return
        per = needed // self.capacity
        largest = max(fields, key=lambda name: storage_bytes(1, {name: fields[name]}))
        raise ValueError(
            f"a replay buffer of capacity {self.capacity:,} (a run's buffer_size) needs "
            f"{_gigabytes(needed)} ({per:,} bytes per transition, the largest field {largest!r} of shape "
            f"{tuple(fields[largest][0])}) and {self.device} has {_gigabytes(free)} available; "
            f"at most {free // per:,} transitions fit: lower buffer_size"
        )

    def __len__(self) -> int:
        return self.size

    def add(self, **batch: torch.Tensor) -> None:
        """Append a batch: one keyword tensor per field, each with a leading batch dimension [B]."""
        if set(batch) != set(self.storage):
            raise ValueError(f"add() needs exactly the fields {sorted(self.storage)}, got {sorted(batch)}")
        n = next(iter(batch.values())).shape[0]
        if n > self.capacity:
            raise ValueError(f"a batch of {n} transitions does not fit a buffer of capacity {self.capacity}")
        index = (torch.arange(n, device=self.device) + self.position) % self.capacity
        for key, value in batch.items():
            self.storage[key][index] = value.to(self.storage[key].dtype)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def truncate_latest(self, count: int) -> None:
        """Mark the ``count`` most recent transitions as time-limit ends (``truncated`` = True).

        For episodes cut where they stand, as a resumed run's restarted envs cut theirs: an n-step
        path (:meth:`sample_n_step`) then ends at such a transition and bootstraps from its stored
        next state, instead of running on into the restarted episode as if it followed it."""
        if "truncated" not in self.storage:
            raise ValueError("truncate_latest needs a 'truncated' field")
        count = min(count, self.size)
        index = (self.position - 1 - torch.arange(count, device=self.device)) % self.capacity
        self.storage["truncated"][index] = True

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A uniform random batch (with replacement) of stored transitions."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        return {key: value[index] for key, value in self.storage.items()}

    def sample_n_step(
        self,
        batch_size: int,
        n: int,
        *,
        stride: int = 1,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """A uniform batch of n-step paths (s_t, a_t, r_t, ..., s_{t+n-1}, a_{t+n-1}, r_{t+n-1}, s_{t+n}).

        Consecutive transitions of one env lie ``stride`` slots apart (the number of envs writing
        each :meth:`add`). Returned fields: every stored field of the path's first step (``obs``,
        ``action``, ``reward``, ``next_obs``, ...: a one-step transition), ``path``, a dict of every
        stored field along the path as ``[n, B, ...]`` tensors, and ``last``, ``[B]`` the index of
        the path's last step: the first that ended its episode (``terminated`` or ``truncated``),
        else n - 1. Steps after ``last`` belong to the env's next episode; the targets built from a
        path (:func:`rl_as_inference.bellman.n_step_target`, :func:`~rl_as_inference.bellman.
        retrace_target`) never use them. Nothing is summed here: the KL terms of T^{pi,q} along the
        path depend on the current policy, so the learner evaluates them on the stored actions.
        Needs a ``truncated`` field and a capacity that is a multiple of ``stride``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if "truncated" not in self.storage:
            raise ValueError("n-step sampling needs a 'truncated' field to stop paths at episode ends")
        if self.capacity % stride:
            raise ValueError(f"capacity {self.capacity} is not a multiple of stride {stride}")
        usable = self.size - (n - 1) * stride  # start slots whose whole path has been written
        if usable <= 0:
            raise ValueError(f"{self.size} stored transitions are too few for {n}-step paths")
        oldest = (self.position - self.size) % self.capacity
        start = torch.randint(0, usable, (batch_size,), device=self.device, generator=generator)
        steps = torch.arange(n, device=self.device)
        index = (oldest + start + stride * steps[:, None]) % self.capacity  # [n, B]
        path = {key: value[index] for key, value in self.storage.items()}
        batch = {key: value[0] for key, value in path.items()}  # the first step: views, no second gather
        batch["path"] = path
        ended = batch["path"]["terminated"] | batch["path"]["truncated"]
        # alive[k]: no earlier step on the path ended its episode
        alive = torch.cat((torch.ones_like(ended[:1]), ~ended[:-1]), 0).cumprod(0).bool()
        batch["last"] = alive.sum(0) - 1
        return batch

    def state_dict(self) -> dict:
        """Everything needed to continue (the stored transitions and the counters)."""
        return {
            "storage": {k: v[: self.size].clone() for k, v in self.storage.items()},
            "position": self.position,
            "size": self.size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into a buffer with the same fields (a ValueError names any
        field that one has and the other lacks: a buffer built with other settings)."""
        extra, missing = set(state["storage"]) - set(self.storage), set(self.storage) - set(state["storage"])
        if extra or missing:
            raise ValueError(
                f"replay state does not fit this buffer (saved with other settings): fields missing "
                f"from it {sorted(missing)}, fields this buffer does not have {sorted(extra)}"
            )
        size = int(state["size"])
        for key, value in state["storage"].items():
            self.storage[key][:size] = value.to(self.device)
        self.position, self.size = int(state["position"]), size
