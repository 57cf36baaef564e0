"""Environment throughput of the batched torch ports, against Gymnasium's own SyncVectorEnv.

What it measures
----------------
Env-steps per second (``N * steps / seconds``) of every ported classic-control env
(``rl_as_inference.envs.make(id, device=..., dtype=...)``) at batch sizes ``N`` (default 1024, 16384,
262144, 1048576), in up to three modes, plus a Gymnasium baseline measured in the same process:

* ``eager``: a Python loop of ``env.step(state, action)`` (the public, validated call); the next
  state is fed back each step.
* ``compile``: the same rollout through ``torch.compile`` (``env._step``, the step without the
  host-side input checks). The compiled function does ``--unroll K`` steps per call (default 8;
  1 for Acrobot-v1, whose RK4 graph unrolled 8x takes inductor minutes to compile on a small CPU
  and runs no faster). Default compile mode: inductor's default on CPU, ``"reduce-overhead"`` (CUDA
  graphs) on CUDA; ``--compile-mode`` overrides it. ``dynamic=True`` by default on CPU, so one
  compilation per env serves every N and the default run stays short (``--compile-dynamic false``
  compiles once per N with the constants folded: 10 to 15% faster on CPU); ``False`` on CUDA.
  The first call's wall time (compilation included) is reported separately as ``first call s``
  and is excluded from the timing. A failure (no C++ compiler, an inductor error,
  ``--compile-timeout``) is printed in the table instead of crashing the run.
* ``cudagraph`` (CUDA only): ``--graph-steps`` eager steps captured once in a ``torch.cuda.CUDAGraph``
  with static input/output tensors (the graph copies its outputs back into its inputs) and replayed.
* ``gym-sync`` baseline: ``gymnasium.make_vec(id, n, vectorization_mode="sync")`` with
  ``n = --gym-envs`` (default 16), stepping random actions from its action space (Gymnasium's own
  autoreset); steps/s = ``n * iterations / seconds``. Every torch row reports ``x gym``, its ratio
  to this baseline.

Every torch step does what a rollout needs: the state is fed back, the reward is added to a
running return and ``terminated`` is OR-ed into a done flag (so that a compiler cannot drop the
reward or termination computation). Actions are drawn uniformly from the action space ONCE, before
timing, on the device: a pool of ``--action-pool`` (default 8) batches ``[N]`` (discrete, int64) or
``[N, 1]`` (continuous, env dtype) that the steps cycle through, so the per-step RNG cost of a
policy is not counted. The baseline likewise cycles through 64 pre-sampled batched actions.
The ports are pure functions and are safe to step after termination (no auto-reset); to keep the
states bounded (CartPole's fallen pole keeps swinging and explicit Euler slowly pumps energy into
it) every timed repeat starts from the same initial states (restored outside the timer), and
inside a timed call the initial states are restored every ``--max-steps`` (default 512) steps (a
swap of tensor references for eager/compile, three device copies for a CUDA graph: negligible).

Timing: a warm-up of at least ``--warmup`` seconds (twice that after a compilation) and two calls;
then ``--repeats R`` (default 5) timed calls, each of ``--steps`` steps (default: enough for about
``--target-time`` = 0.3 s, from the warm-up, rounded to whole calls of the unrolled function),
with ``torch.cuda.synchronize()`` before each clock read on CUDA. The table gives the median and
the min-max over the R repeats.

How to run
----------
    .venv/bin/python benchmarks/env_throughput.py --device cpu --dtype float32 --markdown
    .venv/bin/python benchmarks/env_throughput.py --device cuda --sizes 1048576,4194304 --json gpu.json
    .venv/bin/python benchmarks/env_throughput.py --envs CartPole-v1 --modes eager --threads 1

Options: ``--sizes``, ``--envs``, ``--device cpu|cuda|auto``, ``--dtype float32|float64``,
``--steps``, ``--repeats``, ``--modes eager,compile,cudagraph`` (default: eager,compile on CPU,
all three on CUDA), ``--gym-envs`` (0 skips the baseline), ``--threads`` (torch.set_num_threads),
``--markdown``, ``--json PATH``; see ``--help`` for the rest.

Targets
-------
* one H100: >= 5e9 env-steps/s for CartPole-v1 and Pendulum-v1 at N >= 1M (best torch mode);
* CPU: >= 30x Gymnasium's SyncVectorEnv (same machine, same run), per env.
The script prints whether each target is met by the rows it measured.

On a small shared CPU (e.g. 2 cores that other processes also use) prefer ``--threads 1``: a
parallel region stalls whenever its second OpenMP thread is descheduled, and 2-thread rows then
come out up to 40x slower. The script warns when the load average is high.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import gymnasium as gym
import numpy as np
import torch

from rl_as_inference import envs

DEFAULT_SIZES = (1024, 16384, 262144, 1048576)
# Acrobot's step is one RK4 stage chain of ~150 pointwise ops; unrolled 8x, inductor needs minutes to
# compile it on a 2-core CPU and the result runs no faster than one step per call.
DEFAULT_UNROLL = {"Acrobot-v1": 1}
GYM_ACTION_POOL = 64
CPU_TARGET_RATIO = 30.0
GPU_TARGET = 5e9
GPU_TARGET_ENVS = ("CartPole-v1", "Pendulum-v1")
GPU_TARGET_MIN_N = 1 << 20


# ---------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    env: str
    n: int
    mode: str
    median: float | None = None  # env-steps per second
    min: float | None = None
    max: float | None = None
    times_s: list[float] = field(default_factory=list)
    steps_per_call: int | None = None  # env steps (per env) in one timed call
    unroll: int | None = None
    first_call_s: float | None = None  # compile/capture time included
    ratio_gym: float | None = None
    note: str = ""


# ---------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "git_commit": commit,
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


# ---------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_continuous(env) -> bool:
    return isinstance(env.action_space, gym.spaces.Box)


def action_pool(env, n: int, pool: int, seed: int) -> torch.Tensor:
    """``[pool, N]`` int64 or ``[pool, N, dim]`` float actions, uniform over the action space, on the device."""
    g = torch.Generator(device=env.device)
    g.manual_seed(seed)
    if is_continuous(env):
        low = torch.as_tensor(env.action_space.low, dtype=env.dtype, device=env.device)
        high = torch.as_tensor(env.action_space.high, dtype=env.dtype, device=env.device)
        u = torch.rand(pool, n, *env.action_space.shape, generator=g, device=env.device, dtype=env.dtype)
        return low + (high - low) * u
    return torch.randint(0, int(env.action_space.n), (pool, n), generator=g, device=env.device)


def make_rollout(step_fn: Callable, n_steps: int, pool: int) -> Callable:
    """A function doing ``n_steps`` steps: state fed back, rewards summed, terminations OR-ed."""

    def rollout(state, ret, done, actions):
        for k in range(n_steps):
            out = step_fn(state, actions[k % pool])
            state = out.state
            ret = ret + out.reward
            done = done | out.terminated
        return state, ret, done

    return rollout


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise ``_Timeout`` after ``seconds`` (main thread, POSIX only; otherwise no limit)."""
    usable = seconds is not None and seconds > 0 and hasattr(signal, "SIGALRM") and sys.platform != "win32"
    if not usable:
        yield
        return

    def handler(signum, frame):
        raise _Timeout(f"timed out after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def short_error(exc: BaseException, limit: int = 90) -> str:
    """One line naming the root cause (inductor wraps errors, a timeout included, in its own)."""
    seen = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    timeout = next((e for e in seen if isinstance(e, _Timeout)), None)
    if timeout is not None:
        return f"{timeout}"
    exc = seen[-1]
    msg = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3e}"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


