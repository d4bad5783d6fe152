#!/usr/bin/env bash
# The kernels' GPU check in one command (at most 495 s on an H200): the full mLSTM check grid and its timings
# vs TFLA and FLA, then the packed sLSTM check (bf16 and fp32) with its timings, then the unpacked sLSTM
# check (bf16 every launch configuration, fp32 the default one) and timings vs the official kernels.
# Each stage has a hard time cap, so one stage that hangs leaves the others their time.
#   bash benchmarks/gpu_kernels_check.sh OUT_DIR      (needs the peer wheels in .whl/)
set -u
OUT_DIR=${1:?usage: gpu_kernels_check.sh OUT_DIR}
mkdir -p "$OUT_DIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
export FLASHXLSTM_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT_DIR/gpu.txt" 2>&1
stage() {  # stage NAME SECONDS COMMAND...: runs COMMAND under a hard cap, logs to NAME.log
    local name=$1 cap=$2
    shift 2
    local t0=$SECONDS
    timeout -k 5 "$cap" "$@" > "$OUT_DIR/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - t0)) s (cap $cap s)" | tee -a "$OUT_DIR/stages.txt"
}
stage mlstm 310 python3 benchmarks/bench_mlstm.py --out "$OUT_DIR/r1" --check-budget-s 180 --crash-budget-s 60 \
    --workers 12 --warm-budget-s 30 --budget-s 270 --profile
stage slstm_packed 75 python3 benchmarks/bench_slstm_packed.py --out "$OUT_DIR/slstm_packed" --budget-s 62
# (bench_slstm.py keeps the last 60 s of its budget for the timings: the checks get the rest)
stage slstm 100 python3 benchmarks/bench_slstm.py --shapes 4x256,8x64 --budget-s 95 --out "$OUT_DIR/slstm"
