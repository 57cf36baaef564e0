"""``env.differentiable`` means "pathwise gradients of the expected return are unbiased".

TrajectoryELBO's ``estimator="auto"`` differentiates through reparameterized actions and the
dynamics where an env declares it, and ``svi`` refuses the others. Each test here estimates one
policy gradient d/d theta E[sum_t r_t] twice, written directly in torch (independent of the ELBO
code): pathwise, backpropagating reparameterized actions through ``env.step``, and by the score
function, sum_t d log pi(a_t | s_t) / d theta times the reward-to-go. Both are unbiased where the
return is a continuous function of the actions, and then agree within their standard errors; a
jump (a goal bonus, a termination, a wall that zeroes the velocity) adds a boundary term that
autograd never sees, and only the score function keeps it.
"""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

from rl_as_inference import envs

F64 = torch.float64
DIFFERENTIABLE = [id for id in sorted(envs.PORTED) if envs.make(id).differentiable]


def _normal_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _mean_and_se(per_sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and its standard error over the first dimension."""
    return per_sample.mean(0), per_sample.std(0) / math.sqrt(per_sample.shape[0])


def _rollout(env, start, theta, sigma, noise, *, pathwise: bool):
    """Per-episode returns and log pi of a linear Gaussian policy a_t = b + W obs(s_t) + sigma eps_t.

    ``theta`` is ``[N, p]``, one leaf row per episode, so that the gradient of the summed
    estimator with respect to it is the ``[N, p]`` matrix of per-episode gradient estimates.
    Returns ``(rewards [T, N], alive [T, N], log_pi [T, N])``; with ``pathwise=False`` actions and
    states carry no graph (only log pi depends on theta).
    """
    horizon, n, dim = noise.shape
    obs_dim = env.observation_space.shape[0]
    weight = theta[:, : dim * obs_dim].reshape(n, dim, obs_dim)
    bias = theta[:, dim * obs_dim :]
    state = start.expand(n, -1)
    alive = torch.ones(n, dtype=torch.bool)
    rewards, alives, log_pis = [], [], []
    for t in range(horizon):
        obs = env.observe(state, dtype=None)
        mean = bias + (weight @ obs.unsqueeze(-1)).squeeze(-1)
        action = mean + sigma * noise[t]
        if not pathwise:
            action = action.detach()
        log_pis.append(torch.distributions.Normal(mean, sigma).log_prob(action).sum(-1))
        step = env.step(state, action)
        rewards.append(step.reward)
        alives.append(alive)
        alive = alive & ~step.terminated
        state = step.state if pathwise else step.state.detach()
    return torch.stack(rewards), torch.stack(alives), torch.stack(log_pis)


def _pathwise_gradients(env, start, theta0, sigma, horizon, n, seed):
    """``[N, p]`` per-episode pathwise estimates of d E[sum_t r_t] / d theta."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(horizon, n, env.action_space.shape[0], generator=gen, dtype=F64)
    theta = theta0.expand(n, -1).clone().requires_grad_()
    rewards, alive, _ = _rollout(env, start, theta, sigma, noise, pathwise=True)
    (grad,) = torch.autograd.grad((rewards * alive).sum(), theta)
    return grad


def _score_gradients(env, start, theta0, sigma, horizon, n, seed):
    """``[N, p]`` per-episode score-function estimates: sum_t grad log pi(a_t|s_t) (G_t - b_t),
    G_t the reward-to-go and b_t a per-step baseline from an independent pilot batch (unbiased)."""

    def draw(count, gen):
        noise = torch.randn(horizon, count, env.action_space.shape[0], generator=gen, dtype=F64)
        theta = theta0.expand(count, -1).clone().requires_grad_()
        rewards, alive, log_pi = _rollout(env, start, theta, sigma, noise, pathwise=False)
        to_go = (rewards * alive).flip(0).cumsum(0).flip(0)  # G_t = sum_{t' >= t} r_t'
        return theta, alive, log_pi, to_go

    gen = torch.Generator().manual_seed(seed)
    _, _, _, pilot = draw(n // 4, gen)
    baseline = pilot.mean(1, keepdim=True)
    theta, alive, log_pi, to_go = draw(n, gen)
    (grad,) = torch.autograd.grad((log_pi * alive * (to_go - baseline)).sum(), theta)
    return grad


# ---------------------------------------------------------------------- the declared set
def test_the_envs_that_declare_differentiable_are_the_ones_with_a_continuous_return():
    # Pendulum-v1: clips and the angle wrap under the square are continuous. Every other port has a
    # jump (terminations, MountainCarContinuous's +100 and its left wall) or discrete actions.
    assert DIFFERENTIABLE == ["Pendulum-v1"]


# ---------------------------------------------------------------------- agreement where declared
CONTINUOUS = [id for id in sorted(envs.PORTED) if isinstance(envs.make(id).action_space, gym.spaces.Box)]
# Starts: three draws of p(s_0) for every env, and hand-picked ones where clips, wraps or jumps act.
EXTRA_STARTS = {
    "Pendulum-v1": [
        (math.pi - 0.05, 1.0),  # theta crosses pi: angle_normalize jumps, its square does not
        (0.3, 7.9),  # the speed clip at +-8 binds on most paths
    ],
    "MountainCarContinuous-v0": [(0.4485, 0.002)],  # one push from the flag (+100, termination)
}
# Policy parameters (W row-major, then b); Pendulum's b near the torque limit, so its clip binds.
THETA = {"Pendulum-v1": (0.3, -0.2, 0.05, 1.2)}


def _policy(env):
    """(theta, sigma): THETA where given, else W = 0.1, b = 0; sigma half the action box's half-width."""
    dim, obs_dim = env.action_space.shape[0], env.observation_space.shape[0]
    default = [0.1] * (dim * obs_dim) + [0.0] * dim
    theta = torch.tensor(THETA.get(env.id, default), dtype=F64)
    sigma = float((env.action_space.high - env.action_space.low).min()) / 4
    return theta, sigma


def _starts(env):
    rows = list(env.reset(3, seed=0))
    return rows + [torch.tensor(s, dtype=F64) for s in EXTRA_STARTS.get(env.id, [])]


def _both_estimates(env, start, horizon, n, seed):
    """(pathwise, its se, score function, its se) of d E[sum_t r_t] / d theta, independent draws."""
    theta, sigma = _policy(env)
    path = _mean_and_se(_pathwise_gradients(env, start, theta, sigma, horizon, n, seed=seed))
    score = _mean_and_se(_score_gradients(env, start, theta, sigma, horizon, n, seed=seed + 1000))
    return (*path, *score)


@pytest.mark.parametrize("id", CONTINUOUS)
def test_pathwise_and_score_function_gradients_agree_exactly_where_differentiable(id):
    """5 steps, 100,000 episodes per estimator: on a declared env both agree from every start; on
    any other continuous-action port some start shows the pathwise bias."""
    env = envs.make(id, dtype=F64)
    z_max = []
    for i, start in enumerate(_starts(env)):
        path, se_path, score, se_score = _both_estimates(env, start, horizon=5, n=100_000, seed=i)
        se = torch.sqrt(se_path**2 + se_score**2)  # the se of the difference of independent means
        z_max.append(((path - score).abs() / se).max().item())
        if env.differentiable:
            # k = 4 standard errors per coordinate (|z| <= 1.6 measured on Pendulum-v1)
            assert z_max[-1] <= 4, (id, start.tolist(), path, score, se)
            # ... and the check has power: its error bar is a few percent of the gradient
            assert se.norm() < 0.05 * path.norm(), (id, start.tolist(), se, path)
    if not env.differentiable:
        # the jump's term, far outside 4 standard errors (z ~ 250 at MountainCarContinuous's flag)
        assert max(z_max) > 4, (id, z_max)


# ---------------------------------------------------------------------- a jump: MountainCarContinuous
def test_mountain_car_continuous_goal_jump_is_missed_by_pathwise_gradients():
    """One step from (0.4485, 0.002), a ~ N(mu, 1) at mu = 0: the car reaches the flag (+100, and
    termination) iff a >= a*, so d E[r] / d mu = 100 phi((mu - a*) / 1) - 0.2 mu; pathwise sees only
    the action cost's -0.2 mu."""
    env = envs.make("MountainCarContinuous-v0", dtype=F64)
    assert not env.differentiable
    start = torch.tensor([[0.4485, 0.002]], dtype=F64)
    mu, sigma = 0.0, 1.0

    # a* by bisection on the env's own step (termination is monotone in the force)
    lo, hi = torch.tensor([[-1.0]], dtype=F64), torch.tensor([[1.0]], dtype=F64)
    assert not env.step(start, lo).terminated.item() and env.step(start, hi).terminated.item()
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if env.step(start, mid).terminated.item() else (mid, hi)
    threshold = hi.item()
    truth = 100 * _normal_pdf((mu - threshold) / sigma) / sigma - 0.2 * mu

    # The same truth by quadrature of the env's rewards: d/dmu int r(a) N(a; mu, sigma) da
    grid = torch.linspace(mu - 10 * sigma, mu + 10 * sigma, 2_000_001, dtype=F64)
    r = env.step(start.expand(len(grid), -1), grid.unsqueeze(-1)).reward
    weight = (
        (grid - mu)
        / sigma**2
        * torch.exp(-0.5 * ((grid - mu) / sigma) ** 2)
        / (sigma * math.sqrt(2 * math.pi))
    )
    quadrature = torch.trapezoid(r * weight, grid).item()
    # grid step 1e-5: the cell of the jump errs by at most 100 x weight(a*) ~ 0.016 x 1e-5
    assert quadrature == pytest.approx(truth, abs=1e-4)
    assert truth == pytest.approx(39.86, abs=0.01)

    n = 400_000
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(n, 1, generator=gen, dtype=F64)
    loc = torch.full((n, 1), mu, dtype=F64, requires_grad=True)
    reward = env.step(start.expand(n, -1), loc + sigma * eps).reward
    (pathwise,) = torch.autograd.grad(reward.sum(), loc)
    path, se_path = _mean_and_se(pathwise[:, 0])
    score, se_score = _mean_and_se(reward * eps[:, 0] / sigma)  # d log N(a; mu, sigma) / d mu
    assert abs(score - truth) <= 4 * se_score  # 4 standard errors (se ~ 0.09)
    # pathwise: -0.2 E[a] = 0 up to noise, ~40 short of the truth (hundreds of standard errors)
    assert abs(path - truth) > 100 * (se_path + se_score)
    assert abs(path) <= 4 * se_path


@pytest.mark.parametrize("algo", ["svi", "em"])
def test_svi_and_em_refuse_mountain_car_continuous_naming_it(algo):
    from rl_as_inference.algos import em, svi
    from rl_as_inference.algos.svi_actor import SegmentActor

    config = (
        svi.SVIConfig(env="MountainCarContinuous-v0")
        if algo == "svi"
        else em.EMConfig(env="MountainCarContinuous-v0")
    )
    env = envs.make("MountainCarContinuous-v0")
    with pytest.raises(ValueError, match=f"^{algo} needs pathwise-unbiased dynamics") as info:
        SegmentActor.build(config, env, torch.device("cpu"))
    message = str(info.value)
    assert (
        "\n" not in message and "MountainCarContinuous-v0 is not" in message and "use --algo vmpo" in message
    )


def test_mountain_car_continuous_left_wall_is_a_jump_in_the_action():
    """From (-1.19, -0.012) a push left of a_w ~ -0.18 reaches the wall and stops the car; one just
    right of it keeps v' ~ -0.01: the next velocity jumps by a seventh of the speed limit."""
    env = envs.make("MountainCarContinuous-v0", dtype=F64)
    start = torch.tensor([[-1.19, -0.012]], dtype=F64)
    lo, hi = torch.tensor([[-1.0]], dtype=F64), torch.tensor([[1.0]], dtype=F64)
    at_wall = lambda a: env.step(start, a).state[0, 1].item() == 0.0  # noqa: E731 (stopped)
    assert at_wall(lo) and not at_wall(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at_wall(mid) else (lo, mid)
    assert -0.2 < lo.item() < -0.15 and hi.item() - lo.item() < 1e-12
    wall, free = env.step(start, lo).state[0], env.step(start, hi).state[0]
    assert wall[0].item() == pytest.approx(-1.2) and wall[1].item() == 0.0
    assert free[1].item() < -0.0099  # not stopped: v' = -0.012 + 0.0015 a_w + 0.0025 |cos(3 p)|
