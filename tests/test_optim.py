"""rl_as_inference.optim.adam: the fused Adam of the training loops against torch's reference Adam."""

from __future__ import annotations

import copy

import torch
from torch import nn

from rl_as_inference.optim import adam


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 50) -> None:
    x = torch.linspace(-1, 1, 60).reshape(20, 3)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


def test_adam_is_fused_on_cpu_and_matches_the_reference_update():
    fast, ref = _net(0), _net(0)
    opt = adam(fast.parameters(), lr=1e-2)  # a generator, consumed once
    assert opt.defaults["fused"] is True
    _train(fast, opt)
    _train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2))
    for a, b in zip(fast.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float32 rounding only
    assert not torch.equal(next(fast.parameters()), next(_net(0).parameters()))  # it did train


def test_adam_keeps_parameter_groups_and_their_learning_rates():
    policy, value = _net(1), _net(2)
    opt = adam(
        [{"params": policy.parameters(), "lr": 1e-3}, {"params": value.parameters(), "lr": 5e-3}],
        lr=1e-3,
    )
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 5e-3]
    assert [len(g["params"]) for g in opt.param_groups] == [4, 4]


def test_adam_state_round_trips_through_a_state_dict():
    net, twin = _net(3), _net(3)
    opt, twin_opt = adam(net.parameters(), lr=1e-2), adam(twin.parameters(), lr=1e-2)
    _train(net, opt, 10)
    twin.load_state_dict(copy.deepcopy(net.state_dict()))  # as a checkpoint file would hold them
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(net, opt, 10)
    _train(twin, twin_opt, 10)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)  # a resumed run continues bit for bit


def test_float64_parameters_are_fused_and_other_dtypes_are_left_to_torch():
    assert adam([torch.zeros(2, dtype=torch.float64, requires_grad=True)], lr=1e-3).defaults["fused"] is True
    assert adam([torch.zeros(2, dtype=torch.long)], lr=1e-3).defaults["fused"] is None
