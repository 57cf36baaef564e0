"""Bad inputs to trajectory models, guides, policies, the losses and exact inference: one
ValueError or TypeError naming the argument and the value, never a NaN loss or a torch traceback."""

from __future__ import annotations

import pyro
import pytest
import torch

from rl_as_inference import envs, exact, guides, models
from rl_as_inference.elbo import TrajectoryELBO

NAN = float("nan")
MDP = envs.random_mdp(3, 2, seed=0)
PENDULUM = envs.make("Pendulum-v1")
CARTPOLE = envs.make("CartPole-v1")


def _uniform(env):
    return models.UniformPrior(env.action_space)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: models.TrajectoryModel(MDP, _uniform(MDP), horizon=3, gamma=1.5),
            ValueError,
            r"gamma must be in \(0, 1\], got 1.5",
        ),
        (
            lambda: models.TrajectoryModel(MDP, _uniform(MDP), horizon=3, alpha=-1),
            ValueError,
            r"alpha must be positive and finite, got -1",
        ),
        (
            lambda: models.TrajectoryModel(MDP, _uniform(MDP), horizon=3, alpha=NAN),
            ValueError,
            r"alpha must be positive and finite, got nan",
        ),
        (
            lambda: models.TrajectoryModel(MDP, _uniform(MDP), horizon=0),
            ValueError,
            r"horizon must be >= 1, got 0",
        ),
        (
            lambda: models.TrajectoryModel(MDP, _uniform(MDP), horizon=3)(0),
            ValueError,
            r"num_envs must be >= 1, got 0",
        ),
        (
            lambda: models.TrajectoryModel(MDP, _uniform(MDP), horizon=3)(2.5),
            TypeError,
            r"must be an int >= 1, got 2.5",
        ),
        (
            lambda: models.TrajectoryModel(PENDULUM, _uniform(MDP), horizon=3)(2),
            ValueError,
            r"UniformPrior is over Discrete\(2\) but Pendulum-v1's action space is Box",
        ),
        (
            lambda: models.UniformPrior("box"),
            TypeError,
            r"UniformPrior supports Discrete and Box spaces, got str",
        ),
        (
            lambda: models.UniformPrior(PENDULUM.action_space, beyond_box="wrap"),
            ValueError,
            r"beyond_box='wrap' is not allowed",
        ),
    ],
)
def test_bad_models_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: guides.TabularGuide(MDP, horizon=0, name="g0"), ValueError, r"horizon must be >= 1, got 0"),
        (
            lambda: guides.TabularGuide(MDP, horizon=3, name="g1")(-1),
            ValueError,
            r"num_envs must be >= 1, got -1",
        ),
        (
            lambda: guides.TabularGuide(PENDULUM, horizon=3),
            TypeError,
            r"TabularGuide needs an envs.TabularMDP, got Pendulum",
        ),
        (
            lambda: guides.GaussianMLP(PENDULUM.observation_space, PENDULUM.action_space, hidden=(0,)),
            ValueError,
            r"hidden=\(0,\) is not allowed; use a list of layer widths >= 1",
        ),
        (
            lambda: guides.GaussianMLP(PENDULUM.observation_space, PENDULUM.action_space, hidden=(-3,)),
            ValueError,
            r"hidden=\(-3,\) is not allowed",
        ),
        (
            lambda: guides.TanhGaussianMLP(PENDULUM.observation_space, PENDULUM.action_space, hidden=64),
            ValueError,
            r"hidden=64 is not allowed",
        ),
        (
            lambda: guides.GaussianMLP(PENDULUM.observation_space, PENDULUM.action_space, activation="relu"),
            ValueError,
            r"activation='relu' is not allowed; did you mean 'ReLU'\?",
        ),
        (
            lambda: guides.CategoricalMLP(CARTPOLE.observation_space, CARTPOLE.action_space, activation=len),
            TypeError,
            r"activation=<built-in function len> is not allowed; use a torch.nn.Module class",
        ),
        (
            lambda: guides.CategoricalMLP(PENDULUM.observation_space, PENDULUM.action_space),
            TypeError,
            r"CategoricalMLP needs a Discrete action space, got Box",
        ),
        (
            lambda: guides.TanhGaussianMLP(CARTPOLE.observation_space, CARTPOLE.action_space),
            TypeError,
            r"a Gaussian policy needs a 1-D Box action space, got Discrete\(2\)",
        ),
    ],
)
def test_bad_guides_and_policies_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_policy_activation_may_be_named():
    policy = guides.CategoricalMLP(CARTPOLE.observation_space, CARTPOLE.action_space, activation="ReLU")
    assert any(isinstance(m, torch.nn.ReLU) for m in policy.net)


def _custom_model(bad_step: int, value: float):
    """A custom trajectory model whose optimality factor is ``value`` at ``bad_step``."""

    def model(num_episodes):
        with pyro.plate("episodes", num_episodes):
            for t in range(3):
                log_factor = (
                    torch.full((num_episodes,), value) if t == bad_step else torch.zeros(num_episodes)
                )
                pyro.factor(f"O_{t}", log_factor)

    return model


