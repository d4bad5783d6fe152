#!/usr/bin/env bash
# Issue 13's science runs on one GPU inside a fixed wall-time box: unpack the carried token shards of the docs
# corpus, then science_lm.py trains xLSTM[7:1], large-125m and the Llama at the same time (one process each, equal
# tokens: the same batches, steps and schedule), each stopping at a time cap that leaves room for the report.
# Writes only under $OUT/science/. The shards: .gpu/training/docs-16k.tar.xz (benchmarks/results/science_corpus.md).
#     OUT=/tmp/out SCIENCE_S=370 SCIENCE_STEPS=384 bash benchmarks/gpu_science.sh
# Extra arguments go to science_lm.py (a later one wins): `... gpu_science.sh --models xlstm71-125m` reruns one
# model on the same batches (one model runs in the script's own process; SCIENCE_MARGIN_S=20 is enough then).
set -u
START=$(date +%s)
OUTDIR="${OUT:?set OUT}/science"
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
BOX="${SCIENCE_S:-370}"
MARGIN="${SCIENCE_MARGIN_S:-45}"  # seconds left after the time cap: imports (concurrent children), report, plot
STEPS="${SCIENCE_STEPS:-384}"
DATA_TAR="${DATA_TAR:-.gpu/training/docs-16k.tar.xz}"
DATA_DIR="${TMPDIR:-/tmp}/fx_science_data"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTDIR/gpu.txt" 2>&1
mkdir -p "$DATA_DIR" && tar -xJf "$DATA_TAR" -C "$DATA_DIR" || { echo "cannot unpack $DATA_TAR" > "$OUTDIR/science_lm.log"; exit 1; }
LEFT=$((BOX - ($(date +%s) - START)))
# each model's cap counts from its own start (after imports); the alarm and the outer timeout are backstops
timeout -k 5 $((LEFT - 5)) python3 benchmarks/science_lm.py --data "$DATA_DIR/docs-16k" --concurrent \
    --steps "$STEPS" --evals 8 --time-cap-s $((LEFT - MARGIN)) --budget-s $((LEFT - MARGIN + 12)) --out "$OUTDIR" \
    "$@" > "$OUTDIR/science_lm.log" 2>&1
echo "science_lm.py exit $? after $(($(date +%s) - START)) s" >> "$OUTDIR/science_lm.log"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv >> "$OUTDIR/gpu.txt" 2>&1
tail -n 30 "$OUTDIR/science_lm.md" 2>/dev/null
