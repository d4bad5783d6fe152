#!/usr/bin/env bash
# Issue 13's GPU run on one H200, time-boxed to about 240 s of command time: the training benchmark
# (bench_train.py: ours vs Llama, tokens/s, peak memory, MFU, profile), then the equal-time science runs
# (science_lm.py) shortened to SCIENCE_MIN minutes per model. Writes only under $OUT/training/.
# Needs the token shards of the docs corpus as .gpu/training/docs-16k.tar.xz (made by
# `python benchmarks/science_corpus.py`, `flashxlstm prepare --tokenizer train:16384`, then tar -cJf).
#     OUT=/tmp/out bash benchmarks/gpu_training.sh
set -u
OUTDIR="${OUT:?set OUT}/training"
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
BENCH_S="${BENCH_S:-125}"
SCIENCE_S="${SCIENCE_S:-95}"
SCIENCE_MIN="${SCIENCE_MIN:-0.4}"
DATA_TAR="${DATA_TAR:-.gpu/training/docs-16k.tar.xz}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTDIR/gpu.txt" 2>&1
timeout -k 5 $((BENCH_S + 15)) python3 benchmarks/bench_train.py --out "$OUTDIR" --budget-s "$BENCH_S" \
    --grid large-1.3b:2x8192,large-1.3b:1x32768,large-125m:4x8192,large-125m:1x32768 --ac off,on \
    --profile large-1.3b:2x8192,large-125m:4x8192 --then large-1.3b:8x2048,large-125m:16x2048 \
    --compile large-125m:4x8192 > "$OUTDIR/bench_train.log" 2>&1
echo "bench_train.py exit $?" >> "$OUTDIR/bench_train.log"

if [ -f "$DATA_TAR" ]; then
    mkdir -p /tmp/fx_training_data && tar -xJf "$DATA_TAR" -C /tmp/fx_training_data
    timeout -k 5 $((SCIENCE_S + 15)) python3 benchmarks/science_lm.py --data /tmp/fx_training_data/docs-16k \
        --minutes "$SCIENCE_MIN" --evals 4 --budget-s "$SCIENCE_S" --out "$OUTDIR" > "$OUTDIR/science_lm.log" 2>&1
    echo "science_lm.py exit $?" >> "$OUTDIR/science_lm.log"
else
    echo "no $DATA_TAR: science runs skipped" > "$OUTDIR/science_lm.log"
fi
tail -n 40 "$OUTDIR/bench_train.md" "$OUTDIR/science_lm.md" 2>/dev/null
