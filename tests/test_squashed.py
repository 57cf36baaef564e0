"""SquashedNormal: its density, KL, shapes and gradients against torch's own transform stack."""

from __future__ import annotations

import math
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import AffineTransform, Independent, Normal, TanhTransform, TransformedDistribution

from rl_as_inference import models
from rl_as_inference.guides import SquashedNormal, TanhGaussianMLP

F64 = torch.float64


def _reference(loc, scale, mid, half):
    """The same distribution built from torch's transforms (the former implementation)."""
    transforms = [TanhTransform(), AffineTransform(mid, half, event_dim=1)]
    return TransformedDistribution(Independent(Normal(loc, scale), 1), transforms)


def _box(dim: int):
    mid = torch.linspace(-1.0, 2.0, dim, dtype=F64)
    half = torch.linspace(0.5, 3.0, dim, dtype=F64)
    return mid, half


def test_log_prob_equals_the_transformed_distribution_of_torch():
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(5, 3, 2, generator=gen, dtype=F64)
    scale = torch.rand(5, 3, 2, generator=gen, dtype=F64) + 0.1
    mid, half = _box(2)
    d, ref = SquashedNormal(loc, scale, mid, half), _reference(loc, scale, mid, half)
    a = d.rsample()
    assert a.shape == (5, 3, 2) and d.batch_shape == (5, 3) and d.event_shape == (2,)
    assert ((a > mid - half) & (a < mid + half)).all()
    torch.testing.assert_close(d.log_prob(a), ref.log_prob(a), rtol=1e-9, atol=1e-9)  # cached u
    stored = a.clone()  # not the sampled tensor: scored through atanh
    torch.testing.assert_close(d.log_prob(stored), ref.log_prob(stored), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(d.mode, mid + half * torch.tanh(loc))


def test_the_density_integrates_to_one_on_the_box():
    # One coordinate on [-1, 3] (mid 1, half 2): trapezoid rule on a fine grid of the open interval.
    d = SquashedNormal(torch.tensor([[0.3]], dtype=F64), torch.tensor([[0.8]], dtype=F64), 1.0, 2.0)
    grid = torch.linspace(-1 + 1e-9, 3 - 1e-9, 200_001, dtype=F64)
    density = d.log_prob(grid.reshape(-1, 1, 1)).exp().squeeze(-1)
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-5)


def test_kl_is_the_kl_of_the_pre_tanh_gaussians_and_matches_monte_carlo():
    mid, half = _box(2)
    q = SquashedNormal(
        torch.tensor([[0.2, -0.5]], dtype=F64), torch.tensor([[0.6, 1.1]], dtype=F64), mid, half
    )
    p = SquashedNormal(
        torch.tensor([[-0.3, 0.1]], dtype=F64), torch.tensor([[0.9, 0.7]], dtype=F64), mid, half
    )
    analytic = torch.distributions.kl_divergence(q, p)
    n = 200_000
    torch.manual_seed(2)
    a = q.expand((n,)).rsample()
    ratio = q.expand((n,)).log_prob(a) - p.expand((n,)).log_prob(a)
    se = ratio.std().item() / math.sqrt(n)
    assert analytic.item() == pytest.approx(ratio.mean().item(), abs=4 * se)  # 4 standard errors
    other_box = SquashedNormal(q.loc, q.scale, mid, 2 * half)
    with pytest.raises(NotImplementedError, match="different boxes"):
        torch.distributions.kl_divergence(q, other_box)


def test_expand_and_sample_shape_give_independent_draws():
    mid, half = _box(1)
    d = SquashedNormal(torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64), mid, half)
    wide = d.expand((4096,))
    assert wide.batch_shape == (4096,) and wide.sample().shape == (4096, 1)
    draws = d.rsample((4096,))
    assert draws.shape == (4096, 1, 1)
    # Independent draws of tanh(N(0, 1)): the sample mean of u = atanh((a - mid) / half) is ~N(0, 1/n).
    u = torch.atanh((draws - mid) / half)
    assert abs(u.mean().item()) < 4 / math.sqrt(4096)  # 4 standard errors


def test_gradients_flow_pathwise_and_by_score_function():
    loc = torch.zeros(64, 1, dtype=F64, requires_grad=True)
    scale = torch.ones(64, 1, dtype=F64)
    d = SquashedNormal(loc, scale, torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64))
    d.rsample().sum().backward()  # pathwise: d tanh(loc + eps) / d loc = 1 - tanh^2 > 0
    assert (loc.grad > 0).all()
    loc.grad = None
    a = d.sample()  # no reparameterization: the sample carries no graph, log_prob still does
    assert not a.requires_grad
    d.log_prob(a).sum().backward()
    assert torch.isfinite(loc.grad).all() and loc.grad.abs().sum() > 0


