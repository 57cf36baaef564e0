"""Bad inputs to the functional environments and the tabular MDPs: one ValueError or TypeError
naming the value and what is allowed, never a silent NaN, a wrong step or an IndexError.

The value checks (finite states and actions, discrete indices in range) run on the CPU; on CUDA
they would cost a host-device synchronization per step and are skipped, as documented in
``FunctionalEnv._check_values``.
"""

from __future__ import annotations

import pytest
import torch

from rl_as_inference import envs

NAN, INF = float("nan"), float("inf")


def _step(env_id: str, action, state=None):
    env = envs.make(env_id)
    state = env.reset(2, seed=0) if state is None else state
    return env.step(state, action)


@pytest.mark.parametrize(
    ("env_id", "action", "error", "message"),
    [
        (
            "CartPole-v1",
            torch.tensor([2, 0]),
            ValueError,
            r"action 2 at index \(0,\) is out of range: .*\[0, 2\)",
        ),
        ("CartPole-v1", torch.tensor([0, -1]), ValueError, r"action -1 at index \(1,\) is out of range"),
        (
            "CartPole-v1",
            torch.tensor([0.5, 0.0]),
            TypeError,
            r"action dtype is torch.float32; .*integer tensor",
        ),
        (
            "CartPole-v1",
            torch.tensor([0, 1, 0]),
            ValueError,
            r"action has shape \(3,\) but the state batch is \(2,\)",
        ),
        (
            "Acrobot-v1",
            torch.tensor([3, 0]),
            ValueError,
            r"action 3 .*out of range: Acrobot-v1 has actions in \[0, 3\)",
        ),
        (
            "MountainCar-v0",
            torch.tensor([0, 5]),
            ValueError,
            r"action 5 .*MountainCar-v0 has actions in \[0, 3\)",
        ),
        (
            "Pendulum-v1",
            torch.tensor([[NAN], [0.0]]),
            ValueError,
            r"action has a non-finite entry nan at index \(0, 0\)",
        ),
        (
            "Pendulum-v1",
            torch.tensor([[0.0], [INF]]),
            ValueError,
            r"action has a non-finite entry inf at index \(1, 0\)",
        ),
        (
            "Pendulum-v1",
            torch.tensor([0.0, 0.0]),
            ValueError,
            r"action has shape \(2,\) .*expects actions \[\*batch, 1\]",
        ),
        ("Pendulum-v1", [[0.0], [0.0]], TypeError, r"action must be a torch.Tensor, got list"),
        (
            "MountainCarContinuous-v0",
            torch.tensor([[-INF], [0.0]]),
            ValueError,
            r"action has a non-finite entry -inf",
        ),
    ],
)
def test_bad_actions_are_named(env_id, action, error, message):
    with pytest.raises(error, match=message):
        _step(env_id, action)


@pytest.mark.parametrize(
    ("env_id", "state", "action", "message"),
    [
        (
            "CartPole-v1",
            torch.full((2, 4), NAN),
            torch.tensor([0, 0]),
            r"state has a non-finite entry nan at index \(0, 0\)",
        ),
        (
            "Pendulum-v1",
            torch.tensor([[0.0, INF]]),
            torch.tensor([[0.0]]),
            r"state has a non-finite entry inf",
        ),
        (
            "Pendulum-v1",
            torch.zeros(2, 3),
            torch.zeros(2, 1),
            r"state has shape \(2, 3\); Pendulum-v1 expects \[\*batch, 2\]",
        ),
    ],
)
def test_bad_states_are_named(env_id, state, action, message):
    with pytest.raises(ValueError, match=message):
        _step(env_id, action, state)


def test_nan_states_are_refused_by_observe_too():
    env = envs.make("Acrobot-v1")
    with pytest.raises(ValueError, match="state has a non-finite entry nan"):
        env.observe(torch.full((1, 4), NAN))


