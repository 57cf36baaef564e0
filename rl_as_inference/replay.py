"""A replay buffer that lives on the device and is filled by batched rollouts."""

from __future__ import annotations

import torch

__all__ = ["ReplayBuffer", "transition_fields"]


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
        fields: dict[str, tuple[tuple[int, ...], torch.dtype]],
        *,
        device: torch.device | str = "cpu",
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.capacity, self.device = capacity, torch.device(device)
        self.storage = {
            name: torch.zeros((capacity, *shape), dtype=dtype, device=self.device)
            for name, (shape, dtype) in fields.items()
        }
        self.position = 0  # next slot to write
        self.size = 0

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

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A uniform random batch (with replacement) of stored transitions."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        return {key: value[index] for key, value in self.storage.items()}

    def state_dict(self) -> dict:
        """Everything needed to continue (the stored transitions and the counters)."""
        return {
            "storage": {k: v[: self.size].clone() for k, v in self.storage.items()},
            "position": self.position,
            "size": self.size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into a buffer with the same fields."""
        size = int(state["size"])
        for key, value in state["storage"].items():
            self.storage[key][:size] = value.to(self.device)
        self.position, self.size = int(state["position"]), size