def _no_guide(num_episodes):
    pass


@pytest.mark.parametrize("bad_step", [0, 2])
def test_a_nan_factor_in_a_custom_model_names_the_site_and_step(bad_step):
    loss = TrajectoryELBO()
    message = rf"the model's site 'O_{bad_step}' \(step {bad_step}\) got a NaN or infinite log-factor"
    with pytest.raises(ValueError, match=message):
        loss.loss(_custom_model(bad_step, NAN), _no_guide, 4)
    with pytest.raises(ValueError, match=message):
        loss.differentiable_loss(_custom_model(bad_step, NAN), _no_guide, 4)


@pytest.mark.parametrize("bad_step", [0, 2])
def test_an_infinite_factor_names_the_step(bad_step):
    # +inf passes Pyro's Real() check; no finite reward gives it, so the loss refuses it
    with pytest.raises(ValueError, match=rf"the ELBO is \+inf: the cost of step {bad_step} is \+inf"):
        TrajectoryELBO().loss(_custom_model(bad_step, float("inf")), _no_guide, 4)


def test_a_nan_factor_without_pyro_validation_still_names_the_step():
    pyro.enable_validation(False)
    try:
        with pytest.raises(ValueError, match=r"the ELBO is NaN: the cost of step 1 is NaN \(site O_1"):
            TrajectoryELBO().loss(_custom_model(1, NAN), _no_guide, 4)
    finally:
        pyro.enable_validation(True)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: exact.solve(MDP, horizon=3, alpha=0.0),
            ValueError,
            r"alpha must be a finite number > 0 \(the temperature\), got 0.0",
        ),
        (
            lambda: exact.solve(MDP, horizon=3, alpha=NAN),
            ValueError,
            r"alpha must be a finite number > 0 .*got nan",
        ),
        (
            lambda: exact.solve(MDP, horizon=3, alpha=1.0, gamma=1.5),
            ValueError,
            r"gamma must be in \(0, 1\], got 1.5",
        ),
        (lambda: exact.solve(MDP, horizon=0, alpha=1.0), ValueError, r"horizon must be an int >= 1, got 0"),
        (
            lambda: exact.solve(MDP, horizon=2.5, alpha=1.0),
            TypeError,
            r"horizon must be an int >= 1, got 2.5",
        ),
        (
            lambda: exact.solve(MDP, horizon=3, alpha=1.0, prior=torch.ones(2, 2) / 2),
            ValueError,
            r"prior must have shape \[S, A\] = \[3, 2\] or \[T, S, A\] = \[3, 3, 2\], got \(2, 2\)",
        ),
        (
            lambda: exact.solve(MDP, horizon=3, alpha=1.0, prior=torch.ones(3, 2)),
            ValueError,
            r"prior\[0, :\] sums to 2; each row over actions must sum to 1",
        ),
        (
            lambda: exact.solve(MDP, horizon=3, alpha=1.0, prior=torch.full((3, 2), NAN)),
            ValueError,
            r"prior must be finite; prior\[0, 0\] is nan",
        ),
        (
            lambda: exact.elbo_of(MDP, torch.ones(3, 3, 2) / 2, horizon=2, alpha=1.0),
            ValueError,
            r"policy must have shape \[T, S, A\] = \[2, 3, 2\] or \[S, A\] = \[3, 2\], got \(3, 3, 2\)",
        ),
        (
            lambda: exact.elbo_of(MDP, -torch.ones(3, 3, 2), horizon=3, alpha=1.0),
            ValueError,
            r"policy must be non-negative; policy\[0, 0, 0\] is -1.0",
        ),
        (
            lambda: exact.solve(PENDULUM, horizon=3, alpha=1.0),
            TypeError,
            r"mdp must be an envs.TabularMDP \(exact inference needs the transition table\), got Pendulum",
        ),
    ],
)
def test_bad_exact_inference_requests_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("larger", [False, True], ids=["same-shape", "larger-mdp"])
def test_two_guides_under_one_name_are_refused(larger):
    # Pyro hands a second pyro.param call under a name the first value: the second guide would
    # silently train the first one's logits (or fail with an IndexError on a larger MDP)
    first = guides.TabularGuide(MDP, horizon=3)
    first.register()
    other = envs.random_mdp(5 if larger else 3, 2, seed=1)
    with pytest.raises(
        ValueError, match=r"another guide already keeps its parameters .* name='tabular_guide'"
    ):
        guides.TabularGuide(other, horizon=3).register()
    guides.TabularGuide(other, horizon=3, name="other").register()  # its own name: fine
    pyro.clear_param_store()
    guides.TabularGuide(other, horizon=3).register()  # a cleared store: the name is free again


def test_a_stale_parameter_of_another_shape_is_named():
    pyro.get_param_store()["open_loop.loc"] = torch.zeros(2, 1)  # left by an earlier, shorter plan
    guide = guides.OpenLoopGuide(PENDULUM, horizon=5)
    with pytest.raises(
        ValueError, match=r"param store holds 'open_loop.loc' of shape \(2, 1\), .* needs \(5, 1\)"
    ):
        guide.register()
