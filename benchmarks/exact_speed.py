"""Wall-clock of ``exact.solve`` on a dense random MDP (target: S=1000, A=10, T=100 < 0.5 s).

Beside it, in the same process, the baseline: the same backward recursion written as a dense
``[S, A, S]`` logsumexp per step (what ``solve`` avoids), with gamma as a per-step continuation
probability as in :mod:`rl_as_inference.exact`; both print log p(O), which must agree. Run:

    python benchmarks/exact_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from rl_as_inference import envs, exact


def dense_log_evidence(mdp, horizon: int, alpha: float, gamma: float) -> float:
    """log p(O) by dense logsumexp messages, uniform prior: the straightforward implementation.

    After every step the episode goes on with probability gamma and otherwise ends in an absorbing
    state with zero reward (log 1 = 0 from there on), as does entering a terminal state: B_T = 0 and
    B_t(s) = log sum_a pi0 exp(R(s,a)/alpha) [(1 - gamma) + gamma sum_s' P(s'|s,a) exp(B_{t+1}(s'))].
    """
    log_p = mdp.transition.log()
    reward = mdp.reward.double()
    log_pi = -torch.log(torch.tensor(float(mdp.num_actions), dtype=torch.float64))
    log_gamma = torch.tensor(gamma, dtype=torch.float64).log()
    log_death = torch.tensor(1.0 - gamma, dtype=torch.float64).log()  # -inf at gamma = 1
    b = torch.zeros(mdp.num_states, dtype=torch.float64)
    for _ in range(horizon):
        b_next = b.masked_fill(mdp.terminal, 0.0)  # a terminal next state ends the episode
        cont = torch.logsumexp(log_p + b_next, dim=-1)  # [S, A]: log sum_s' P exp(B_{t+1})
        cont = torch.logaddexp(log_gamma + cont, log_death)  # die with probability 1 - gamma
        b = torch.logsumexp(log_pi + reward / alpha + cont, dim=-1)
    return torch.logsumexp(mdp.initial.log() + b, 0).item()


def timed(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=1000)
    parser.add_argument("--actions", type=int, default=10)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mdp = envs.random_mdp(args.states, args.actions, seed=0)
    print(
        f"# exact.solve, dense random MDP S={args.states} A={args.actions} T={args.horizon}, float64, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, threads {torch.get_num_threads()}"
    )
    solve = timed(lambda: exact.solve(mdp, horizon=args.horizon, alpha=1.0, gamma=0.99), args.repeats)
    dense = timed(lambda: dense_log_evidence(mdp, args.horizon, 1.0, 0.99), max(1, args.repeats // 2))
    ours = exact.solve(mdp, horizon=args.horizon, alpha=1.0, gamma=0.99).log_evidence
    ref = dense_log_evidence(mdp, args.horizon, 1.0, 0.99)
    print("| method | median s | min | max |")
    print("|---|---|---|---|")
    for name, times in (
        ("exact.solve (evidence + ELBO + policy)", solve),
        ("dense logsumexp (evidence only)", dense),
    ):
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")
    print(f"log p(O): solve {ours:.10f}, dense {ref:.10f}")


if __name__ == "__main__":
    main()
