"""One rank of the data-parallel ``fit`` tests, launched by ``torchrun`` from tests/test_distributed.py.

Usage: torchrun --standalone --nproc_per_node=K tests/distributed_worker.py MODE OUT_DIR [STEPS]

Modes:
    identical  fit with each rank's parameters first created from a different seed; writes every
               rank's parameter checksums (all-gathered) to OUT_DIR/rank0.json
    equivalence  fit with SGD; each rank saves its final param store to OUT_DIR/rankR.pt
    checkpoint   fit STEPS steps with a checkpoint in OUT_DIR (resume=True): run it twice
    fail         rank 1 raises after its first step; rank 0 must not hang
    stall        rank 1 sleeps inside its second step; rank 0's collective must time out
    train        sac.train(config) from a script: policy checksums and step counts to OUT_DIR/train.json
    vmpo         each rank computes the V-MPO loss of its half of a fixed batch; the averaged
                 gradients go to OUT_DIR/vmpo.pt
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.distributed as dist

import rl_as_inference as rlai
from rl_as_inference import distributed as dp
from rl_as_inference import envs, guides, models

SEED = 3
EPISODES_PER_RANK = 8
SGD_LR = 0.05


def tabular_task(horizon: int = 5):
    """A random 6-state, 3-action MDP: categorical actions, so score-function gradients and the
    running baseline that data-parallel SVI must average over ranks."""
    mdp = envs.random_mdp(6, 3, seed=11, deterministic=False)
    model = models.TrajectoryModel(
        mdp, models.UniformPrior(mdp.action_space), horizon=horizon, alpha=0.5, gamma=0.9
    )
    guide = guides.TabularGuide(mdp, horizon=horizon, gamma=0.9, init_scale=1.0)
    return model, guide


def vmpo_batch(total: int = 16, actions: int = 3):
    """A fixed batch for the V-MPO loss, and the policy and value heads whose gradients it gives."""
    gen = torch.Generator().manual_seed(5)
    obs = torch.randn(total, 4, generator=gen)
    returns = torch.randn(total, generator=gen) * 2.0
    acts = torch.randint(0, actions, (total,), generator=gen)
    torch.manual_seed(0)
    policy, value = torch.nn.Linear(4, actions), torch.nn.Linear(4, 1)
    duals = [torch.tensor(0.0, requires_grad=True), torch.zeros(1, requires_grad=True)]
    return obs, returns, acts, policy, value, duals


def vmpo_gradients(obs, returns, acts, policy, value, duals) -> list[torch.Tensor]:
    """The gradients of the V-MPO loss of this batch (pi_old = a shifted copy of pi)."""
    from rl_as_inference.algos import vmpo

    logits = policy(obs)
    online = torch.distributions.Categorical(logits=logits)
    target = torch.distributions.Categorical(logits=(logits + 0.3 * obs[:, :3]).detach())
    loss, _ = vmpo.vmpo_losses(
        returns, value(obs).squeeze(-1), acts, online, target, *duals, vmpo.VMPOConfig()
    )
    params = [*policy.parameters(), *value.parameters(), *duals]
    for p in params:
        p.grad = None
    loss.backward()
    dp.average_gradients(params)
    return [p.grad.clone() for p in params]


def checksums() -> dict[str, float]:
    store = pyro.get_param_store()
    return {name: float(store._params[name].detach().double().sum()) for name in sorted(store.keys())}


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    dp.init_from_environment()  # the timeout from RLAI_DIST_TIMEOUT
    rank = dp.rank()
    model, guide = tabular_task()
    if mode == "identical":
        pyro.set_rng_seed(100 + rank)  # each rank creates different parameters before fit
        guide(EPISODES_PER_RANK)
        before = dp.gather_objects(checksums())
        rlai.fit(
            model,
            guide,
            num_steps=steps,
            num_episodes=EPISODES_PER_RANK,
            lr=0.05,
            seed=SEED,
            progress=False,
            distributed=True,
        )
        after = dp.gather_objects(checksums())
        if rank == 0:
            (out / "rank0.json").write_text(json.dumps({"before": before, "after": after}))
    elif mode == "equivalence":
        rlai.fit(
            model,
            guide,
            num_steps=steps,
            num_episodes=EPISODES_PER_RANK,
            optim=pyro.optim.SGD({"lr": SGD_LR}),
            seed=SEED,
            progress=False,
            distributed=True,
        )
        store = pyro.get_param_store()
        torch.save({n: store._params[n].detach().clone() for n in store}, out / f"rank{rank}.pt")
    elif mode == "checkpoint":
        result = rlai.fit(
            model,
            guide,
            num_steps=steps,
            num_episodes=EPISODES_PER_RANK,
            lr=0.05,
            seed=SEED,
            progress=False,
            distributed=True,
            checkpoint=str(out / "fit.pt"),
            resume=True,
        )
        store = pyro.get_param_store()
        torch.save({n: store._params[n].detach().clone() for n in store}, out / f"final{rank}.pt")
        if rank == 0:
            (out / "history.json").write_text(
                json.dumps({"elbo": result.elbo, "num_steps": result.num_steps})
            )
    elif mode == "fail":

        def fail_on_rank_1(step, stats):
            if rank == 1 and step == 1:
                raise RuntimeError("rank 1 fails on purpose")

        rlai.fit(
            model,
            guide,
            num_steps=50,
            num_episodes=EPISODES_PER_RANK,
            lr=0.05,
            seed=SEED,
            progress=False,
            distributed=True,
            callbacks=[fail_on_rank_1],
        )
    elif mode == "train":
        from rl_as_inference.algos import sac
        from rl_as_inference.algos.settings import rank_share

        config = sac.SACConfig(
            env="Pendulum-v1",
            total_env_steps=600,
            learning_starts=200,
            num_envs=4,
            hidden=(16, 16),
            log_every=200,
        )
        result = sac.train(config)
        policy = {k: float(v.double().sum()) for k, v in result.policy.state_dict().items()}
        record = {
            "policy": dp.gather_objects(policy),
            "env_steps": result.env_steps,
            "num_envs": dp.gather_objects(rank_share(config).num_envs),
            "rows": [r["env_steps"] for r in result.metrics],
        }
        if rank == 0:
            (out / "train.json").write_text(json.dumps(record))
    elif mode == "vmpo":
        obs, returns, acts, policy, value, duals = vmpo_batch()
        half = obs.shape[0] // dp.world_size()
        part = slice(rank * half, (rank + 1) * half)
        grads = vmpo_gradients(obs[part], returns[part], acts[part], policy, value, duals)
        if rank == 0:
            torch.save(grads, out / "vmpo.pt")
    elif mode == "stall":

        def stall_on_rank_1(step, stats):
            if rank == 1 and step == 1:
                time.sleep(120)

        rlai.fit(
            model,
            guide,
            num_steps=50,
            num_episodes=EPISODES_PER_RANK,
            lr=0.05,
            seed=SEED,
            progress=False,
            distributed=True,
            callbacks=[stall_on_rank_1],
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    # every rank done before the group goes: gloo can abort a rank that tears down while a peer
    # still runs
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
