"""The ``rlai`` command line: ``rlai train``, ``rlai evaluate``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from rl_as_inference import envs, runs

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlai",
        description="Reinforcement learning as probabilistic inference: train and evaluate policies.",
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
    train.add_argument("--env", required=True, metavar="ID", help="a ported Gymnasium id, e.g. Pendulum-v1")
    train.add_argument(
        "--algo", metavar="NAME", help="algorithm (default: the recipe's); see rlai train --help"
    )
    train.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML file of config keys (a table named after the algorithm, or top-level keys)",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlai`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            if args.env not in envs.PORTED:
                raise ValueError(
                    f"unknown environment {args.env!r}; ported: {', '.join(sorted(envs.PORTED))}"
                )
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
            )
            print((run_dir / "eval.json").read_text().strip())
            print(f"run directory: {run_dir}")
        else:
            returns = runs.evaluate(
                args.run_dir, episodes=args.episodes, seed=args.seed, stochastic=args.stochastic
            )
            print(
                f"{len(returns)} episodes: mean return {np.mean(returns):.2f} +- {np.std(returns):.2f} (std)"
            )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"rlai: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
