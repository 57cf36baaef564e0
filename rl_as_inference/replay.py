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

    def sample_n_step(
        self,
        batch_size: int,
        n: int,
        gamma: float,
        *,
        stride: int = 1,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """A uniform batch of n-step transitions (s_t, a_t, sum_k gamma^k r_{t+k}, s_{t+m}).

        Consecutive transitions of one env lie ``stride`` slots apart (the number of envs writing
        each :meth:`add`). The path stops early at the first step that ended its episode
        (``terminated`` or ``truncated``), so ``m <= n`` steps are summed. Returned fields: every
        stored field of the first step (``obs``, ``action``, ...), and ``reward`` (the discounted
        sum), ``next_obs`` (the observation after the last summed step), ``terminated`` (whether that
        step terminated) and ``discount`` = gamma^m, so that the target reads
        ``reward + discount * (1 - terminated) * V(next_obs)``. As Acme's n-step transition adder,
        the return sums rewards only, without off-policy correction. Needs a ``truncated`` field
        and a capacity that is a multiple of ``stride``.
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
        first = index[0]
        batch = {key: value[first] for key, value in self.storage.items()}
        reward = self.storage["reward"][index]
        terminated = self.storage["terminated"][index]
        ended = terminated | self.storage["truncated"][index]
        # alive[k]: no earlier step on the path ended its episode
        alive = torch.cat((torch.ones_like(ended[:1]), ~ended[:-1]), 0).cumprod(0).bool()
        discounts = gamma ** steps.to(reward.dtype)
        batch["reward"] = (alive * discounts[:, None] * reward).sum(0)
        last = alive.sum(0) - 1
        take = index.gather(0, last[None]).squeeze(0)
        batch["next_obs"] = self.storage["next_obs"][take]
        batch["terminated"] = self.storage["terminated"][take]
        batch["discount"] = gamma ** (last + 1).to(reward.dtype)
        return batch

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
