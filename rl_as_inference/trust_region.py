"""A TRPO-style trust-region update: ELBO (2) against the previous iterate with a hard KL bound.

The source's eq. (2) with the prior pi set to the previous policy q_k is the KL-regularized objective of
the trust-region family. TRPO enforces E_s[KL(q_{k+1}(.|s) || q_k(.|s))] <= delta with a line
search; this module does the same around any gradient: step along -grad of the surrogate loss,
then halve the step until the realized KL, measured on states the caller chooses, is within the
bound (and give the step up if it never is). The bound therefore holds by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["TrustRegion"]


class TrustRegion:
    """Gradient steps with a backtracking line search on the realized KL.

    Args:
        params: the parameters of q (updated in place).
        kl_bound: delta, the largest mean KL(q_new || q_old) a step may realize.
        step_size: the first step length tried (along the normalized gradient).
        max_backtracks: halvings tried before the step is abandoned.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        kl_bound: float,
        step_size: float = 1.0,
        max_backtracks: int = 12,
    ):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("TrustRegion needs at least one parameter")
        if not kl_bound > 0:
            raise ValueError(f"kl_bound must be positive, got {kl_bound}")
        self.kl_bound, self.step_size, self.max_backtracks = (
            float(kl_bound),
            float(step_size),
            int(max_backtracks),
        )

    def step(self, loss_fn: Callable[[], torch.Tensor], kl_fn: Callable[[], torch.Tensor]) -> dict:
        """One update.

        Args:
            loss_fn: the differentiable surrogate to decrease (e.g. ``TrajectoryELBO().differentiable_loss``
                of a model whose prior is a frozen copy of q).
            kl_fn: the realized mean KL(q_current || q_old) on fixed states (evaluated without gradients
                after each trial step; q_old is the caller's frozen copy).

        Returns:
            ``{"accepted": bool, "step": length taken, "kl": realized KL, "backtracks": halvings}``.
        """
        loss = loss_fn()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp_min(1e-12)
        old = [p.detach().clone() for p in self.params]
        step = self.step_size
        for backtracks in range(self.max_backtracks + 1):
            with torch.no_grad():
                for p, p0, g in zip(self.params, old, grads, strict=True):
                    p.copy_(p0 - step * g / norm)
                kl = float(kl_fn())
            if kl <= self.kl_bound:
                return {"accepted": True, "step": step, "kl": kl, "backtracks": backtracks}
            step *= 0.5
        with torch.no_grad():
            for p, p0 in zip(self.params, old, strict=True):
                p.copy_(p0)
        return {"accepted": False, "step": 0.0, "kl": 0.0, "backtracks": self.max_backtracks}
