"""The site-naming convention of trajectory models and guides.

Everything that consumes a trajectory model (``TrajectoryELBO``, ``fit``, diagnostics) reads its
Pyro trace through these names only, so a user's own model written as a plain Pyro function works
everywhere as long as it follows them:

======================  =====================================================================
site                    meaning
======================  =====================================================================
``pyro.plate("episodes", N, dim=-1)``   independent episodes; every per-step site lives inside it
``s_0``                 initial state: a sample site from p(s_0) (no site when the caller
                        passes the initial states)
``a_t``                 action at step t (t = 0..H-1): a latent sample site, drawn from the prior
                        pi(a_t|s_t) in the model and from q(a_t|s_t) in the guide; every one of
                        them must be in the guide
``s_t`` (t >= 1)        state after step t-1: a sample site with the same distribution in model
                        and guide when the dynamics are stochastic (the source's eq. 12, the log-probs
                        cancel); deterministic dynamics need no site (the built-in models return
                        every state in their ``Trajectory``, the ``_RETURN`` value of a trace)
``O_t`` (t < H)         optimality factor ``pyro.factor("O_t", r_t / alpha)``, model only;
                        r_t = r(s_t, a_t) (a reward that also depends on s_{t+1} is credited
                        correctly too: the transition s_{t+1} is booked at step t)
``O_H``                 optional terminal factor ``V(s_H) / alpha`` (truncated horizons)
anything else           a per-episode latent (e.g. an unknown physical parameter) is credited
                        with the whole trajectory's cost; an observed site (a measurement at the
                        end of the episode) is booked at the last step, so every action is
                        credited with it
======================  =====================================================================

**Discounting.** gamma is a per-step continuation probability: step t's sites (``a_t``, ``s_{t+1}``,
``O_t``) run under ``poutine.scale(scale=gamma**t)`` and ``O_H`` under gamma^H, in the model and
in the guide alike (the episode ends, with probability 1 - gamma after every step, in an absorbing
state with zero reward). Pyro's own ``Trace_ELBO`` then computes
E_q[sum_t gamma^t (r_t / alpha - KL(q(.|s_t) || pi(.|s_t)))], the ELBO that ``TrajectoryELBO``
estimates; importance weights marginalize the death time (:mod:`rl_as_inference.ledger`).

Steps after an episode terminates are masked out with ``poutine.mask``. The time index t is what
gives score-function gradients their reward-to-go credit: ``a_t`` is credited with the costs of
times >= t only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

EPISODES = "episodes"

_PATTERN = re.compile(r"^([asO])_(\d+)$")
_ROLES = {"a": "action", "s": "state", "O": "factor"}


def action_site(t: int) -> str:
    """Name of the action site at step t: ``a_t``."""
    return f"a_{t}"


def state_site(t: int) -> str:
    """Name of the state site at time t: ``s_t``."""
    return f"s_{t}"


def factor_site(t: int) -> str:
    """Name of the optimality factor at step t (``O_H`` for the terminal factor)."""
    return f"O_{t}"


class SiteInfo(NamedTuple):
    """What a site name means: role in ``{"action", "state", "factor", "global"}`` and time (None if global)."""

    role: str
    time: int | None


def parse_site(name: str) -> SiteInfo:
    """Classify a site name by the convention above."""
    match = _PATTERN.match(name)
    if match is None:
        return SiteInfo("global", None)
    return SiteInfo(_ROLES[match.group(1)], int(match.group(2)))


def sample_sites(trace, *, latent_only: bool) -> Iterator[tuple[str, dict]]:
    """The sample sites of a Pyro trace that enter log p or log q (no subsample or deterministic
    sites); ``latent_only`` also drops observed ones (factors, observations)."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_deterministic"):
            continue
        if latent_only and site["is_observed"]:
            continue
        yield name, site


def site_log_prob(site: dict, *, scaled: bool = True) -> torch.Tensor:
    """log p(value) of a traced site, masked as Pyro's own ELBOs do (per element, unsummed), and
    scaled by the site's scale unless ``scaled=False`` (the site ledger keeps the scale apart: it is
    the step's continuation probability)."""
    lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(lp, site["scale"] if scaled else 1.0, site["mask"])
