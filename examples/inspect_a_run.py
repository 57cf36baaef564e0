"""Inspect a trained run as a variational posterior, from Python, with ArviZ.

Trains a short ``svi`` run on Pendulum-v1 (``rlai train`` through ``rl_as_inference.cli.main``),
reads its policy back with ``diagnostics.from_run`` as an ArviZ ``InferenceData`` (episodes drawn
from q on the torch port, each weighted by log p(tau, O) - log q(tau)), prints ``summarize``, the
importance diagnostics recomputed from the stored log weights, and ArviZ's own ``summary`` and
``ess`` of the returns, and writes ``posterior.nc`` and ``weights.png``. Episodes are independent
draws from q, so ArviZ's ESS of the returns is about N, while the Kish ESS of the importance weights
says how many of them carry the posterior p(tau | O).

    python examples/inspect_a_run.py --out runs/inspect    # about 20 s on 2 CPUs
    python examples/inspect_a_run.py --small               # a few seconds, in a temporary directory
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import arviz as az

from rl_as_inference import cli, diagnostics


def main(small: bool, out: Path) -> None:
    steps, episodes = (2_000, 64) if small else (40_000, 256)
    run_dir = out / f"pendulum-svi-{steps}"
    if (run_dir / "checkpoint.pt").is_file():  # rlai train refuses a finished run's directory
        print(f"reusing the run in {run_dir}")
    else:
        argv = ["train", "--env", "Pendulum-v1", "--algo", "svi", "--seed", "0", "--out", str(run_dir)]
        argv += ["--set", f"total_env_steps={steps}", "--set", f"log_every={steps // 4}"]
        if cli.main([*argv, "--no-progress", "--eval-episodes", "0"]) != 0:
            raise SystemExit("training failed (the error is printed above)")

    idata = diagnostics.from_run(run_dir, num_episodes=episodes, seed=0)
    for name, value in diagnostics.summarize(idata).items():
        print(f"  {name:16s} {value:.4g}")
    # The same k-hat, ESS and log p(O) from the log weights alone: what to call on the weights of
    # your own model and guide (TrajectoryELBO().log_weights(model, guide, N)). Its ELBO would be
    # mean log w, which is summarize's ELBO only at gamma = 1: with a discount that one needs the
    # per-episode ELBO terms (elbo_terms=), which the InferenceData does not store.
    weights = idata.sample_stats["log_weight"].values.ravel()  # (chain, draw) -> the N episodes
    diag = diagnostics.importance_diagnostics(weights)
    print(f"from the weights: log p(O) {diag.log_evidence:.4g}, ESS {diag.ess:.4g} of {diag.num_samples}")
    print(f"PSIS k-hat: {diag.pareto_k:.4f}")

    print(az.summary(idata, var_names=["return", "discounted_return"], kind="stats"))
    print(f"ArviZ's ESS of the returns: {float(az.ess(idata, var_names=['return'])['return']):.1f}")

    path = diagnostics.to_netcdf(idata, out / "posterior.nc")  # az.from_netcdf reads it back
    diagnostics.plot_weights(idata).savefig(out / "weights.png", dpi=100)
    print(f"wrote {path} and {out / 'weights.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="the size the test suite runs")
    parser.add_argument(
        "--out", type=Path, help="where to write the run and its diagnostics (default: a temporary directory)"
    )
    args = parser.parse_args()
    if args.out is not None:
        main(args.small, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(args.small, Path(tmp))
