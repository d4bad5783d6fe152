#!/usr/bin/env bash
# The forecaster's GPU pretraining as one hard-capped command (run from the repository root):
#
#     bash benchmarks/forecast_gpu.sh OUT [TOTAL_SECONDS] [PRESET] [FORECAST-PRETRAIN OPTIONS...]
#
# Pretrains `flashxlstm experiment forecast-pretrain --preset PRESET` (default gpu) for at most TOTAL_SECONDS
# (default 340; imports excepted: data generation, training, saving), reading the PRETRAIN real series from
# .gpu/forecast/pretrain_series.npz (written here by `forecast-pretrain --write-real-npz`) when it exists.
# The checkpoint is saved in bfloat16. Everything (checkpoint/, loss_log.jsonl, pretrain.json, log.txt) is
# packed into one tar, split into parts of at most 15 MiB: OUT/forecast.tar.part-aa, -ab, ...
# Unpack with `cat OUT/forecast.tar.part-* | tar -x -C DIR`.
set -uo pipefail
out=${1:?usage: bash benchmarks/forecast_gpu.sh OUT [TOTAL_SECONDS] [PRESET]}
total=${2:-340}
preset=${3:-gpu}
shift $(( $# < 3 ? $# : 3 ))
extra=("$@")   # more forecast-pretrain options, e.g. --seed 1 --steps 2906
mkdir -p "$out"
work=$(mktemp -d)
mkdir -p "$work/run"
real=()
[ -f .gpu/forecast/pretrain_series.npz ] && real=(--real-npz .gpu/forecast/pretrain_series.npz)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null || true; } > "$work/run/log.txt"
# the outer timeout is a backstop 20 s past the run's own cap (it saves before TOTAL_SECONDS; imports come on top)
timeout -k 5 $((${total%.*} + 20)) python3 -m flashxlstm experiment forecast-pretrain --preset "$preset" \
    --total-seconds "$total" "${real[@]}" "${extra[@]}" --save-dtype bfloat16 --out "$work/run" \
    >> "$work/run/log.txt" 2>&1
echo "exit status $?" >> "$work/run/log.txt"
tail -n 3 "$work/run/log.txt"
tar -C "$work" -cf - run | split -b 15M - "$out/forecast.tar.part-"
ls -l "$out"
rm -rf "$work"
