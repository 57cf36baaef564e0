"""The temperature alpha of the trajectory ELBO: fixed, scheduled, or learned by a dual.

alpha trades return against KL in the source's eq. (2), E_q[sum gamma^t r_t] - alpha KL(q || pi), and
against entropy in eq. (10). A fixed alpha is the source's setting; an annealed one sweeps from
exploration to exploitation; a learned one turns alpha into the Lagrange multiplier of a
constraint, which is easier to choose than alpha itself:

* eq. (10), maximum entropy: E_s[H(q(.|s))] >= target entropy (SAC's automatic temperature);
* eq. (2), KL-regularized: E_s[KL(q(.|s) || pi_k(.|s))] <= epsilon (a trust region, as in EM/MPO).

Both duals descend ``-log(alpha) * violation``, so alpha grows while the constraint is violated.
"""

from __future__ import annotations

import math

import torch

from rl_as_inference.optim import adam

__all__ = ["SCHEDULES", "Temperature"]

SCHEDULES = ("linear", "exponential")


class Temperature:
    """alpha for an algorithm's loop: read :attr:`value`, call :meth:`advance` once per loop
    iteration, and :meth:`dual_step` where a constraint is measured (only a learned alpha moves).

    Args:
        alpha: a fixed value (or the start of a schedule); None learns alpha by its dual.
        initial_alpha: the starting value of a learned alpha.
        alpha_final: with ``alpha``, anneal from ``alpha`` to this value over ``anneal_steps``.
        schedule: ``"linear"`` or ``"exponential"`` (geometric: constant ratio per step).
        anneal_steps: length of the schedule in the units given to :meth:`advance` (env steps).
        lr: Adam step size on log(alpha) for a learned alpha.
        device: where a learned alpha lives; it is read back only by :meth:`item`.
    """

    def __init__(
        self,
        *,
        alpha: float | None,
        initial_alpha: float = 1.0,
        alpha_final: float | None = None,
        schedule: str = "linear",
        anneal_steps: int = 1,
        lr: float = 1e-3,
        device: torch.device | str = "cpu",
    ):
        for name, v in (("alpha", alpha), ("initial_alpha", initial_alpha), ("alpha_final", alpha_final)):
            if v is not None and not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive finite number or None, got {v!r}")
        if alpha_final is not None and alpha is None:
            raise ValueError("alpha_final needs alpha (the start of the schedule); a learned alpha has none")
        if schedule not in SCHEDULES:
            raise ValueError(
                f"schedule={schedule!r} is not allowed; use one of {', '.join(map(repr, SCHEDULES))}"
            )
        if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or anneal_steps < 1:
            raise ValueError(f"anneal_steps must be an int >= 1, got {anneal_steps!r}")
        self.alpha, self.alpha_final, self.schedule, self.anneal_steps = (
            alpha,
            alpha_final,
            schedule,
            anneal_steps,
        )
        self.learned = alpha is None
        self.log_alpha = torch.tensor(
            math.log(initial_alpha if self.learned else alpha), device=device, requires_grad=self.learned
        )
        self.optimizer = adam([self.log_alpha], lr=lr) if self.learned else None
        self._value: float | torch.Tensor = self.log_alpha.detach().exp() if self.learned else float(alpha)

    @property
    def value(self) -> float | torch.Tensor:
        """alpha now: a Python float when fixed or scheduled, a detached 0-d device tensor when learned."""
        return self._value

    def item(self) -> float:
        """alpha as a Python float (a host read for a learned alpha: call it when logging only)."""
        return float(self._value)

    def advance(self, progress: int) -> None:
        """Move a scheduled alpha to its value at ``progress`` (env steps); no-op otherwise."""
        if self.alpha_final is None:
            return
        frac = min(max(progress / self.anneal_steps, 0.0), 1.0)
        if self.schedule == "linear":
            self._value = self.alpha + frac * (self.alpha_final - self.alpha)
        else:
            self._value = self.alpha * (self.alpha_final / self.alpha) ** frac

    def dual_step(self, violation: torch.Tensor) -> None:
        """One gradient step on the dual loss -log(alpha) * mean(violation) (learned alpha only).

        ``violation`` > 0 where the constraint is violated: ``target_entropy - H`` = ``log q(a|s) +
        target_entropy`` for eq. (10), ``KL(q || pi_k) - epsilon`` for eq. (2).
        """
        if not self.learned:
            return
        loss = -(self.log_alpha * violation.detach()).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._value = self.log_alpha.detach().exp()

    def state_dict(self) -> dict:
        """log(alpha), the schedule position and the dual's optimizer state (for checkpoints)."""
        state = {"log_alpha": self.log_alpha.detach().clone(), "value": self._value}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self._value = state["value"]
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