def test_a_scalar_location_is_refused():
    with pytest.raises(ValueError, match="event dimension"):
        SquashedNormal(torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)


# ---------------------------------------------------------------------- saturated actions stay in the box
def _random_float32_boxes(n: int, seed: int) -> gym.spaces.Box:
    """n one-dimensional float32 boxes, not symmetric: bounds and widths from 0.01 to 100."""
    rng = np.random.default_rng(seed)
    low = (rng.choice([-1.0, 1.0], n) * 10 ** rng.uniform(-2, 2, n)).astype(np.float32)
    high = (low + 10 ** rng.uniform(-2, 2, n)).astype(np.float32)
    assert (high > low).all()
    return gym.spaces.Box(low, high, dtype=np.float32)


def _saturated_policy(box: gym.spaces.Box, sign: float) -> TanhGaussianMLP:
    """A TanhGaussianMLP whose pre-tanh location is sign * 30 (tanh rounds to +-1) and scale e^-5."""
    policy = TanhGaussianMLP(gym.spaces.Box(-1.0, 1.0, (1,)), box, hidden=(4,))
    dim = box.shape[0]
    with torch.no_grad():
        policy.net[-1].weight.zero_()
        policy.net[-1].bias[:dim] = 30.0 * sign
        policy.net[-1].bias[dim:] = -5.0
    return policy


def test_saturated_actions_of_2000_random_float32_boxes_stay_inside_them():
    box = _random_float32_boxes(2000, seed=0)
    low, high = torch.as_tensor(box.low), torch.as_tensor(box.high)
    stub_env = SimpleNamespace(state_shape=(), dtype=torch.float32)  # what UniformPrior.dist reads
    prior = models.UniformPrior(box)
    torch.manual_seed(0)
    for sign in (1.0, -1.0):
        d = _saturated_policy(box, sign)(torch.zeros(8, 1))
        log_pi = prior.dist(torch.zeros(8), stub_env)
        for name, a in (("rsample", d.rsample()), ("sample", d.sample()), ("mode", d.mode)):
            assert a.dtype == torch.float32
            outside = ((a < low) | (a > high)).any(0)
            assert not outside.any(), f"{name}: {int(outside.sum())} of 2000 boxes left at sign {sign}"
            assert torch.isfinite(log_pi.log_prob(a)).all(), name
        # the sampled (clamped) action is scored from its cached u, a stored copy through atanh
        a = d.rsample()
        assert torch.isfinite(d.log_prob(a)).all() and torch.isfinite(d.log_prob(a.clone())).all()


def test_the_clamp_keeps_the_density_and_the_gradient_of_the_draw():
    box = _random_float32_boxes(2000, seed=1)
    low, high = torch.as_tensor(box.low), torch.as_tensor(box.high)
    mid, half = (high + low) / 2, (high - low) / 2  # float32: mid + half can round past high
    # pre-tanh locations from -12 to 12: saturated (tanh rounds to +-1) and not, in one batch
    loc = torch.linspace(-12.0, 12.0, 2000).reshape(1, -1).repeat(4, 1).requires_grad_()
    scale = torch.full_like(loc, 0.5)
    clamped = SquashedNormal(loc, scale, mid, half, low=low, high=high)
    free = SquashedNormal(loc, scale, mid, half)  # the unclamped law on [mid - half, mid + half]
    torch.manual_seed(3)
    a = clamped.rsample()
    torch.manual_seed(3)
    b = free.rsample()
    assert ((a >= low) & (a <= high)).all() and ((b < low) | (b > high)).any()
    moved = a != b
    assert (a[~moved] == b[~moved]).all() and moved.any()  # only the values outside moved
    # ... by rounding errors: a few ulps of the larger of |mid| and |half|
    ulp = torch.finfo(torch.float32).eps * torch.maximum(mid.abs(), half).expand_as(a)
    assert ((a - b).abs()[moved] <= 4 * ulp[moved]).all()
    # the density is the one of the draw u, finite, and the same as without the clamp
    torch.testing.assert_close(clamped.log_prob(a), free.log_prob(b), rtol=0, atol=0)
    # the pathwise gradient is that of mid + half tanh(u), clamped or not
    (grad_a,) = torch.autograd.grad(a.sum(), loc)
    (grad_b,) = torch.autograd.grad(b.sum(), loc)
    torch.testing.assert_close(grad_a, grad_b, rtol=0, atol=0)
    assert (grad_a[:, 1000] > 0).all()  # tanh'(u) > 0 at loc ~ 0
    # the support is the box itself: validation accepts its exact bounds, with finite densities
    for bound in (low, high):
        value = bound.expand(4, -1)
        assert torch.isfinite(clamped.log_prob(value)).all()
