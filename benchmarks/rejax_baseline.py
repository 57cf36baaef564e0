"""Time to solve with rejax: a third baseline, beside ours and Stable-Baselines3, for ``solve.py``.

rejax (JAX reinforcement learning on gymnax environments) compiles its whole training loop with
``jax.jit``. This module trains rejax's PPO on CartPole-v1 and rejax's SAC on Pendulum-v1 with
rejax's own published hyperparameters (:data:`REJAX_CONFIGS`) and measures them with the protocol
of ``solve.py`` (see its module docstring), so that the numbers sit in the same table:

- training runs on rejax's gymnax port of the task, as rejax does; evaluation uses Gymnasium's own
  environment (``gymnasium.make(env_id)``), episode i reset with seed ``10_000 + i``, through
  ``solve.Tracker`` and ``solve.evaluate_returns``, exactly as for the other two libraries;
- actions in evaluation are the policy's mode (rejax's ``make_act`` samples, so the mode is computed
  here: the argmax of the categorical logits; for the squashed Gaussian ``loc + tanh(mean) * scale``
  as rejax squashes its samples), on observations normalized with the train state's running
  statistics where the config normalizes, as rejax's ``make_act`` does;
- training is split into chunks of ``eval_every`` env steps (rounded to whole rejax iterations: a
  PPO iteration is ``num_envs * num_steps`` env steps, a SAC iteration ``num_envs``): one chunk is
  ``algo.train(train_state=ts)`` of an algorithm built with ``total_timesteps`` = ``eval_freq`` = the
  chunk, ``skip_initial_evaluation=True`` and an evaluation callback that does nothing, so no
  evaluation runs inside the compiled loop. Neither PPO nor SAC in rejax reads ``total_timesteps``
  except as the loop length (no schedules), and the random key lives in the train state, so the
  chunked run is the run ``algo.train`` would make in one call. After every chunk the policy is
  evaluated; training stops at the first evaluation that reaches ``solve.THRESHOLDS`` unless
  ``full``; then the final policy is confirmed on ``final_episodes`` episodes;
- env steps are the train state's ``global_step`` (summed over rejax's parallel envs).

Compilation is reported apart from the training clock: ``init_state``, the chunk function(s) and the
act function are compiled ahead of time (``jax.jit(f).lower(...).compile()``) before the clock
starts, and their seconds (with the construction of rejax's algorithm objects, milliseconds) go to
:attr:`RejaxResult.compile_seconds`. The training clock covers the execution of the compiled
``init_state`` and of the compiled chunks (``jax.block_until_ready`` before every reading), minus
evaluations, as ``Tracker`` measures it. Budget: the config's ``total_timesteps`` times
``budget_scale``, or ``budget``; a last partial chunk is rounded up to whole iterations.

rejax and gymnax are optional benchmark dependencies (``pip install "rejax==0.1.3" "gymnax==0.0.9"``),
never runtime ones. JAX runs on the CPU only here.

Run one measurement (CPU, one thread):

    python benchmarks/rejax_baseline.py --env CartPole-v1 --seed 0
    python benchmarks/rejax_baseline.py --env Pendulum-v1 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

try:  # run as a script from benchmarks/ (as solve.py is), or imported from the repository root
    from solve import EVAL_EVERY, THRESHOLDS, RunResult, Tracker, confirm_final
except ModuleNotFoundError:
    from benchmarks.solve import EVAL_EVERY, THRESHOLDS, RunResult, Tracker, confirm_final

# rejax's published hyperparameters, copied from the rejax repository (github.com/keraJLi/rejax,
# tag v0.1.3): configs/gymnax/cartpole.yaml, section ``ppo``, and configs/gymnax/pendulum.yaml,
# section ``sac``. "algo" names the section; every other key is the YAML's own. ``total_timesteps``
# is the budget; ``eval_freq`` is rejax's evaluation cadence, kept for the record but replaced by the
# protocol's ``eval_every``. rejax's defaults fill the rest (e.g. 64x64 hidden layers).
REJAX_CONFIGS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "algo": "ppo",
        "env": "CartPole-v1",
        "agent_kwargs": {"activation": "tanh"},
        "num_envs": 5,
        "num_steps": 100,
        "num_epochs": 5,
        "num_minibatches": 5,
        "learning_rate": 0.00075,
        "max_grad_norm": 0.5,
        "total_timesteps": 100_000,
        "eval_freq": 1000,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_eps": 0.2,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
    },
    "Pendulum-v1": {
        "algo": "sac",
        "env": "Pendulum-v1",
        "agent_kwargs": {"activation": "swish"},
        "num_envs": 1,
        "buffer_size": 10_000,
        "fill_buffer": 256,
        "batch_size": 256,
        "learning_rate": 0.01,
        "num_epochs": 1,
        "total_timesteps": 10_000,
        "eval_freq": 100,
        "gamma": 0.99,
        "polyak": 0.98,
        "target_entropy_ratio": None,
        "normalize_observations": True,
    },
}


@dataclasses.dataclass
class RejaxResult(RunResult):
    """A :class:`solve.RunResult` with the ahead-of-time compilation kept apart from training.

    A dataclass subclass, so ``dataclasses.asdict`` (solve.py's ``--json``) and ``solve.tables``
    take it like any other result."""

    compile_seconds: float = 0.0


def configure_jax(threads: int) -> None:
    """Environment variables JAX reads at import: the CPU platform and, for one thread, no
    multi-threaded Eigen kernels.

    JAX has no thread-count setting for its CPU client. ``--xla_cpu_multi_thread_eigen=false`` is the
    XLA flag that keeps Eigen's matrix kernels on the calling thread (the often-quoted companion
    ``intra_op_parallelism_threads=1`` is no XLA flag: XLA ignores the bare word, so it is not set).
    With more than one thread XLA's defaults are kept. The compiled rejax loops are sequential
    (small networks, one or a few envs), so their CPU time is about their wall time either way.
    The variables only act before ``import jax``: call this first in a fresh process."""
    if "jax" in sys.modules:
        print("rejax_baseline: jax already imported, XLA_FLAGS left as they are", file=sys.stderr)
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


def make_algorithm(env_id: str, chunk_steps: int) -> Any:
    """rejax's algorithm for ``env_id`` with its published settings, whose ``train`` runs
    ``chunk_steps`` env steps (a whole number of iterations) without evaluating."""
    import rejax

    config = copy.deepcopy(REJAX_CONFIGS[env_id])
    algo_cls = rejax.get_algo(config.pop("algo"))
    config.pop("eval_freq")
    config.update(total_timesteps=chunk_steps, eval_freq=chunk_steps, skip_initial_evaluation=True)
    algo = algo_cls.create(**config)
    # create() defines its own eval_callback (128 rollouts per evaluation): replaced, since the
    # protocol evaluates on Gymnasium, outside the compiled loop.
    return algo.replace(eval_callback=lambda algo, ts, rng: ())


def iteration_steps(algo: Any) -> int:
    """Env steps of one rejax training iteration (over all parallel envs)."""
    from rejax.algos.mixins import OnPolicyMixin

    if isinstance(algo, OnPolicyMixin):  # PPO: num_steps steps of every env, then the updates
        return algo.num_envs * algo.num_steps
    return algo.num_envs  # off-policy (SAC): one step of every env per iteration


def policy_mode(algo: Any) -> Callable[[Any, Any, Any], Any]:
    """``mode(actor_params, obs_rms_state, obs) -> action`` for one unbatched observation: the
    deterministic action of rejax's policy, on the observation normalized as its ``make_act`` does."""
    import jax.numpy as jnp
    from rejax.networks import DiscretePolicy, SquashedGaussianPolicy

    actor = algo.actor
    if not isinstance(actor, DiscretePolicy | SquashedGaussianPolicy):
        raise TypeError(f"no deterministic action for rejax policy {type(actor).__name__}")

    def mode(params: Any, obs_rms_state: Any, obs: Any) -> Any:
        if algo.normalize_observations:
            obs = algo.normalize_obs(obs_rms_state, obs)
        dist = actor.apply(params, obs[None], method="_action_dist")
        if isinstance(actor, DiscretePolicy):
            return jnp.argmax(dist.logits[0])
        # rejax samples u from the Gaussian and acts with loc + tanh(u) * scale: the mode of u is its
        # mean, and the squashing is monotone, so this is the squashed distribution's mode too.
        return actor.action_loc + jnp.tanh(dist.loc[0]) * actor.action_scale

    return mode


