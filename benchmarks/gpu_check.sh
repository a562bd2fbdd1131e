#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh OUTDIR [--dry-run]
#
# Issue 8 §8's one GPU check, in at most 8 minutes on one H100/H200:
#   versions    GPU, driver, CUDA, torch, triton (and fastgp's backends per device)
#   tests       the CUDA test suite: FASTGP_TEST_DEVICE=cuda python -m pytest (default selection)
#   bench       python -m benchmarks.gpu: eager vs torch.compile vs fastgp vs a device copy
#   train-bf16  a short fastgp train smoke run on CUDA with --amp bf16
#   train-fp16  the same with --amp fp16
#   train-nccl  a 2-process torchrun (nccl) run, only when there are two GPUs
# Files in OUTDIR (flat, at most 8, so the device tool returns all of them): gpu_check.log
# (everything printed), gpu_check.json (the stage table), gpu_bench.{json,csv,png} and
# train_{bf16,fp16}_metrics.jsonl. Each stage has its own time limit inside one overall
# deadline and a failed stage does not stop the next (benchmarks/gpu_check_lib.sh).
#
# Exit 0 when every stage passed; 1 when one failed, timed out or had no time left; 2 on bad
# usage or a Python that cannot import torch. Without a CUDA device it says so and exits 0
# having run and written nothing. --dry-run prints the stages and their limits, runs nothing.
# Runs from the source tree (PYTHONPATH=repo root; no install needed) with $PYTHON (default
# python3).

set -u -o pipefail
SECONDS=0
USAGE="usage: bash benchmarks/gpu_check.sh OUTDIR [--dry-run]"

OUTDIR="" DRY_RUN=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            echo "$USAGE"
            exit 0
            ;;
        -*)
            echo "gpu_check: unknown option $arg; $USAGE" >&2
            exit 2
            ;;
        *)
            if [[ -n $OUTDIR ]]; then
                echo "gpu_check: one OUTDIR only; $USAGE" >&2
                exit 2
            fi
            OUTDIR=$arg
            ;;
    esac
done
if [[ -z $OUTDIR ]]; then
    echo "gpu_check: OUTDIR is required; $USAGE" >&2
    exit 2
