"""``fit``: acceptance example (tabular SVI, S=6, A=3), convergence to exact.solve, seeding, checkpoints."""

from __future__ import annotations

import math
import os

import pyro
import pytest
import torch

import rl_as_inference as rlai
from rl_as_inference import envs, exact, guides, models

F64 = torch.float64


def acceptance_tables(stochastic: bool):
    """S=6, A=3 tables P, R, p0 (numpy-free torch tensors, as a user would bring them)."""
    source = envs.random_mdp(6, 3, seed=11, deterministic=not stochastic)
    return source.transition, source.reward.double(), source.initial


def visitation(mdp, policy: torch.Tensor) -> torch.Tensor:
    """[T, S] probability that the episode is alive in state s at step t under ``policy``."""
    alive, out = mdp.initial.clone(), []
    for t in range(policy.shape[0]):
        out.append(alive)
        alive = (
            torch.einsum("s,sa,sat->t", alive, policy[t].double(), mdp.transition) * (~mdp.terminal).double()
        )
    return torch.stack(out)


@pytest.mark.parametrize("stochastic", [False, True], ids=["deterministic", "stochastic"])
@pytest.mark.parametrize("objective", ["maxent-eq10", "kl-eq2"])
def test_acceptance_example_converges_to_exact_optimum(stochastic, objective):
    P, R, p0 = acceptance_tables(stochastic)
    table = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64), -1)
    # --- the acceptance example, verbatim apart from the prior switch ---
    mdp = envs.TabularMDP(transition=P, reward=R, initial=p0)
    if objective == "maxent-eq10":
        prior = models.UniformPrior(mdp.action_space)
    else:
        prior = models.PolicyPrior(lambda s: torch.distributions.Categorical(probs=table[s]))
    model = models.TrajectoryModel(mdp, prior=prior, horizon=5, alpha=0.5, gamma=0.95)
    guide = guides.TabularGuide(mdp, horizon=5, gamma=0.95)
    rlai.fit(model, guide, num_steps=1500, num_episodes=512, lr=0.05, seed=0, progress=False)
    probs = guide.policy()
    # --------------------------------------------------------------------
    assert probs.shape == (5, 6, 3)
    prior_table = None if objective == "maxent-eq10" else table
    solution = exact.solve(mdp, horizon=5, alpha=0.5, gamma=0.95, prior=prior_table)
    achieved = exact.elbo_of(mdp, probs, horizon=5, alpha=0.5, gamma=0.95, prior=prior_table)
    assert solution.elbo - 0.02 <= achieved <= solution.elbo + 1e-9, (achieved, solution.elbo)
    # Where the episode actually goes, q matches exact.solve's optimal policy (elsewhere it gets no data).
    d = visitation(mdp, solution.policy)
    tv = 0.5 * (probs.double() - solution.policy).abs().sum(-1)  # total variation per (t, s)
    assert (d * tv).sum() / d.sum() < 0.05


def test_fit_history_progress_and_seeding():
    mdp = envs.chain(4)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=6, alpha=0.3)
    guide = guides.TabularGuide(mdp, horizon=6)
    first = rlai.fit(model, guide, num_steps=40, num_episodes=64, lr=0.1, seed=3, progress=False)
    p1 = guide.policy()
    pyro.clear_param_store()
    second = rlai.fit(model, guide, num_steps=40, num_episodes=64, lr=0.1, seed=3, progress=False)
    assert first.elbo == second.elbo and torch.equal(p1, guide.policy())
    assert len(first.elbo) == 40 and len(first.returns) == 40 and first.num_steps == 40
    assert all(math.isfinite(r) for r in first.returns)
    assert sum(first.elbo[-10:]) > sum(first.elbo[:10])  # it learns


def test_callbacks_can_stop_early():
    mdp = envs.chain(3)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=3)
    guide = guides.TabularGuide(mdp, horizon=3)
    seen = []

    def stop_at_five(step, stats):
        seen.append((step, stats["elbo"]))
        if step == 4:
            raise StopIteration

    result = rlai.fit(
        model, guide, num_steps=50, num_episodes=8, seed=0, progress=False, callbacks=[stop_at_five]
    )
    assert result.num_steps == 5 and len(result.elbo) == 5 and [s for s, _ in seen] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("baseline", ["mean", "value"])