def _chunk_plan(budget: int, chunk: int, iteration: int) -> list[int]:
    """Chunk lengths in env steps: whole chunks, then the rest rounded up to whole iterations."""
    plan = [chunk] * (budget // chunk)
    rest = budget - sum(plan)
    if rest > 0:
        plan.append(-(-rest // iteration) * iteration)
    return plan


def run_rejax(job: dict) -> RejaxResult:
    """Train rejax on ``job["env"]`` with the protocol of ``solve.py`` (see the module docstring).

    ``job`` has solve.py's job keys (env, seed, budget, budget_scale, eval_every, eval_episodes,
    final_episodes, full, device, threads). Returns a :class:`RejaxResult` (library ``"rejax"``)."""
    if job.get("device", "cpu") != "cpu":
        raise ValueError("the rejax baseline runs JAX on the CPU only")
    configure_jax(job["threads"])
    import jax

    env_id, seed = job["env"], job["seed"]
    if env_id not in REJAX_CONFIGS:
        raise ValueError(f"no rejax settings for {env_id}; have {', '.join(REJAX_CONFIGS)}")
    settings = REJAX_CONFIGS[env_id]
    budget = job["budget"] or int(round(settings["total_timesteps"] * job["budget_scale"]))
    result = RejaxResult("rejax", env_id, seed, settings["algo"].upper(), budget, THRESHOLDS[env_id])
    tracker = Tracker.for_job(result, job, "cpu")

    # Everything compiled before the clock: init_state, one function per distinct chunk length (the
    # regular chunk and possibly a shorter last one), and the act function.
    t0 = time.perf_counter()
    probe = make_algorithm(env_id, 1)
    iteration = iteration_steps(probe)
    chunk = max(1, round(job["eval_every"] / iteration)) * iteration
    plan = _chunk_plan(budget, chunk, iteration)
    algos = {steps: make_algorithm(env_id, steps) for steps in sorted(set(plan))}
    algo = algos[chunk] if chunk in algos else next(iter(algos.values()))
    rng = jax.random.PRNGKey(seed)
    init = jax.jit(algo.init_state).lower(rng).compile()
    # Shapes only (init_state itself runs inside the clock), taken from the compiled init_state:
    # rejax's init_state makes a new train-state class at every trace, and a compiled function
    # accepts only the class it was lowered with, so jax.eval_shape's would not do.
    state_shape = init.out_info
    train_chunk = {
        steps: jax.jit(lambda ts, a=a: a.train(train_state=ts)[0]).lower(state_shape).compile()
        for steps, a in algos.items()
    }
    obs_shape = jax.ShapeDtypeStruct(algo.obs_space.shape, np.float32)
    mode = jax.jit(policy_mode(algo))
    mode = mode.lower(state_shape.actor_ts.params, state_shape.obs_rms_state, obs_shape).compile()
    result.compile_seconds = time.perf_counter() - t0

    holder: dict[str, Any] = {}
    discrete = algo.discrete

    def act(obs: np.ndarray) -> Any:
        ts = holder["ts"]
        action = np.asarray(mode(ts.actor_ts.params, ts.obs_rms_state, np.asarray(obs, np.float32)))
        return int(action) if discrete else action

    tracker.restart_clock()
    ts = jax.block_until_ready(init(rng))
    env_steps = 0
    for steps in plan:
        ts = jax.block_until_ready(train_chunk[steps](ts))
        env_steps = int(ts.global_step)
        holder["ts"] = ts
        if tracker.evaluate(env_steps, act):
            break
    tracker.finish(env_steps, act)
    confirm_final(result, act, job["final_episodes"])
    return result


def run_rejax_job(job: dict) -> RunResult:
    """Like ``solve.run_job`` for rejax: a failed run comes back as a result with ``error`` set."""
    try:
        return run_rejax(job)
    except Exception as exc:  # reported in the table, not fatal to the other runs
        algo = REJAX_CONFIGS.get(job["env"], {}).get("algo", "?").upper()
        return RejaxResult("rejax", job["env"], job["seed"], algo, 0, THRESHOLDS[job["env"]], error=repr(exc))


def main(argv: list[str] | None = None) -> None:
    """Command line: one rejax run, printed (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", choices=list(REJAX_CONFIGS), default="CartPole-v1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=None, help="env steps (default: the config's)")
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=None, help="env steps (default: solve.py's)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--final-episodes", type=int, default=100)
    parser.add_argument("--full", action="store_true", help="train the whole budget")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    job = {
        "env": args.env,
        "seed": args.seed,
        "budget": args.budget,
        "budget_scale": args.budget_scale,
        "eval_every": args.eval_every or EVAL_EVERY[args.env],
        "eval_episodes": args.eval_episodes,
        "final_episodes": args.final_episodes,
        "full": args.full,
        "device": "cpu",
        "threads": args.threads,
    }
    r = run_rejax(job)
    from importlib.metadata import version

    print(", ".join(f"{name} {version(name)}" for name in ("jax", "jaxlib", "rejax", "gymnax", "flax")))
    print(f"{r.env} seed {r.seed} rejax {r.algo}, budget {r.budget:,}")
    print(f"compile s: {r.compile_seconds:.2f}")
    reached = (
        f"{r.seconds_to_threshold:.2f} s, {r.steps_to_threshold:,} env steps" if r.solved else "not reached"
    )
    print(f"threshold {r.threshold}: {reached}")
    print(f"train s (whole run): {r.train_seconds:.2f}; final env steps: {r.final_env_steps:,}")
    print(f"final mean: {r.final_mean:.1f} (std {r.final_std:.1f}, {r.final_episodes} episodes)")
    curve = ", ".join(f"{steps}: {mean:.0f} ({secs:.1f} s)" for steps, secs, mean in r.evals)
    print(f"evaluations (env steps: mean return (training s)): {curve or 'none'}")


if __name__ == "__main__":
    main()