fi
case $OUTDIR in
    /*) ;;
    *) OUTDIR=$PWD/$OUTDIR ;; # the script works from the repository root
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 2
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
# Interpreted Triton kernels or a forced fastgp backend would make every stage check
# something other than the CUDA path (the test suite's conftest sets what it needs itself).
unset TRITON_INTERPRET FASTGP_BACKEND
# shellcheck source=benchmarks/gpu_check_lib.sh
source "$ROOT/benchmarks/gpu_check_lib.sh"

# The issue's 8 minutes, less the summary and one stage's 5 s kill grace.
DEADLINE_S=470
# Limits in seconds: what each stage should need on an H200, with margin (expected: versions
# ~10, tests ~180, bench ~130, each train run ~30). With one GPU they sum to the deadline, so
# every stage gets its whole limit whatever the others take.
VERSIONS_CAP=30
TESTS_CAP=200
BENCH_CAP=150
BENCH_BUDGET_S=120 # the benchmark starts no case after this (its last case and plot fit in 30 s)
TRAIN_CAP=45
NCCL_CAP=60

GPUS="?" TORCH_VERSION="?"
if ((!DRY_RUN)); then
    probe=$("$PYTHON" -c 'import torch
print(torch.cuda.device_count() if torch.cuda.is_available() else 0, torch.__version__)' 2>&1)
    rc=$?
    read -r GPUS TORCH_VERSION <<<"$(tail -n 1 <<<"$probe")"
    if ((rc != 0)) || [[ ! $GPUS =~ ^[0-9]+$ ]]; then
        echo "gpu_check: $PYTHON cannot import torch (set PYTHON to an interpreter that can):" >&2
        tail -n 5 <<<"$probe" >&2
        exit 2
    fi
    if ((GPUS == 0)); then
        echo "gpu_check: no CUDA device here (torch $TORCH_VERSION: torch.cuda.is_available()" \
            "is False); nothing was run and nothing was written."
        exit 0
    fi
    mkdir -p "$OUTDIR" || exit 2
    rm -f "$OUTDIR"/gpu_check.log "$OUTDIR"/gpu_check.json "$OUTDIR"/train_*_metrics.jsonl
fi

WORK=""
if ((!DRY_RUN)); then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastgp-gpu-check.XXXXXX") || exit 2
else
    WORK=${TMPDIR:-/tmp}/fastgp-gpu-check.XXXXXX
fi

GC_DRY_RUN=$DRY_RUN
gc_init "$OUTDIR" "$DEADLINE_S"
KEPT_FILES=(train_bf16_metrics.jsonl train_fp16_metrics.jsonl)
gc_say "fastgp GPU check: $GPUS GPU(s), torch $TORCH_VERSION, python $PYTHON, repo $ROOT"
gc_say "outputs: $OUTDIR (${GC_FILES[*]} ${KEPT_FILES[*]} + the benchmark's gpu_bench.*)"
gc_say "scratch (training run directories): $WORK"

keep_metrics() { # RUN_DIR NAME: a smoke run's metrics.jsonl into OUTDIR as NAME
    ((DRY_RUN)) && return 0
    if [[ -f $1/metrics.jsonl ]]; then
        cp "$1/metrics.jsonl" "$OUTDIR/$2"
    else
        gc_say "($1 has no metrics.jsonl)"
    fi
}

# nvidia-smi and pip list are for the record; the stage fails only if Python's report does.
# shellcheck disable=SC2016  # $1 is the inner shell's: the Python interpreter
gc_stage versions "$VERSIONS_CAP" bash -c \
    'nvidia-smi || echo "(nvidia-smi failed or is missing)"
     "$1" -m benchmarks.gpu --versions && "$1" -m fastgp info --no-build
     rc=$?
     "$1" -m pip list 2>/dev/null | grep -iE "^(torch|triton|numpy|scipy|pytest|hypothesis|matplotlib|pillow|tqdm|ninja|tensorboard) "
     exit $rc' versions "$PYTHON"

TEST_CMD=(env FASTGP_TEST_DEVICE=cuda "$PYTHON" -m pytest -v -p no:cacheprovider --durations=15)
if "$PYTHON" -c 'import pytest_timeout' 2>/dev/null; then
    TEST_CMD+=(--timeout=120) # one hung test fails with its traceback instead of eating the stage
fi
gc_stage tests "$TESTS_CAP" "${TEST_CMD[@]}"

gc_stage bench "$BENCH_CAP" "$PYTHON" -m benchmarks.gpu --out-dir "$OUTDIR" \
    --budget-s "$BENCH_BUDGET_S"

# The built-in procedural 32x32 shapes (nothing to download), DCGAN 32, the fused penalty on
# Triton explicitly (auto would fall back to the reference with a warning and still pass).
TRAIN_FLAGS=(--dataset shapes --device cuda --backend triton --steps 100 --log-every 10
    --sample-every 0 --checkpoint-every 0 --eval-every 0 --eval-samples 512 --no-progress
    --no-tensorboard --seed 0)
for amp in bf16 fp16; do
    gc_stage "train-$amp" "$TRAIN_CAP" "$PYTHON" -m fastgp train "${TRAIN_FLAGS[@]}" \
        --amp "$amp" --run-dir "$WORK/train-$amp"
    keep_metrics "$WORK/train-$amp" "train_${amp}_metrics.jsonl"
done
if ((DRY_RUN)) || ((GPUS >= 2)); then
    gc_stage train-nccl "$NCCL_CAP" "$PYTHON" -m torch.distributed.run --standalone \
        --nproc_per_node=2 -m fastgp train "${TRAIN_FLAGS[@]}" --steps 50 \
        --run-dir "$WORK/train-nccl"
else
    gc_not_applicable train-nccl "needs 2 GPUs, this machine has $GPUS"
fi

gc_summary
exit $?