# ---------------------------------------------------------------------------------------------- timing
def time_chunks(
    run_chunk: Callable[[], None],
    reset: Callable[[], None],
    chunk_steps: int,
    device: torch.device,
    args,
    warmup_s: float,
) -> tuple[list[float], int]:
    """Warm up, pick the number of chunks per timed call, and time ``args.repeats`` calls.

    ``reset()`` restores the initial states before each repeat and again every ``args.max_steps``
    steps inside a timed call (for eager and compiled rollouts a swap of references, for a CUDA
    graph three device copies), so that long timed calls at small N keep the states bounded.

    Returns (seconds of each repeat, env steps per env in one timed call).
    """
    per_segment = max(1, args.max_steps // chunk_steps)
    reset()
    sync(device)
    chunk_times = []
    t_start = time.perf_counter()
    while len(chunk_times) < 2 or time.perf_counter() - t_start < warmup_s:
        t0 = time.perf_counter()
        run_chunk()
        sync(device)
        chunk_times.append(time.perf_counter() - t0)
        if len(chunk_times) % per_segment == 0:
            reset()
    if args.steps:
        n_chunks = max(1, math.ceil(args.steps / chunk_steps))
    else:
        t_chunk = statistics.median(chunk_times[-5:])
        n_chunks = max(1, round(args.target_time / max(t_chunk, 1e-9)))
    times = []
    for _ in range(args.repeats):
        reset()
        sync(device)
        t0 = time.perf_counter()
        for i in range(1, n_chunks + 1):
            run_chunk()
            if i % per_segment == 0:
                reset()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, n_chunks * chunk_steps


def fill_stats(row: Row, times: list[float], steps_per_call: int) -> None:
    rates = [row.n * steps_per_call / t for t in times]
    row.times_s = times
    row.steps_per_call = steps_per_call
    row.median = statistics.median(rates)
    row.min = min(rates)
    row.max = max(rates)


# ---------------------------------------------------------------------------------------------- modes
def bench_gym(env_id: str, n_envs: int, args) -> Row:
    row = Row(env=env_id, n=n_envs, mode="gym-sync")
    try:
        vec = gym.make_vec(env_id, n_envs, vectorization_mode="sync")
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        row.note = short_error(exc)
        return row
    try:
        vec.reset(seed=args.seed)
        vec.action_space.seed(args.seed)
        actions = [vec.action_space.sample() for _ in range(GYM_ACTION_POOL)]
        counter = [0]

        def run_chunk():
            i = counter[0]
            for k in range(GYM_ACTION_POOL):
                vec.step(actions[(i + k) % GYM_ACTION_POOL])
            counter[0] = i + GYM_ACTION_POOL

        # Gymnasium autoresets by itself: nothing to restore.
        times, steps = time_chunks(
            run_chunk, lambda: None, GYM_ACTION_POOL, torch.device("cpu"), args, args.warmup
        )
        fill_stats(row, times, steps)
        row.note = "numpy, 1 process"
    finally:
        vec.close()
    return row


def bench_torch(env, env_id: str, n: int, mode: str, compiled: dict, args) -> Row:
    device = env.device
    unroll = args.unroll if args.unroll else DEFAULT_UNROLL.get(env_id, 8)
    pool = args.action_pool
    row = Row(env=env_id, n=n, mode=mode)
    if mode == "cudagraph" and device.type != "cuda":
        row.note = "CUDA only: skipped"
        return row
    actions = action_pool(env, n, pool, args.seed + 1)
    s0 = env.reset(n, seed=args.seed)
    ret0 = torch.zeros(n, dtype=env.dtype, device=device)
    done0 = torch.zeros(n, dtype=torch.bool, device=device)
    cur = {}

    def reset():
        cur["s"], cur["ret"], cur["done"] = s0, ret0, done0

    warmup = args.warmup
    if mode == "eager":
        row.unroll = pool
        fn = make_rollout(env.step, pool, pool)

        def run_chunk():
            cur["s"], cur["ret"], cur["done"] = fn(cur["s"], cur["ret"], cur["done"], actions)

        chunk = pool

    elif mode == "compile":
        row.unroll = unroll
        if "error" in compiled:
            row.note = compiled["error"]
            return row
        if "fn" not in compiled:
            torch._dynamo.reset()
            cmode = args.compile_mode or ("reduce-overhead" if device.type == "cuda" else None)
            compiled["mode"] = cmode or "default"
            try:
                compiled["fn"] = torch.compile(
                    make_rollout(env._step, unroll, pool), mode=cmode, dynamic=args.compile_dynamic
                )
            except Exception as exc:  # noqa: BLE001 - report, do not crash
                compiled["error"] = f"compile failed: {short_error(exc)}"
                row.note = compiled["error"]
                return row
        cfn = compiled["fn"]
        cuda_graphs = device.type == "cuda" and compiled["mode"] == "reduce-overhead"

        def run_chunk():
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            cur["s"], cur["ret"], cur["done"] = cfn(cur["s"], cur["ret"], cur["done"], actions)

        reset()
        sync(device)
        t0 = time.perf_counter()
        try:
            with time_limit(args.compile_timeout):
                run_chunk()
                sync(device)
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            compiled["error"] = f"compile failed: {short_error(exc)}"
            row.note = compiled["error"]
            torch._dynamo.reset()
            return row
        row.first_call_s = time.perf_counter() - t0
        if row.first_call_s > 1.0:
            warmup = 2 * args.warmup  # let inductor's compile workers go quiet
        chunk = unroll

    elif mode == "cudagraph":
        row.unroll = args.graph_steps
        static_s, static_ret, static_done = s0.clone(), ret0.clone(), done0.clone()
        fn = make_rollout(env._step, args.graph_steps, pool)
        t0 = time.perf_counter()
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn(static_s, static_ret, static_done, actions)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                s1, r1, d1 = fn(static_s, static_ret, static_done, actions)
                static_s.copy_(s1)
                static_ret.copy_(r1)
                static_done.copy_(d1)
            sync(device)
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            row.note = f"capture failed: {short_error(exc)}"
            return row
        row.first_call_s = time.perf_counter() - t0

        def reset():  # noqa: F811 - the graph reads its static inputs
            static_s.copy_(s0)
            static_ret.copy_(ret0)
            static_done.copy_(done0)

        def run_chunk():
            graph.replay()

        chunk = args.graph_steps
    else:
        raise ValueError(f"unknown mode {mode!r}")

    try:
        times, steps = time_chunks(run_chunk, reset, chunk, device, args, warmup)
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        row.note = f"failed: {short_error(exc)}"
        return row
    fill_stats(row, times, steps)
    # A cheap sanity check that the steps ran: finite states, a return of the right sign.
    s_final = cur["s"] if mode != "cudagraph" else static_s
    if not bool(torch.isfinite(s_final).all()):
        row.note = (row.note + "; " if row.note else "") + "non-finite states at the end"
    return row


# ---------------------------------------------------------------------------------------------- output
HEADERS = [
    "env",
    "N",
    "mode",
    "steps/s (median)",
    "min",
    "max",
    "x gym",
    "steps/call",
    "unroll",
    "first call s",
    "note",
]


def row_cells(r: Row) -> list[str]:
    return [
        r.env,
        str(r.n),
        r.mode,
        fmt_rate(r.median),
        fmt_rate(r.min),
        fmt_rate(r.max),
        fmt_ratio(r.ratio_gym) if r.mode != "gym-sync" else "1x",
        "-" if r.steps_per_call is None else str(r.steps_per_call),
        "-" if r.unroll is None else str(r.unroll),
        "-" if r.first_call_s is None else f"{r.first_call_s:.1f}",
        r.note,
    ]


def render(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in rows]
    return "\n".join(out)


def summary(rows: list[Row], env_ids: list[str], sizes: list[int], modes: list[str]) -> tuple[list, list]:
    headers = ["env", "gym-sync steps/s"]
    for n in sizes:
        headers.append(f"N={n}: best steps/s (x gym)")
    table = []
    for env_id in env_ids:
        base = next((r for r in rows if r.env == env_id and r.mode == "gym-sync"), None)
        cells = [env_id, fmt_rate(base.median if base else None)]
        for n in sizes:
            cand = [r for r in rows if r.env == env_id and r.n == n and r.mode in modes and r.median]
            if not cand:
                cells.append("-")
                continue
            best = max(cand, key=lambda r: r.median)
            cells.append(f"{fmt_rate(best.median)} ({fmt_ratio(best.ratio_gym)}, {best.mode})")
        table.append(cells)
    return headers, table


def target_lines(rows: list[Row], env_ids: list[str], device: torch.device) -> list[str]:
    lines = []
    if device.type == "cpu":
        for env_id in env_ids:
            ok, miss = [], []
            for r in rows:
                if r.env != env_id or r.mode == "gym-sync" or r.ratio_gym is None:
                    continue
                (ok if r.ratio_gym >= CPU_TARGET_RATIO else miss).append(f"{r.mode}@{r.n}")
            if not ok and not miss:
                lines.append(f"{env_id}: CPU target (>= {CPU_TARGET_RATIO:.0f}x gym-sync) not evaluated")
                continue
            lines.append(
                f"{env_id}: CPU target >= {CPU_TARGET_RATIO:.0f}x gym-sync met by {len(ok)}/{len(ok) + len(miss)} "
                f"rows" + (f"; missed by {', '.join(miss)}" if miss else "")
            )
    else:
        for env_id in GPU_TARGET_ENVS:
            cand = [
                r
                for r in rows
                if r.env == env_id and r.n >= GPU_TARGET_MIN_N and r.median and r.mode != "gym-sync"
            ]
            if not cand:
                lines.append(f"{env_id}: GPU target (>= {GPU_TARGET:.0e} steps/s at N >= 1M) not evaluated")
                continue
            best = max(cand, key=lambda r: r.median)
            verdict = "MET" if best.median >= GPU_TARGET else "MISSED"
            lines.append(
                f"{env_id}: GPU target >= {GPU_TARGET:.0e} steps/s at N >= 1M {verdict}: best "
                f"{best.median:.3e} ({best.mode}, N={best.n})"
            )
    return lines


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="batch sizes N, comma separated"
    )
    p.add_argument("--envs", default=",".join(envs.PORTED), help="env ids, comma separated")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--steps", type=int, default=0, help="steps per timed call (default: ~--target-time)")
    p.add_argument("--target-time", type=float, default=0.3, help="seconds per timed call when --steps is 0")
    p.add_argument(
        "--max-steps",
        type=int,
        default=512,
        help="restore the initial states every this many steps (bounded states)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=float, default=0.5, help="min warm-up seconds per row")
    p.add_argument("--modes", default="auto", help="eager,compile,cudagraph (auto: cudagraph on CUDA only)")
    p.add_argument(
        "--gym-envs", type=int, default=16, help="sub-envs of the SyncVectorEnv baseline (0: skip)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--unroll", type=int, default=0, help="steps per compiled call (0: 8, 1 for Acrobot-v1)")
    p.add_argument("--graph-steps", type=int, default=32, help="steps captured in one CUDA graph")
    p.add_argument("--action-pool", type=int, default=8, help="pre-drawn action batches cycled through")
    p.add_argument(
        "--compile-mode", default=None, help="torch.compile mode (default: CPU default, CUDA reduce-overhead)"
    )
    p.add_argument(
        "--compile-dynamic",
        type=lambda s: {"auto": "auto", "true": True, "false": False, "none": None}[s.lower()],
        default="auto",
        help="torch.compile dynamic= (true: one compilation per env serves every N; false: one per N,\n"
        "constants folded, 10-15%% faster on CPU; auto: true on CPU, false on CUDA)",
    )
    p.add_argument(
        "--compile-timeout", type=float, default=600.0, help="seconds before a compilation is abandoned"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--json", default=None, help="write machine info and results to this path")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    unknown = [e for e in args.envs if e not in envs.PORTED]
    if unknown:
        p.error(f"unknown env ids {unknown}; ported: {list(envs.PORTED)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = envs.base.resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA was requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    if args.compile_dynamic == "auto":
        args.compile_dynamic = device.type == "cpu"
    # One compilation per N when dynamic=False: keep dynamo from falling back to eager silently.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(
                torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 2 * len(args.sizes) + 4)
            )
    if args.modes == "auto":
        modes = ["eager", "compile"] + (["cudagraph"] if device.type == "cuda" else [])
    else:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in ("eager", "compile", "cudagraph")]
        if bad:
            print(f"unknown modes {bad}; use eager, compile, cudagraph", file=sys.stderr)
            return 2

    info = machine_info(device)
    md = args.markdown
    cmd = " ".join(
        [os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "env_throughput.py", *sys.argv[1:]]
    )
    header = [
        f"date: {info['date']}",
        f"command: {cmd}",
        f"cpu: {info['cpu']} ({info['logical_cpus']} logical CPUs, {info['cpus_available']} available)",
        f"device: {info['device']} ({info['device_name']})",
        f"torch {info['torch']}, gymnasium {info['gymnasium']}, numpy {info['numpy']}, python {info['python']}",
        f"torch threads: {info['torch_threads']} (interop {info['torch_interop_threads']})",
        f"dtype: {args.dtype}; modes: {','.join(modes)}; repeats: {args.repeats}; git: {info['git_commit']}",
        f"load average at start: {info['loadavg_start']}",
    ]
    load = info["loadavg_start"]
    ncpu = info["cpus_available"] or info["logical_cpus"]
    if load and ncpu and load[0] > 0.5 * ncpu:
        header.append(
            f"WARNING: the machine is busy (1-min load {load[0]:.2f} on {ncpu} CPUs): multi-threaded rows "
            "can stall on descheduled threads; compare with --threads 1"
        )
    print("\n".join(("- " + h) if md else h for h in header), flush=True)
    print(flush=True)

    rows: list[Row] = []
    t_run = time.perf_counter()
    for env_id in args.envs:
        base = bench_gym(env_id, args.gym_envs, args) if args.gym_envs > 0 else None
        if base is not None:
            rows.append(base)
            print(
                f"[{time.perf_counter() - t_run:6.1f}s] {env_id} gym-sync n={base.n}: {fmt_rate(base.median)}",
                flush=True,
            )
        env = envs.make(env_id, device=device, dtype=dtype)
        compiled: dict = {}
        for n in args.sizes:
            for mode in modes:
                row = bench_torch(env, env_id, n, mode, compiled, args)
                if base is not None and base.median and row.median:
                    row.ratio_gym = row.median / base.median
                rows.append(row)
                extra = f" (first call {row.first_call_s:.1f}s)" if row.first_call_s else ""
                print(
                    f"[{time.perf_counter() - t_run:6.1f}s] {env_id} N={n} {mode}: {fmt_rate(row.median)}"
                    f" {fmt_ratio(row.ratio_gym)}{extra} {row.note}",
                    flush=True,
                )
        if "mode" in compiled:
            info.setdefault("compile_mode", compiled["mode"])
        torch._dynamo.reset()

    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["total_s"] = round(time.perf_counter() - t_run, 1)
    print()
    print(("### " if md else "") + "All rows (env-steps per second; min/max over the repeats)")
    print()
    print(render(HEADERS, [row_cells(r) for r in rows], md))
    print()
    h, t = summary(rows, args.envs, args.sizes, modes)
    print(("### " if md else "") + "Best torch mode per N, and its ratio to Gymnasium's SyncVectorEnv")
    print()
    print(render(h, t, md))
    print()
    for line in target_lines(rows, args.envs, device):
        print(("- " if md else "") + line)
    print()
    print(
        ("- " if md else "")
        + f"total {info['total_s']} s; load average at end: {info['loadavg_end']}; "
        + f"compile mode: {info.get('compile_mode', '-')}, dynamic={args.compile_dynamic}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": info, "args": vars(args), "results": [asdict(r) for r in rows]}, f, indent=1
            )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
