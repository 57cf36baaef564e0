"""Resumable training: a run stopped mid-way and resumed from its training state ends bit-identical
to an uninterrupted one (CPU), for every replay-based algorithm, V-MPO and on-policy segment SVI."""

from __future__ import annotations

import pytest
import torch

from rl_as_inference.algos import em, mpo, sac, softq, svi, vmpo
from rl_as_inference.resume import Checkpointer, read_train_state

SMALL = {"total_env_steps": 700, "learning_starts": 200, "log_every": 100, "batch_size": 32, "hidden": (16,)}
# On-policy: batches of 32 env steps; pi_old refreshed every 5 learner steps, inside a batch of 3
ON_POLICY = {"total_env_steps": 700, "log_every": 100, "hidden": (16,), "unroll_length": 8}
ON_POLICY |= {"updates_per_batch": 3, "target_update_every": 5}
CASES = {
    "sac": (sac, sac.SACConfig(env="Pendulum-v1", num_envs=2, n_step=2, **SMALL)),
    "svi": (svi, svi.SVIConfig(env="Pendulum-v1", horizon=2, actor_batch_size=8, **SMALL)),
    "em": (em, em.EMConfig(env="Pendulum-v1", horizon=2, actor_batch_size=8, prior_update_every=7, **SMALL)),
    "mpo-categorical": (
        mpo,
        mpo.MPOConfig(env="CartPole-v1", num_envs=3, target_policy_update_every=9, **SMALL),
    ),
    "mpo-gaussian": (mpo, mpo.MPOConfig(env="Pendulum-v1", num_samples=4, **SMALL)),
    # one critic, a multiplier per action coordinate and the out-of-box temperature: all resume
    "mpo-refined": (
        mpo,
        mpo.MPOConfig(
            env="MountainCarContinuous-v0",
            num_samples=4,
            twin_critic=False,
            per_dim_constraints=True,
            action_penalization=True,
            **SMALL,
        ),
    ),
    "softq": (
        softq,
        softq.SoftQConfig(
            env="CartPole-v1",
            num_envs=3,
            updates_every=2,
            alpha=1.0,
            alpha_final=0.1,
            anneal_lr=True,
            **SMALL,
        ),
    ),
    "vmpo-categorical": (vmpo, vmpo.VMPOConfig(env="CartPole-v1", num_envs=4, **ON_POLICY)),
    "vmpo-gaussian": (vmpo, vmpo.VMPOConfig(env="Pendulum-v1", num_envs=4, **ON_POLICY)),
    # the running observation statistics live in the networks' state dicts and resume with them
    "vmpo-normalized": (
        vmpo,
        vmpo.VMPOConfig(env="Pendulum-v1", num_envs=4, normalize_obs=True, rescale_actions=True, **ON_POLICY),
    ),
    "svi-rollout": (
        svi,
        svi.SVIConfig(env="Pendulum-v1", start_states="rollout", num_envs=4, horizon=3, alpha=None, **SMALL),
    ),
}


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", list(CASES))
def test_interrupted_and_resumed_run_ends_bit_identical(name, tmp_path):
    module, config = CASES[name]
    whole = module.train(config, checkpointer=Checkpointer(tmp_path / "whole.pt", every=250))

    def stop_after_500(row):
        if row["env_steps"] >= 500:  # the last checkpoint was at 250 or 500: work after it is lost
            raise Stop

    with pytest.raises(Stop):
        module.train(
            config, callback=stop_after_500, checkpointer=Checkpointer(tmp_path / "cut.pt", every=250)
        )
    saved = read_train_state(tmp_path / "cut.pt")
    # the checkpoint at >= 500 would come at the top of the next iteration, which never ran
    steps_per_iteration = config.num_envs * (
        config.horizon if name == "svi-rollout" else getattr(config, "unroll_length", 1)
    )
    if name == "softq":  # it logs after a learner step, every updates_every collections: the stop
        # can come one collection after the checkpoint at >= 500, whose work is then lost
        assert 250 <= saved["env_steps"] < 500 + config.num_envs
    else:
        assert 250 <= saved["env_steps"] < 250 + steps_per_iteration
    rows = []
    resumed = module.train(
        config, callback=rows.append, checkpointer=Checkpointer(tmp_path / "cut.pt", every=250, resume=True)
    )
    assert rows and rows[0]["env_steps"] > saved["env_steps"]
    assert resumed.env_steps == whole.env_steps
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key
    final = read_train_state(tmp_path / "cut.pt")
    assert final["env_steps"] == whole.env_steps


def test_resume_refuses_foreign_or_missing_states(tmp_path):
    module, config = CASES["sac"]
    with pytest.raises(ValueError, match="no training state to resume from"):
        module.train(config, checkpointer=Checkpointer(tmp_path / "none.pt", resume=True))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable training state"):
        module.train(config, checkpointer=Checkpointer(tmp_path / "junk.pt", resume=True))
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an rl_as_inference training state"):
        module.train(config, checkpointer=Checkpointer(tmp_path / "foreign.pt", resume=True))
    mpo_module, mpo_config = CASES["mpo-gaussian"]
    mpo_module.train(mpo_config, checkpointer=Checkpointer(tmp_path / "mpo.pt"))
    with pytest.raises(ValueError, match="holds a mpo run, not sac"):
        module.train(config, checkpointer=Checkpointer(tmp_path / "mpo.pt", resume=True))
    with pytest.raises(ValueError, match="checkpoint_every=-5 is not allowed; use an int >= 0"):
        Checkpointer(tmp_path / "x.pt", every=-5)
