"""A replay buffer that lives on the device and is filled by batched rollouts."""

from __future__ import annotations

import torch

__all__ = ["ReplayBuffer"]

FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


class ReplayBuffer:
    """Circular storage of transitions (s, a, r, s', terminated) as preallocated device tensors.

    ``add`` takes a batch of transitions (one per parallel env) and writes it with index arithmetic
    on Python counters, so neither adding nor sampling reads anything back from the device.
    ``terminated`` excludes time-limit truncations: those transitions still bootstrap.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        *,
        device: torch.device | str = "cpu",
        obs_dtype: torch.dtype = torch.float32,
        action_dtype: torch.dtype = torch.float32,
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.capacity, self.device = capacity, torch.device(device)
        self.storage = {
            "obs": torch.zeros((capacity, *obs_shape), dtype=obs_dtype, device=self.device),
            "action": torch.zeros((capacity, *action_shape), dtype=action_dtype, device=self.device),
            "reward": torch.zeros(capacity, dtype=torch.float32, device=self.device),
            "next_obs": torch.zeros((capacity, *obs_shape), dtype=obs_dtype, device=self.device),
            "terminated": torch.zeros(capacity, dtype=torch.bool, device=self.device),
        }
        self.position = 0  # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **batch: torch.Tensor) -> None:
        """Append a batch: keyword tensors ``obs, action, reward, next_obs, terminated`` with a leading [B]."""
        if set(batch) != set(FIELDS):
            raise ValueError(f"add() needs exactly the fields {FIELDS}, got {sorted(batch)}")
        n = batch["reward"].shape[0]
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
        size = int(state["size"])
        for key, value in state["storage"].items():
            self.storage[key][:size] = value.to(self.device)
        self.position, self.size = int(state["position"]), size
