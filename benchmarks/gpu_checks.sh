#!/usr/bin/env bash
# The GPU checks (the rows benchmarks/RESULTS.md marks "GPU: not measured") in one bounded call on
# a GPU machine, prepared so that a few minutes of GPU time go to measuring. The machine assumed:
# Python 3.12, torch with CUDA, no pyro-ppl, gymnasium or arviz, no network.
#
# Before the call, on a machine with network: wheels for the GPU machine's Python of what it lacks
# (stable-baselines3==2.9.2, cloudpickle==3.1.3 and this project's other dependencies), and of
# this project, into .whl/:
#     rm -f .whl/rl_as_inference-* && python3 -m pip wheel -q --no-deps -w .whl .   (rebuild: the code changes)
# .whl/ is git-ignored (built, never committed), so the copy to the GPU machine must carry it.
# Then, on the GPU machine from the repository root with .whl/ in it and OUT set, within 540 s:
#     bash benchmarks/gpu_checks.sh
# Stage limits
# sum to 500 s; on this project's 2-CPU VM (DEVICE=cpu) stage 3 needed 100-110 s, stage 4 about 55.
# The STAGES=distributed call: its first run took 147 s there, its second more than 150 s.
#
# Stages, each bounded by `timeout` so that a slow one cannot eat the others' time; logs in $OUT:
#   1. benchmarks/solve.py, ours on CUDA: CartPole-v1 and Pendulum-v1, seeds 0-4 (the GPU goals:
#      <= 2 s and <= 5 s to threshold);
#   2. the gpu-marked tests (every algorithm trains, resumes and acts on CUDA);
#   3. the baseline in the same call on the same machine: ours on its CPU (1 torch thread) and
#      SB3's zoo PPO on CartPole-v1 (its SAC on Pendulum-v1 takes about a minute a seed: seed 0 only);
#   4. (STAGES=distributed, a separate call) benchmarks/distributed.py: rlai train on 1 and 2
#      processes on the GPU and on the CPU, CartPole-v1 and Pendulum-v1, seed 0.
#   5. (STAGES=planning, 150 s) benchmarks/planning.py: our planner on the GPU, 10 episodes and a
#      batch of 1,024 envs, beside pytorch_mppi on the CPU (its wheel must be in .whl/).
# Walk the same path on a CPU machine (its venv has the dependencies) with:
#     DEVICE=cpu OUT=/tmp/gpu-out PY=.venv/bin/python SITE=/tmp/site-cpu WHEELS='.whl/rl_as_inference-*' \
#         bash benchmarks/gpu_checks.sh
set -uo pipefail
: "${OUT:?set OUT to the folder that receives the logs}"
DEVICE=${DEVICE:-cuda}
# which stages run: the first call takes the default four; a second call, STAGES=distributed
# (400 s), measures data parallelism with the ranks sharing the GPU
STAGES=${STAGES:-solve pytest baseline}
PY=${PY:-python3}
# the stages run from a copy of tests/ elsewhere: a relative PY made absolute (not resolved: a
# venv's python is a link whose target is outside the venv)
[[ $PY == */* && $PY != /* ]] && PY="$PWD/$PY"
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1
repo=$PWD

rm -rf "$SITE"  # pip --target skips packages already there: a rebuilt wheel would be ignored
# shellcheck disable=SC2086  # WHEELS is a glob (locally: only the project's, the rest is installed)
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" ${WHEELS:-.whl/*.whl} || exit 1
# The wheel, not the checkout, must provide rl_as_inference (models/ and guides/ install as its
# subpackages): the tests run from a copy outside the checkout, solve.py with -P.
export PYTHONPATH="$SITE"
work=$(mktemp -d)
cp -r tests pyproject.toml "$work"/
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
{
    git rev-parse --short HEAD 2> /dev/null || echo "git: not in this copy"
    (cd "$work" && "$PY" -c "import sys, torch, rl_as_inference as r; print(sys.version.split()[0], \
        torch.__version__, 'cuda', torch.cuda.is_available(), r.__file__)")
} | tee "$OUT/versions.txt"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, print its tail
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    (cd "$work" && timeout "$limit" "$@") > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc after $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
}

solve=("$PY" -P "$repo/benchmarks/solve.py")
wants() { [[ " $STAGES " == *" $1 "* ]]; }
if wants solve; then
    # the goals' measurement first: a stage cut short by its limit still leaves the ones before it
    stage solve-ours-"$DEVICE" 180 "${solve[@]}" --envs CartPole-v1 Pendulum-v1 --seeds 0 1 2 3 4 \
        --ours-only --device "$DEVICE" --final-episodes 100 --json "$OUT/solve-ours-$DEVICE.json"
fi
wants pytest && stage pytest-gpu 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
if wants baseline; then
    stage solve-cpu-baseline 130 "${solve[@]}" --envs CartPole-v1 --seeds 0 1 2 3 4 --device cpu \
        --final-episodes 20 --json "$OUT/solve-cpu-baseline.json"
    stage solve-cpu-pendulum 70 "${solve[@]}" --envs Pendulum-v1 --seeds 0 --device cpu \
        --final-episodes 20 --json "$OUT/solve-cpu-pendulum.json"
fi
if wants distributed; then
    # rlai train on 1 and 2 processes sharing the one GPU (gloo: NCCL refuses two ranks on one
    # GPU), then the same on the machine's CPU for the baseline
    stage distributed-"$DEVICE" 200 "$PY" -P "$repo/benchmarks/distributed.py" --envs CartPole-v1 \
        Pendulum-v1 --nprocs 1 2 --seeds 0 --device "$DEVICE" --json "$OUT/distributed-$DEVICE.json"
    stage distributed-cpu 200 "$PY" -P "$repo/benchmarks/distributed.py" --envs CartPole-v1 \
        Pendulum-v1 --nprocs 1 2 --seeds 0 --device cpu --json "$OUT/distributed-cpu.json"
fi
if wants planning; then
    # the planner on 1,024 Pendulum envs at once on the GPU (per-env cost against one pytorch_mppi
    # controller on the CPU, which the same script times), then the single-env comparison
    stage planning-"$DEVICE" 150 "$PY" -P "$repo/benchmarks/planning.py" --samples 1000 --horizon 15 \
        --episodes 10 --batch 1024 --device "$DEVICE" --json "$OUT/planning-$DEVICE.json"
fi
rm -rf "$work"
