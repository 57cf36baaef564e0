"""The site ledger: one booking of a trajectory's sites per time row, read by every consumer.

``TrajectoryELBO`` (its cost rows and its score-function credit, traced or fused), its
``log_weights`` and the diagnostics all read a trajectory model and its guide through a
:class:`SiteLedger`, so the four cannot book a site differently. A ledger is filled either from a
(model, guide) trace pair (:func:`from_traces`, any model that follows
:mod:`rl_as_inference.models.sites`) or during one fused rollout of a built-in model and guide
(:class:`FusedSites`).

**Rows.** Row t holds the costs that step t adds and that no earlier choice can be blamed for:

=====================================  ===========================================================
site                                   row
=====================================  ===========================================================
``a_t``, ``O_t``                       t
``s_{t+1}`` (stochastic transition)    t: it is drawn by step t from p(s_{t+1} | s_t, a_t)
``s_0``, per-episode latents           0: upstream of every step
``O_H`` (terminal factor)              H, the last row
observed sites outside the convention  the last row: they may depend on the whole trajectory, so
                                       every choice is credited with them
sites outside the ``episodes`` plate   the global cost (shape ``[]``)
=====================================  ===========================================================

A non-reparameterized site x of row t gets the score-function term log q(x) (sum of the costs of
rows >= t, minus a baseline that does not depend on x): reward-to-go credit. The costs of row t
itself are included, so a transition s_{t+1} is credited with r_t as well (a reward r(s, a, s') is
handled correctly; for r(s, a) the extra term has zero expectation).

**Discounting.** Step t's sites run under ``poutine.scale(gamma**t)``: gamma is a continuation
probability and c_t = gamma^t the probability that the episode is still running at step t
(the trajectory model ends in an absorbing state with zero reward after every step with
probability 1 - gamma, in the model and in q alike). Each entry keeps its unscaled, masked
log-density l and its scale c; then

- the ELBO's cost of row t is sum_sites c_t l (what Pyro's ``Trace_ELBO`` sums), so
  ELBO = E_q[ sum_t gamma^t (r_t / alpha - KL(q(.|s_t) || pi(.|s_t))) ];
- the importance weight marginalizes the death time exactly: with L_r = sum_{k <= r} l_k (the
  unscaled log p(tau, O) - log q(tau) of rows 0..r) and c_R = 0 after the last row,

      log w = logsumexp_r [ log(c_r - c_{r+1}) + L_r ],

  an unbiased weight, E_q[w] = p(O). The discounted sum sum_r c_r l_r is only its expectation over
  the death time, E_q[sum_r c_r l_r] = ELBO <= E_q[log w] <= log p(O).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro.distributions import constraints
from pyro.distributions.util import scale_and_mask

from rl_as_inference.models.sites import parse_site, sample_sites, site_log_prob

__all__ = [
    "LAST_ROW",
    "Entry",
    "FusedSites",
    "check_support_inside",
    "ScoreSite",
    "SiteLedger",
    "from_traces",
    "row_of",
    "without_rsample",
]

LAST_ROW = -1  # booked at the last row, whichever that turns out to be
_SCALE_RTOL = 1e-6

KL = Callable[[object, object], "torch.Tensor | None"]


class Entry(NamedTuple):
    """One site's contribution to log p(tau, O) - log q(tau): ``value`` ``[N]`` unscaled and masked,
    entering the ELBO as ``scale * value``."""

    name: str
    row: int
    value: torch.Tensor
    scale: float | torch.Tensor


class ScoreSite(NamedTuple):
    """A non-reparameterized guide site: its unscaled, masked log q ``[N]`` (or ``[]`` outside the
    plate, ``row`` None: credited with the whole cost)."""

    name: str
    row: int | None
    log_q: torch.Tensor


def row_of(name: str, *, observed: bool) -> int:
    """The row a site is booked at (module table); :data:`LAST_ROW` for observed sites outside the
    convention."""
    info = parse_site(name)
    if info.role in ("action", "factor"):
        return info.time
    if info.role == "state":
        return max(info.time - 1, 0)
    return LAST_ROW if observed else 0


class SiteLedger:
    """The per-row accounting of one evaluation of a trajectory model against its guide.

    Attributes:
        entries: every site's :class:`Entry` (model sites with +log p, guide sites with -log q, or
            -KL(q || pi) for an action whose KL is analytic).
        global_terms: scaled contributions of sites outside the ``episodes`` plate.
        global_latents: the names of the latent sites among them.
        score_sites: the non-reparameterized guide sites whose log q carries a gradient.
        horizon: H, one more than the last action step seen.
    """

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.global_terms: list[torch.Tensor] = []
        self.global_latents: list[str] = []
        self.score_sites: list[ScoreSite] = []
        self.horizon = 0
        self.num_episodes: int | None = None
        self._discounted: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = (
            None  # of the entries so far
        )

    # ------------------------------------------------------------------ booking
    def book(
        self,
        name: str,
        row: int,
        value: torch.Tensor,
        scale: float | torch.Tensor = 1.0,
        *,
        latent: bool = False,
    ) -> None:
        """Book ``scale * value`` at ``row``: ``value`` is ``[N]`` inside the plate, ``[]`` outside
        (``latent`` marks a latent site there: it has no per-episode weight)."""
        self._discounted = None
        if value.dim() == 0:
            self.global_terms.append(value * scale)
            if latent and name not in self.global_latents:
                self.global_latents.append(name)
            return
        self._check_shape(name, value)
        self.entries.append(Entry(name, row, value, scale))

    def book_score(self, name: str, row: int | None, log_q: torch.Tensor) -> None:
        """Record a score-function site (``row`` None outside the plate)."""
        if log_q.dim():
            self._check_shape(name, log_q)
        self.score_sites.append(ScoreSite(name, row if log_q.dim() else None, log_q))

    def note_action(self, t: int) -> None:
        """An action site a_t was seen (the horizon is the last action step + 1)."""
        self.horizon = max(self.horizon, t + 1)

    def _check_shape(self, name: str, value: torch.Tensor) -> None:
        if value.dim() != 1 or (self.num_episodes is not None and value.shape[0] != self.num_episodes):
            raise ValueError(
                f"site {name!r} has log-prob shape {tuple(value.shape)}: trajectory sites must be inside "
                "pyro.plate('episodes', N) (shape [N]) or global (shape [])"
            )
        self.num_episodes = value.shape[0]

    # ------------------------------------------------------------------ views
    @property
    def num_rows(self) -> int:
        """R: rows 0..H at least (row H holds the terminal factor, when there is one)."""
        rows = [e.row for e in self.entries if e.row != LAST_ROW]
        return max([self.horizon, *rows]) + 1

    def _row(self, entry: Entry) -> int:
        return self.num_rows - 1 if entry.row == LAST_ROW else entry.row

    def _dtype_device(self) -> tuple[torch.dtype, torch.device]:
        if self.num_episodes is None:
            raise ValueError("the model has no site inside pyro.plate('episodes', N): nothing to estimate")
        dtype = torch.float32
        for e in self.entries:
            dtype = torch.promote_types(dtype, e.value.dtype)
        return dtype, self.entries[0].value.device

    def costs(self) -> torch.Tensor:
        """``[R, N]`` the ELBO's cost of each row: sum over its sites of scale * value."""
        dtype, device = self._dtype_device()
        rows: list[torch.Tensor | None] = [None] * self.num_rows
        for e in self.entries:
            r = self._row(e)
            term = e.value.to(dtype) * e.scale
            rows[r] = term if rows[r] is None else rows[r] + term
        zeros = torch.zeros(self.num_episodes, dtype=dtype, device=device)
        return torch.stack([zeros if r is None else r.expand(self.num_episodes) for r in rows])

    def global_cost(self) -> torch.Tensor:
        """The summed cost of the sites outside the ``episodes`` plate (0-d)."""
        dtype, device = self._dtype_device()
        total = torch.zeros((), dtype=dtype, device=device)
        for term in self.global_terms:
            total = total + term.to(dtype)
        return total

    def discounted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unscaled log ratios per row and the continuation probabilities, in float64.

        Returns:
            ``(log_ratios [R, N], survival [R, N], always [N])``: row r's unscaled sum of log p - log q,
            the probability c_r that row r is reached (the scale of its sites; a row without sites
            keeps the previous row's), and the part of unit scale booked at a later row (observed
            sites outside the convention), which counts whatever the death time.

        Raises:
            ValueError: sites of one row run under different scales, or the scales are not
                continuation probabilities (in [0, 1], non-increasing over rows).
        """
        if self._discounted is None:
            self._discounted = self._discount()
        return self._discounted

    def _discount(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, device = self._dtype_device()
        n, f64 = self.num_episodes, torch.float64
        num_rows = self.num_rows
        log_ratios = torch.zeros(num_rows, n, dtype=f64, device=device)
        always = torch.zeros(n, dtype=f64, device=device)
        scales: list[torch.Tensor | None] = [None] * num_rows
        names: list[str] = [""] * num_rows
        # Sites of a step fix its scale first; sites booked at the last row only because they lie
        # outside the convention then either share it or, at unit scale, count at every death time.
        for e in sorted(self.entries, key=lambda e: e.row == LAST_ROW):
            r = self._row(e)
            scale = torch.as_tensor(e.scale, dtype=f64, device=device).expand(n)
            if scales[r] is None:
                scales[r], names[r] = scale, e.name
            elif not torch.allclose(scale, scales[r], rtol=_SCALE_RTOL, atol=0.0):
                if e.row == LAST_ROW and bool((scale == 1).all()):
                    always = always + e.value.to(f64)
                    continue
                raise ValueError(
                    f"site {e.name!r} runs under scale {_describe(scale)} but site {names[r]!r} of the same "
                    f"step under {_describe(scales[r])}: every site of step t runs under the same "
                    "poutine.scale(gamma**t), the probability that the episode is still running"
                )
            log_ratios[r] = log_ratios[r] + e.value.to(f64)
        survival = torch.empty(num_rows, n, dtype=f64, device=device)
        previous = torch.ones(n, dtype=f64, device=device)
        for r in range(num_rows):
            survival[r] = previous if scales[r] is None else scales[r]
            previous = survival[r]
        if bool((survival > 1 + _SCALE_RTOL).any()) or bool((survival < 0).any()):
            raise ValueError(
                f"site scales must be continuation probabilities in [0, 1] (gamma**t); got "
                f"{_describe(survival.max())} at most"
            )
        drop = survival[:-1] - survival[1:]
        if bool((drop < -_SCALE_RTOL * survival[1:]).any()):
            r = int(torch.nonzero((drop < -_SCALE_RTOL * survival[1:]).any(1))[0, 0]) + 1
            raise ValueError(
                f"site {names[r]!r} runs under a larger scale than step {r - 1}'s sites: the scales are "
                "continuation probabilities gamma**t and cannot grow with t"
            )
        return log_ratios, survival, always

    def log_weights(self) -> torch.Tensor:
        """``[N]`` log w = logsumexp_r [log(c_r - c_{r+1}) + L_r] (+ unit-scale extras), float64.

        The death time marginalized exactly (module docstring): E_q[w] = p(O). With every scale 1
        (gamma = 1) it is the plain sum of all log ratios.
        """
        if self.global_latents:
            raise ValueError(
                f"site {self.global_latents[0]!r} is a latent outside the episodes plate: one draw is "
                "shared by every episode, so per-episode importance weights are undefined"
            )
        log_ratios, survival, always = self.discounted()
        always = always + self.global_cost().to(torch.float64)  # observed, shared: in every weight
        cumulative = log_ratios.cumsum(0)
        after = torch.cat((survival[1:], torch.zeros_like(survival[:1])))
        death = (survival - after).clamp(min=0.0)
        return torch.logsumexp(torch.log(death) + cumulative, dim=0) + always

    def elbo_terms(self) -> torch.Tensor:
        """``[N]`` sum_r c_r l_r per episode, float64: its mean estimates the ELBO (the
        Rao-Blackwellized expectation of log w over the death time)."""
        log_ratios, survival, always = self.discounted()
        return (survival * log_ratios).sum(0) + always + self.global_cost().to(torch.float64)


def without_rsample(d):
    """A shallow copy of ``d`` that samples without reparameterization (wrappers delegate to their base)."""
    new = copy.copy(d)
    if hasattr(d, "base_dist"):  # Independent, TransformedDistribution: has_rsample is the base's
        new.base_dist = without_rsample(d.base_dist)
    else:
        new.has_rsample_(False)
    return new


def _describe(scale: torch.Tensor) -> str:
    flat = scale.reshape(-1)
    if flat.numel() and bool((flat == flat[0]).all()):
        return f"{float(flat[0]):.6g}"
    return f"[{float(flat.min()):.6g}, {float(flat.max()):.6g}]"


def _scales_differ(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        return not torch.allclose(a.cpu(), b.cpu(), rtol=_SCALE_RTOL, atol=0.0)
    return abs(float(a) - float(b)) > _SCALE_RTOL * max(abs(float(a)), abs(float(b)))


def from_traces(model_trace, guide_trace, *, kl: KL | None = None) -> SiteLedger:
    """Book a (model, guide) trace pair: guide sites with -log q, model sites with +log p.

    Args:
        model_trace, guide_trace: the model replayed on the guide's trace, and that trace.
        kl: ``(q, pi) -> KL(q || pi)`` per batch element, or None where it is not analytic; an
            action whose KL is given books -KL in place of log pi - log q (same expectation, less
            variance). None books the Monte-Carlo log ratios (importance weights).

    Raises:
        ValueError: a latent site runs under a different scale in the model than in the guide (q
            must share the model's continuation probability), or a site has a shape that is
            neither ``[N]`` nor ``[]``.
    """
    ledger = SiteLedger()
    handled: set[str] = set()
    for name, site in sample_sites(guide_trace, latent_only=True):
        info = parse_site(name)
        log_q = site_log_prob(site, scaled=False)
        row = row_of(name, observed=False)
        model_site = model_trace.nodes.get(name)
        if info.role == "action":
            ledger.note_action(info.time)
        if model_site is not None and _scales_differ(model_site["scale"], site["scale"]):
            raise ValueError(
                f"site {name!r} runs under scale {_describe(torch.as_tensor(model_site['scale']))} in the "
                f"model but {_describe(torch.as_tensor(site['scale']))} in the guide: q shares the model's "
                "continuation probability, so build the guide with the model's gamma"
            )
        value = None
        if kl is not None and info.role == "action" and model_site is not None:
            divergence = kl(site["fn"], model_site["fn"])
            if divergence is not None:
                value = -scale_and_mask(divergence, 1.0, site["mask"])
                handled.add(name)
        ledger.book(name, row, -log_q if value is None else value, site["scale"], latent=True)
        if not site["fn"].has_rsample and log_q.requires_grad:
            ledger.book_score(name, row, log_q)
    for name, site in sample_sites(model_trace, latent_only=False):
        if name not in handled:
            ledger.book(
                name,
                row_of(name, observed=site["is_observed"]),
                site_log_prob(site, scaled=False),
                site["scale"],
            )
    return ledger


def _base(d):
    while isinstance(d, torch.distributions.Independent):
        d = d.base_dist
    return d


def check_support_inside(name: str, q, p, checked: set) -> None:
    """Refuse a guide distribution with unbounded support against a model one bounded to an
    interval: KL(q || p) is +inf (the ELBO -inf) whatever the parameters, which SVI cannot fix.
    Checked once per pair of distribution and support types: Python objects, no device read."""
    q, p = _base(q), _base(p)
    key = (type(q), type(p), type(q.support), type(p.support))  # a flat box prior differs in support
    if key in checked:
        return
    checked.add(key)
    if q.support is constraints.real and isinstance(p.support, constraints.interval):
        raise ValueError(
            f"site {name!r}: the guide's {type(q).__name__} has support on the whole real line, but the "
            f"model's {type(p).__name__} is zero outside its box, so KL(q || pi) is infinite and the ELBO "
            "-inf for any parameters; use a squashed policy (TanhGaussianMLP), "
            "UniformPrior(space, beyond_box='flat') or GaussianPrior(scale)"
        )


class FusedSites:
    """Site statements for one fused rollout of a ``TrajectoryModel`` under its ``TrajectoryGuide``.

    The rollout loop (:func:`rl_as_inference.models.rollout.rollout`) calls these in place of Pyro
    primitives: actions are drawn from q, and the model's log pi and optimality factors are booked
    on the spot, exactly as :func:`from_traces` books a traced guide and a replayed model, without
    per-site Pyro overhead. Transition and initial-state sites are shared by model and guide: their
    log p - log q is exactly 0, so they book no cost, but a non-reparameterized transition whose
    law carries a gradient (through a pathwise action) books its score-function term.

    Args:
        action_prior: ``(t, state) -> pi(a_t | s_t)``, the model's prior.
        kl: as in :func:`from_traces` (None: Monte-Carlo log ratios).
        score_actions: sample every action without reparameterization (score-function estimator).
        support_checked: if given, the (q, pi) type pairs already checked by
            :func:`check_support_inside`; each new pair is checked at its first action site.
    """

    def __init__(
        self,
        action_prior: Callable[[int, torch.Tensor], object],
        *,
        kl: KL | None = None,
        score_actions: bool = False,
        support_checked: set | None = None,
    ):
        self.ledger = SiteLedger()
        self.support_checked = support_checked
        self.action_prior, self.kl, self.score_actions = action_prior, kl, score_actions
        self.alive: torch.Tensor | None = None
        self.scale: float = 1.0

    def __enter__(self) -> FusedSites:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def set_alive(self, alive: torch.Tensor) -> None:
        self.alive = alive

    def set_scale(self, scale: float) -> None:
        self.scale = scale

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.alive, x * 1.0, x.new_zeros(()))

    def initial(self, d):
        return d()

    def transition(self, t: int, d):
        value = d()
        if not d.has_rsample:
            log_p = self._masked(d.log_prob(value))
            if log_p.requires_grad:
                self.ledger.book_score(f"s_{t + 1}", t, log_p)
        return value

    def action(self, t: int, state: torch.Tensor, q):
        if self.score_actions and q.has_rsample:
            q = without_rsample(q)
        name = f"a_{t}"
        action = q()
        log_q = self._masked(q.log_prob(action))
        prior = self.action_prior(t, state)
        if self.support_checked is not None:
            check_support_inside(name, q, prior, self.support_checked)
        self.ledger.note_action(t)
        divergence = None if self.kl is None else self.kl(q, prior)
        if divergence is not None:
            self.ledger.book(name, t, -self._masked(divergence), self.scale)
        else:
            self.ledger.book(name, t, -log_q, self.scale)
            self.ledger.book(name, t, self._masked(prior.log_prob(action)), self.scale)
        if not q.has_rsample and log_q.requires_grad:
            self.ledger.book_score(name, t, log_q)
        return action

    def factor(self, t: int, log_factor: torch.Tensor) -> None:
        self.ledger.book(f"O_{t}", t, self._masked(log_factor), self.scale)
