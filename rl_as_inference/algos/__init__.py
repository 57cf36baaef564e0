"""Algorithms of the source's family, each a small module that reads top to bottom.

- ``svi``: trajectory SVI over H-step segments with a learned soft terminal value (the flagship),
  started at replayed states or, in ``svi_rollout``, continuing the learner's own envs;
- ``sac``: its H = 1, no-dynamics-gradient special case;
- ``em``: coordinate ascent variant A (SVI E-step against pi_k, M-step pi_{k+1} := q_k);
- ``mpo``: variant B (non-parametric E-step with a temperature dual, KL-constrained weighted
  maximum likelihood M-step), Gaussian and categorical policies, off-policy from a replay buffer;
- ``softq``: soft Q-learning for Discrete actions: one critic, its policy the closed-form E-step
  q proportional to pi exp(Q / alpha);
- ``vmpo``: on-policy V-MPO (top-half advantages, learned state value, KL-constrained M-step).

``registry`` declares what the layers above need of each (``Algorithm``); ``collect`` (replay collection) is shared by the off-policy ones, ``segments`` carries the envs of
on-policy segment SVI, ``schedules`` decays learning rates over the budget.
"""

from . import em, mpo, sac, softq, svi, vmpo
from .registry import Algorithm

# Every algorithm's registration (its module's ALGORITHM), by name: what runs, the command line and
# the diagnostics read; adding an algorithm is its module plus one entry here and a recipe section.
REGISTRY: dict[str, Algorithm] = {m.ALGORITHM.name: m.ALGORITHM for m in (em, mpo, sac, softq, svi, vmpo)}

__all__ = ["REGISTRY", "Algorithm", "em", "mpo", "sac", "softq", "svi", "vmpo"]