MDP = envs.random_mdp(3, 2, seed=0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: MDP.step(MDP.reset(2, seed=0), torch.tensor([7, 0])),
            r"action 7 .*out of range: .* actions in \[0, 2\)",
        ),
        (
            lambda: MDP.step(MDP.reset(2, seed=0), torch.tensor([0, -1])),
            r"action -1 at index \(1,\) is out of range",
        ),
        (
            lambda: MDP.step(torch.tensor([9, 0]), torch.tensor([0, 0])),
            r"state 9 .*out of range: .* states in \[0, 3\)",
        ),
        (lambda: MDP.transition_dist(torch.tensor([0, 0]), torch.tensor([2, 0])), r"action 2 .*out of range"),
        (lambda: envs.random_mdp(0, 2), r"num_states=0 is not allowed; use an int >= 1"),
        (lambda: envs.random_mdp(3, 0), r"num_actions=0 is not allowed; use an int >= 1"),
        (lambda: envs.random_mdp(2.5, 2), r"num_states=2.5 is not allowed"),
        (lambda: envs.gridworld(0, 3), r"height=0 is not allowed"),
        (lambda: envs.gridworld(3, 3, slip=NAN), r"slip=nan is not allowed; use a probability in \[0, 1\]"),
        (lambda: envs.chain(0), r"length=0 is not allowed"),
    ],
)
def test_bad_tabular_inputs_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"transition": torch.full((3, 2, 3), 0.5, dtype=torch.float64)},
            r"transition\[0, 0, :\] sums to 1.5",
        ),
        (
            {"reward": torch.full((3, 2), NAN, dtype=torch.float64)},
            r"reward must be finite; reward\[0, 0\] is nan",
        ),
        ({"reward": torch.zeros(2, 2, dtype=torch.float64)}, r"reward must have shape \[S, A\] = \[3, 2\]"),
        ({"initial": torch.ones(3, dtype=torch.float64)}, r"initial\[:\] sums to 3"),
    ],
)
def test_bad_tables_are_named(change, message):
    tables = {"transition": MDP.transition, "reward": MDP.reward, "initial": MDP.initial} | change
    with pytest.raises(ValueError, match=message):
        envs.TabularMDP(**tables)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: envs.make("NoSuchEnv-v9"), ValueError, r"unknown environment id 'NoSuchEnv-v9'"),
        (lambda: envs.make("Pendulum-v1", device="tpu"), ValueError, r"device='tpu' is not a torch device"),
        (
            lambda: envs.make("Pendulum-v1", dtype=torch.int32),
            TypeError,
            r"dtype=torch.int32 is not supported",
        ),
        (lambda: envs.make("Pendulum-v1").reset(0), ValueError, r"num_envs must be >= 1, got 0"),
        (lambda: envs.make_vec("Pendulum-v1", num_envs=0), ValueError, r"num_envs must be >= 1, got 0"),
        (
            lambda: envs.make("Pendulum-v1").use_exploring_starts(1.5),
            ValueError,
            r"exploring_starts=1.5 is not allowed",
        ),
    ],
)
def test_bad_construction_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_the_checks_cost_nothing_on_good_input():
    # the same step with checks passes and gives the unchecked result
    env = envs.make("CartPole-v1")
    state = env.reset(4, seed=1)
    action = torch.tensor([0, 1, 1, 0])
    checked, raw = env.step(state, action), env._step(state, action)
    assert torch.equal(checked.state, raw.state) and torch.equal(checked.reward, raw.reward)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Gymnasium's passive checker warns first
@pytest.mark.parametrize(
    ("env_id", "action", "message"),
    [
        ("FrozenLake-v1", [7, 0], r"actions\[0\] = 7 is not allowed; use integers in \[0, 4\)"),
        ("FrozenLake-v1", [0, -1], r"actions\[1\] = -1 is not allowed; use integers in \[0, 4\)"),
        ("CartPole-v1", [0, 2], r"actions\[1\] = 2 is not allowed; use integers in \[0, 2\)"),
        ("Pendulum-v1", [[NAN], [0.0]], r"actions\[0, 0\] = nan is not allowed; use finite numbers"),
        ("Pendulum-v1", [[0.0], [INF]], r"actions\[1, 0\] = inf is not allowed"),
    ],
)
def test_gymnasium_envs_name_a_bad_action(env_id, action, message):
    # Gymnasium's FrozenLake answers an out-of-range action with a bare KeyError, Pendulum a NaN
    # action with a NaN reward; through from_gymnasium both are refused before the env sees them
    vec = envs.from_gymnasium(env_id, num_envs=2)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        vec.step(torch.tensor(action))
    vec.close()


def test_gymnasium_envs_still_take_good_and_out_of_box_actions():
    vec = envs.from_gymnasium("Pendulum-v1", num_envs=2)
    vec.reset(seed=0)
    _, reward, *_ = vec.step(torch.tensor([[5.0], [0.0]]))  # Pendulum clips to its box, as in Gymnasium
    assert torch.isfinite(reward).all()
    vec.close()


class _NaNRewardPendulum(envs.Pendulum):
    """A user's env whose reward function breaks at large speeds."""

    def _step(self, state, action):
        out = super()._step(state, action)
        reward = torch.where(state[..., 1].abs() > 0.5, torch.full_like(out.reward, float("nan")), out.reward)
        return out._replace(reward=reward)


def test_a_non_finite_reward_of_a_torch_env_is_named_at_its_step():
    env = _NaNRewardPendulum()
    state = torch.tensor([[0.0, 0.1], [0.0, 0.9], [0.0, 0.2]])
    with pytest.raises(
        ValueError, match=r"Pendulum-v1's step returned a non-finite reward nan at index \(1,\)"
    ):
        env.step(state, torch.zeros(3, 1))
    env.step(state[:1], torch.zeros(1, 1))  # finite rewards pass