def test_checkpoint_resume_is_bit_identical(tmp_path, baseline):
    mdp = envs.random_mdp(4, 2, seed=0)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=4, alpha=0.5)
    guide = guides.TabularGuide(mdp, horizon=4)
    kw = dict(num_episodes=32, lr=0.05, seed=1, progress=False)
    straight = rlai.fit(model, guide, num_steps=30, loss=rlai.TrajectoryELBO(baseline=baseline), **kw)
    reference = guide.policy()

    pyro.clear_param_store()
    path = tmp_path / "run" / "ckpt.pt"
    first = rlai.fit(
        model, guide, num_steps=12, loss=rlai.TrajectoryELBO(baseline=baseline), checkpoint=str(path), **kw
    )
    assert path.exists() and not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]
    assert first.elbo == straight.elbo[:12]

    # As a fresh process would: empty param store, a fresh optimizer, an unrelated RNG state.
    pyro.clear_param_store()
    torch.manual_seed(12345)
    resumed = rlai.fit(
        model,
        guide,
        num_steps=30,
        loss=rlai.TrajectoryELBO(baseline=baseline),
        checkpoint=str(path),
        resume=True,
        **kw,
    )
    assert resumed.num_steps == 30 and resumed.elbo == straight.elbo
    assert torch.equal(guide.policy(), reference)
    state = rlai.load_checkpoint(path, guide=guide)
    assert state["step"] == 30 and len(state["extra"]["elbo"]) == 30


def test_checkpoint_rejects_foreign_and_corrupt_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not an rl_as_inference checkpoint"):
        rlai.load_checkpoint(foreign)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a zip file")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        rlai.load_checkpoint(corrupt)


def test_checkpoint_restores_optimizer_state(tmp_path):
    mdp = envs.chain(3)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=3)
    guide = guides.TabularGuide(mdp, horizon=3)
    optim = pyro.optim.Adam({"lr": 0.05})
    rlai.fit(model, guide, num_steps=5, num_episodes=16, optim=optim, seed=0, progress=False)
    rlai.save_checkpoint(tmp_path / "c.pt", optim=optim, step=5)
    saved = optim.get_state()
    pyro.clear_param_store()
    fresh = pyro.optim.Adam({"lr": 0.05})
    rlai.load_checkpoint(tmp_path / "c.pt", optim=fresh, guide=guide)
    rlai.fit(model, guide, num_steps=1, num_episodes=16, optim=fresh, seed=0, progress=False)
    name = "tabular_guide.logits"
    step_before = saved[name]["state"][0]["step"]
    assert fresh.get_state()[name]["state"][0]["step"] == step_before + 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_steps=-1), ValueError, "num_steps must be an int >= 0"),
        (dict(num_episodes=0), ValueError, "num_episodes must be an int >= 1"),
        (dict(lr=-0.1), ValueError, "lr must be a positive finite number"),
        (dict(optim=torch.optim.Adam), TypeError, "optim must be a pyro.optim optimizer"),
        (
            dict(device="cuda:0"),
            ValueError,
            # with CUDA the env's device is the mismatch; without it, the missing device itself
            "device='cuda:0' but the model's env runs on cpu"
            if torch.cuda.is_available()
            else "device='cuda:0' but this machine has no CUDA device",
        ),
        (dict(checkpoint_every=0), ValueError, "checkpoint_every must be an int >= 1"),
    ],
)
def test_fit_bad_arguments(kwargs, error, match):
    mdp = envs.chain(3)
    model = models.TrajectoryModel(mdp, models.UniformPrior(mdp.action_space), horizon=3)
    guide = guides.TabularGuide(mdp, horizon=3)
    args = dict(num_steps=2, num_episodes=4, progress=False) | kwargs
    with pytest.raises(error, match=match):
        rlai.fit(model, guide, **args)
