"""EM, coordinate ascent variant A of the source (eqs. 7, 8): parametric E-step, non-parametric M-step.

E-step (eq. 7): q_k = argmax_q E_q[Q] - alpha KL(q || pi_k), here as SVI on the H-step trajectory
model whose prior is pi_k (the source's eq. 2), for ``prior_update_every`` actor updates.
M-step (eq. 8): pi_{k+1} = argmin_pi KL(q_k || pi) over all policies is q_k itself: copy it.

This is exactly segment SVI (:mod:`rl_as_inference.algos.svi`) with ``objective="kl"``: the
temperature is the dual of the trust region E_s[KL(q || pi_k)] <= kl_bound. The module only fixes
those settings, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from rl_as_inference.algos import svi
from rl_as_inference.algos.registry import Algorithm, logged_or_configured
from rl_as_inference.algos.sac import TrainResult
from rl_as_inference.resume import Checkpointer

__all__ = ["EMConfig", "train"]


@dataclass
class EMConfig(svi.SVIConfig):
    """Segment-SVI settings with the EM defaults: KL objective, M-step every 100 actor updates."""

    algo_name: ClassVar[str] = "em"
    objective: str = "kl"
    prior_update_every: int = 100  # actor updates per E-step
    kl_bound: float = 0.05


def train(
    config: EMConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Alternate E-steps (SVI against pi_k) and M-steps (pi_{k+1} := q_k)."""
    if config.objective != "kl":
        raise ValueError(
            f"em optimizes the KL objective of the source's eq. (2); objective={config.objective!r} is svi's"
        )
    return svi.train(config, callback=callback, checkpointer=checkpointer)


ALGORITHM = Algorithm(
    needs_dynamics=True,
    name="em",
    config=EMConfig,
    train=train,
    temperature=logged_or_configured("alpha"),
    temperature_note="the E-step's alpha (dual of the KL bound): the config's fixed value, else the last logged one",
    elbo_note=(
        "EM's (segment SVI) logged 'elbo' = -ELBO loss: the E-step objective per start state "
        "(H-step segment against pi_k with a learned terminal soft value), not eq. 2's full-episode ELBO"
    ),
    elbo_units="nats",
)
