"""The ``rlai`` command line: ``rlai train``, ``rlai evaluate``, ``rlai inspect``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rl_as_inference import distributed, runs
from rl_as_inference.envs.ids import import_env_module
from rl_as_inference.signals import TrainingInterrupted

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlai",
        description="Reinforcement learning as probabilistic inference: train, evaluate and inspect policies.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a policy and write a run directory",
        description="Train a policy on a ported environment. Defaults come from the recipe shipped for "
        "the environment (rl_as_inference/recipes/ENV.toml); --config and --set override it. The run "
        "directory gets config.toml, metrics.csv, checkpoint.pt and eval.json (100 episodes of "
        "Gymnasium's own environment).",
    )
    train.add_argument(
        "--env",
        metavar="ID",
        help="any Gymnasium id (Pendulum-v1, LunarLander-v3, ...; ported ids step as torch envs), an "
        "id added with envs.register, or module:ID / package.module:Factory (imported first)",
    )
    train.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (train_state.pt), with its own config",
    )
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=runs.DEFAULT_CHECKPOINT_EVERY,
        metavar="N",
        help=f"env steps between checkpoints of the whole training state (default {runs.DEFAULT_CHECKPOINT_EVERY}; 0: only at the end)",
    )
    train.add_argument(
        "--algo", metavar="NAME", help="algorithm (default: the recipe's); see rlai train --help"
    )
    train.add_argument(
        "--nproc",
        type=int,
        metavar="K",
        help="train data-parallel on K processes of this machine (runs torchrun --standalone "
        "--nproc_per_node=K -m rl_as_inference train ...): each steps num_envs / K envs and learns "
        "from its share of every batch, gradients averaged; for several machines run torchrun yourself",
    )
    train.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML file of config keys: top-level keys apply to any algorithm, a table named after the "
        "running algorithm ([sac]) overrides them, other algorithms' tables are skipped with a note",
    )
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)"
    )
    train.add_argument("--seed", type=int, metavar="N", help="random seed (default: the config's, 0)")
    train.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), help="where to train; auto picks CUDA when present"
    )
    train.add_argument("--out", metavar="DIR", help="run directory (default: runs/ENV-ALGO-seedN)")
    train.add_argument(
        "--eval-episodes",
        type=int,
        default=100,
        metavar="N",
        help="episodes of the final evaluation (0: none)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate a trained policy on Gymnasium's own environment",
        description="Run the policy of a run directory on Gymnasium's own environment (not the torch port) "
        "and print the mean and standard deviation of the return.",
    )
    evaluate.add_argument("run_dir", metavar="DIR", help="a run directory written by rlai train")
    evaluate.add_argument(
        "--episodes", type=int, default=100, metavar="N", help="number of episodes (default 100)"
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, metavar="N", help="episode i is reset with seed N + i"
    )
    evaluate.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of taking the mode"
    )
    evaluate.add_argument(
        "--no-progress", action="store_true", help="no progress bar (shown on a terminal by default)"
    )

    plan = sub.add_parser(
        "plan",
        help="control Gymnasium's own env by planning as inference on the torch port's dynamics",
        description="Model-predictive control: at every step infer the posterior over the next H actions "
        "given optimality (importance sampling, mppi; the cross-entropy method, cem; stochastic variational "
        "inference, svi; sequential Monte Carlo, smc) on the torch port's "
        "dynamics from the true state of Gymnasium's env, act with the first action, shift the plan. Prints "
        "the mean return and the planner's milliseconds per control step; --out writes the per-step "
        "diagnostics (ESS, temperature, PSIS k-hat) as DIR/plan.nc (ArviZ InferenceData).",
    )
    plan.add_argument("--env", required=True, metavar="ID", help="a Gymnasium id with a torch port")
    plan.add_argument("--method", default="mppi", help="mppi, cem, svi or smc (default mppi)")
    plan.add_argument(
        "--horizon", type=int, default=15, metavar="H", help="actions planned ahead (default 15)"
    )
    plan.add_argument(
        "--samples", type=int, default=1000, metavar="K", help="sampled plans per step (default 1000)"
    )
    plan.add_argument("--episodes", type=int, default=10, metavar="N", help="episodes (default 10)")
    plan.add_argument(
        "--seed",
        type=int,
        default=10_000,
        metavar="N",
        help="episode i is reset with seed N + i (default 10000)",
    )
    plan.add_argument("--alpha", type=float, default=1.0, help="the temperature, reward units (default 1)")
    plan.add_argument(
        "--target-ess",
        type=float,
        default=None,
        metavar="F",
        help="set the temperature every step so that the weights' ESS is F x K (replaces --alpha)",
    )
    plan.add_argument(
        "--noise-std", type=float, default=None, help="the proposal's scale (default: half the action box)"
    )
    plan.add_argument("--iterations", type=int, default=1, help="inference rounds per step (default 1)")
    plan.add_argument(
        "--prior",
        choices=("uniform", "plan"),
        default="uniform",
        help="pi: uniform over the actions (default), or the last plan itself (q_new proportional to q exp(R / alpha), "
        "weights exp(R / alpha): MPPI's usual update)",
    )
    plan.add_argument("--device", default=None, help="cpu, cuda or auto (default cpu)")
    plan.add_argument(
        "--compile",
        action="store_true",
        help="fuse the rollout of the sampled plans with torch.compile (a deterministic env; the first "
        "step pays the compilation)",
    )
    plan.add_argument("--out", default=None, metavar="DIR", help="write DIR/plan.nc")
    plan.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="env_kwargs.NAME=VALUE",
        help="a constructor argument of both the torch port and Gymnasium's env, as for rlai train "
        "(env_kwargs.g=2.0 or 'env_kwargs={g = 2.0}'; repeatable); the planner's settings are the flags above",
    )

    inspect = sub.add_parser(
        "inspect",
        help="diagnose a trained policy as importance sampling of p(tau | O) (ArviZ)",
        description="Draw episodes from the policy of a run directory on the torch port of its environment "
        "(uniform prior, the run's alpha and gamma), weight each by log p(tau, O) - log q(tau), and write "
        "DIR/posterior.nc (ArviZ InferenceData) and PNG plots (ELBO history, actions, states, returns, "
        "weights). Prints the ELBO, the importance-sampling estimate of log p(O), the PSIS k-hat and the ESS.",
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by rlai train")
    inspect.add_argument(
        "--out", required=True, metavar="DIR", help="where to write posterior.nc and the plots"
    )
    inspect.add_argument(
        "--episodes",
        type=int,
        default=256,
        metavar="N",
        help="episodes to draw from the policy (default 256)",
    )
    inspect.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the episodes (default 0)")
    inspect.add_argument(
        "--horizon", type=int, metavar="H", help="steps per episode (default: the environment's time limit)"
    )
    inspect.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where to run the episodes"
    )
    for command in (evaluate, inspect):
        command.add_argument(
            "--env",
            metavar="MODULE:ID",
            help="import MODULE first: the module that registers the run's id, typed as for rlai "
            "train (module:ID or package.module:Factory); a run's files never name one",
        )
    for command in (train, evaluate, inspect, plan):
        command.add_argument(
            "--threads",
            type=int,
            default=1,
            metavar="N",
            help="CPU threads for torch (default 1: the small networks here run fastest on one thread, "
            "and concurrent runs do not fight over cores)",
        )
    return parser


def _inspect(args: argparse.Namespace) -> None:
    from rl_as_inference import diagnostics
    from rl_as_inference.envs.base import resolve_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if isinstance(args.horizon, int) and args.horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {args.horizon}")
    if args.episodes < 2:
        raise ValueError(f"episodes must be an int >= 2, got {args.episodes}")
    idata = diagnostics.from_run(
        args.run_dir,
        num_episodes=args.episodes,
        seed=args.seed,
        device=resolve_device(args.device),
        horizon=args.horizon,
    )
    out.mkdir(parents=True, exist_ok=True)
    diagnostics.to_netcdf(idata, out / "posterior.nc")
    paths = diagnostics.save_plots(idata, out)
    s = diagnostics.summarize(idata)
    attrs = idata.posterior.attrs
    k = s["pareto_k"]
    verdict = "good" if k < 0.5 else "ok" if k < 0.7 else "q misses p(tau|O): the IS estimate is unreliable"
    rows = [
        ("ELBO (mean log w)", f"{s['elbo']:.4g} +- {s['elbo_se']:.2g} (SE)"),
        ("log p(O) (IS estimate)", f"{s['log_evidence']:.4g} +- {s['log_evidence_se']:.2g} (SE)"),
        ("PSIS k-hat", f"{k:.3g} ({verdict})"),
        ("ESS (Kish)", f"{s['ess']:.1f} of {int(s['num_episodes'])}"),
        (
            "return",
            f"mean {s['return_mean']:.4g}, sd {s['return_std']:.3g}, "
            f"5%-95% [{s['return_q05']:.4g}, {s['return_q95']:.4g}]"
            if math.isfinite(s["return_mean"])
            else "not recorded",
        ),
    ]
    print(
        f"{int(s['num_episodes'])} episodes of {attrs.get('env')} (horizon {attrs.get('horizon')}, "
        f"alpha {attrs.get('alpha', float('nan')):.3g}, gamma {attrs.get('gamma', float('nan')):.3g}, "
        f"objective {attrs.get('objective')})"
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"wrote {out / 'posterior.nc'} and {', '.join(p.name for p in paths.values())}")


def _plan(args: argparse.Namespace) -> None:
    from rl_as_inference import plan_run
    from rl_as_inference.config import parse_assignment, run_env_kwargs

    for text in args.set:
        key = parse_assignment(text)[0]
        if key.partition(".")[0] != "env_kwargs":
            raise ValueError(
                f"rlai plan --set {text}: only env_kwargs can be set here (the env's constructor "
                "arguments); the planner's settings are flags (--horizon, --samples, --alpha, ...)"
            )
    result = plan_run.plan_episodes(
        args.env,
        method=args.method,
        horizon=args.horizon,
        num_samples=args.samples,
        episodes=args.episodes,
        seed=args.seed,
        device=args.device,
        alpha=args.alpha,
        target_ess=args.target_ess,
        noise_std=args.noise_std,
        iterations=args.iterations,
        prior="plan" if args.prior == "plan" else None,
        compile=args.compile,
        env_kwargs=run_env_kwargs(None, args.set),
    )
    returns = np.asarray(result.returns)
    print(
        f"{len(returns)} episodes: mean return {returns.mean():.2f} +- {returns.std():.2f} (std); "
        f"{result.ms_per_step:.2f} ms per control step (median of {result.steps})"
    )
    if args.out is not None:
        print(f"diagnostics: {plan_run.write_inference_data(result, args.out)}")


def _summary(run_dir: Path) -> None:
    """The final summary line of a training run (from its eval.json)."""
    summary = json.loads((run_dir / "eval.json").read_text())
    seconds = summary["train_seconds"]
    line = (
        f"{summary['algo']} {summary['env']}: {summary['env_steps']} env steps in {seconds:.1f} s "
        f"({summary['env_steps'] / max(seconds, 1e-9):.0f} steps/s)"
    )
    if "mean_return" in summary:
        line += (
            f"; return {summary['mean_return']:.2f} +- {summary['std_return']:.2f} over "
            f"{summary['episodes']} episodes of "
            + ("Gymnasium's env" if summary["env"] in gym.registry else "the torch env (Gymnasium's API)")
        )
    print(line)
    print(f"run directory: {run_dir}")


def _launch_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node=K -m rl_as_inference ARGS``
    (ARGS without --nproc), so signals reach torchrun, which forwards them to every rank, and the
    exit code is torchrun's."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [*cmd, "-m", "rl_as_inference", *rest])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlai`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.nproc is not None:
        if args.nproc < 1:
            print(f"rlai: error: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
            return 2
        if args.nproc > 1 and not distributed.launched_by_torchrun():
            _launch_torchrun(args.nproc, sys.argv[1:] if argv is None else list(argv))
    try:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        if args.command in ("evaluate", "inspect") and args.env is not None:
            if ":" not in args.env:
                raise ValueError(
                    f"rlai {args.command} --env {args.env}: the run's own id is used; --env only "
                    "imports the module that registers it, given as module:ID"
                )
            import_env_module(args.env)
        if args.command == "train" and args.resume is not None:
            # --env module:ID only imports the module that registers the run's id: the run's files
            # never name a module, so an id that needs one is typed again by the user
            importing = args.env is not None and ":" in args.env
            flags = ("algo", "config", "seed", "device", "out") + (() if importing else ("env",))
            given = [f"--{k}" for k in flags if getattr(args, k)]
            if given or args.set:
                raise ValueError(
                    f"--resume continues a run with its own config; drop {', '.join(given or ['--set'])}"
                )
            if importing:
                import_env_module(args.env)
            run_dir = runs.resume_run(
                args.resume, progress=not args.no_progress, eval_episodes=args.eval_episodes
            )
            if distributed.is_main():
                _summary(run_dir)
        elif args.command == "train":
            if args.env is None:
                raise ValueError("rlai train needs --env ID (or --resume DIR)")
            if args.algo is not None and args.algo not in runs.ALGORITHMS:
                raise ValueError(
                    f"unknown algorithm {args.algo!r}; available: {', '.join(sorted(runs.ALGORITHMS))}"
                )
            run_dir = runs.train_run(
                args.env,
                algo=args.algo,
                config_file=args.config,
                sets=args.set,
                seed=args.seed,
                device=args.device,
                out=args.out,
                progress=not args.no_progress,
                eval_episodes=args.eval_episodes,
                checkpoint_every=args.checkpoint_every,
            )
            if distributed.is_main():
                _summary(run_dir)
        elif args.command == "inspect":
            _inspect(args)
        elif args.command == "plan":
            _plan(args)
        else:
            returns = runs.evaluate(
                args.run_dir,
                episodes=args.episodes,
                seed=args.seed,
                stochastic=args.stochastic,
                progress=not args.no_progress and sys.stderr.isatty(),
            )
            print(
                f"{len(returns)} episodes: mean return {np.mean(returns):.2f} +- {np.std(returns):.2f} (std)"
            )
    except TrainingInterrupted as stop:  # the state is saved: say where, and how to go on
        if distributed.is_main():
            resume = f"; resume with: rlai train --resume {stop.path.parent}" if stop.path is not None else ""
            print(f"rlai: {stop}{resume}", file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:  # Ctrl-C outside training (evaluation, inspection): nothing to save
        print("rlai: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as exc:
        # in a data-parallel run an error every rank raised alike (a bad option, or one rank 0 met
        # in the run directory and sent to the others) is printed once, by rank 0
        alike = not distributed.active() or getattr(exc, "raised_on_every_rank", False)
        if distributed.is_main() and runs.is_rank_0():
            print(f"rlai: error: {exc}", file=sys.stderr)
        elif not alike:
            print(f"rlai: rank {distributed.rank()}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only or full disk, a path through a file: name the path
        where = f" {exc.filename}" if exc.filename else ""
        print(f"rlai: error: cannot read or write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if distributed.active():  # every rank passed the run's last barrier: tear the group down
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
