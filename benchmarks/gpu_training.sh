#!/usr/bin/env bash
# Issue 13's GPU run on one H200, time-boxed to about BENCH_S + SCIENCE_S + 20 s of command time: the training
# benchmark (bench_train.py: ours vs Llama, tokens/s, peak memory, MFU, profile) into $OUT/training/, then the
# equal-token science runs (gpu_science.sh -> science_lm.py, SCIENCE_S seconds in all) into $OUT/science/.
# Needs the token shards of the docs corpus as .gpu/training/docs-16k.tar.xz (made by
# `python benchmarks/science_corpus.py`, `flashxlstm prepare --tokenizer train:16384`, then tar -cJf).
#     OUT=/tmp/out bash benchmarks/gpu_training.sh
set -u
OUTDIR="${OUT:?set OUT}/training"
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
BENCH_S="${BENCH_S:-125}"
SCIENCE_S="${SCIENCE_S:-370}"
DATA_TAR="${DATA_TAR:-.gpu/training/docs-16k.tar.xz}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTDIR/gpu.txt" 2>&1
timeout -k 5 $((BENCH_S + 15)) python3 benchmarks/bench_train.py --out "$OUTDIR" --budget-s "$BENCH_S" \
    --grid large-1.3b:2x8192,large-1.3b:1x32768,large-125m:4x8192,large-125m:1x32768 --ac off,on \
    --profile large-1.3b:2x8192,large-125m:4x8192 --then large-1.3b:8x2048,large-125m:16x2048 \
    --compile large-125m:4x8192 > "$OUTDIR/bench_train.log" 2>&1
echo "bench_train.py exit $?" >> "$OUTDIR/bench_train.log"

if [ -f "$DATA_TAR" ]; then
    SCIENCE_S="$SCIENCE_S" DATA_TAR="$DATA_TAR" bash benchmarks/gpu_science.sh > /dev/null
else
    mkdir -p "$OUT/science" && echo "no $DATA_TAR: science runs skipped" > "$OUT/science/science_lm.log"
fi
tail -n 40 "$OUTDIR/bench_train.md" "$OUT/science/science_lm.md" 2>/dev/null
