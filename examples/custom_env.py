"""Your own environment from Python: register the point mass, check it, train it by SVI.

``examples/point_mass.py`` is a complete ``FunctionalEnv`` (a point mass steered to a goal past two
obstacles). This script registers it under an id of its own, checks it with Gymnasium's
``check_env`` and the batch-shape rule of docs/functional_env.md, trains it with the ``svi``
algorithm (segment SVI through its differentiable dynamics, the settings of
``examples/point_mass.toml``) through ``runs.train_run``, the Python side of ``rlai train``, and
compares the trained policy with pushing no force at all, from the same initial states.

    python examples/custom_env.py            # 100k env steps, about 20 s on 2 CPUs
    python examples/custom_env.py --small    # a few seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from gymnasium.utils.env_checker import check_env

import rl_as_inference as rlai
from rl_as_inference import envs, runs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `python examples/custom_env.py` puts only examples/ on the path
from examples.point_mass import PointMass  # noqa: E402 (importable once the repository root is on the path)

ENV_ID = "mypkg/PointMass-v0"


def check(env: PointMass) -> None:
    """Gymnasium's checker on one copy behind Gymnasium's API, then a [3, 8] batch against an [8] one."""
    with warnings.catch_warnings():  # the velocity is unbounded, as declared; the checker would say so
        warnings.filterwarnings("ignore", message=".*infinity", category=UserWarning)
        check_env(envs.GymnasiumEnv(env=PointMass(dtype=torch.float64)), skip_render_check=True)
    state = env.reset(8, seed=0)
    action = torch.rand(8, 2) * 2 - 1
    flat = env.step(state, action)
    batched = env.step(state.expand(3, 8, 4), action.expand(3, 8, 2))
    assert batched.reward.shape == (3, 8) and torch.equal(batched.reward[1], flat.reward)


def mean_return(env: PointMass, act: Callable[[torch.Tensor], torch.Tensor], episodes: int = 200) -> float:
    """Mean return over the time limit from fixed initial states (the same for every policy)."""
    state, total = env.reset(episodes, seed=123), torch.zeros(episodes)
    for _ in range(env.max_episode_steps):
        out = env.step(state, act(env.observe(state)))
        state, total = out.state, total + out.reward
    return total.mean().item()


def main(small: bool, out: Path) -> None:
    torch.set_num_threads(1)  # small networks run fastest on one thread (as rlai's --threads default)
    envs.register(ENV_ID, PointMass)  # the time limit comes from the class: 100 steps
    env = envs.make(ENV_ID)
    check(env)
    steps = 20_000 if small else 100_000
    run_dir = out / f"point-mass-svi-{steps}"
    if not (run_dir / "checkpoint.pt").is_file():  # train_run refuses a finished run's directory
        runs.train_run(
            ENV_ID,
            algo="svi",
            config_file=str(HERE / "point_mass.toml"),
            sets=[f"total_env_steps={steps}", f"log_every={steps // 4}"],
            seed=0,
            out=run_dir,
            progress=False,
            eval_episodes=0,  # compared below, on the batched env, against the zero-force baseline
        )
    policy = rlai.load_policy(run_dir)  # the mode of q(a | s), clipped to the action box
    trained = mean_return(env, lambda obs: torch.as_tensor(policy.act(obs)))
    zero = mean_return(env, lambda obs: torch.zeros(obs.shape[0], 2))
    print(f"{ENV_ID}: the policy of {run_dir} (svi, {steps} env steps)")
    print(f"mean return over {env.max_episode_steps} steps: zero force {zero:.2f}, svi {trained:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="the size the test suite runs")
    parser.add_argument("--out", type=Path, help="where to write the run (default: a temporary directory)")
    args = parser.parse_args()
    if args.out is not None:
        main(args.small, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(args.small, Path(tmp))
