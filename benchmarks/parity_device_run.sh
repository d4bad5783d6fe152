#!/usr/bin/env bash
# One device call, from the repository root: (a) parity at the CLI defaults on 6 seeds of
# xLSTM[0:1] and 2 of xLSTM[1:0], each a CPU process pinned to one core of its own (cores 0-7), and side by side
# (b) the Figure 4 grid on the GPU (8 tasks x 5 models x 3 seeds, one process per model and seed, cores 8-15
# until (a) ends, then all) and (c) MQAR xLSTM[1:0] on 3 seeds. Results go to $RES and, packed, to $OUT.
# Usage: RES=/tmp/res OUT=/tmp/out GRID_BUDGET=38 GRID_STEPS=1000 bash benchmarks/parity_device_run.sh
# The PYTHONPATH export is for the MQAR processes this script starts itself (the two benchmark scripts set it for
# their own jobs); without it they find no package.
set -u
RES=${RES:-/tmp/res}; OUT=${OUT:-$RES/out}; GRID_BUDGET=${GRID_BUDGET:-40}; GRID_STEPS=${GRID_STEPS:-2000}
MQAR_BUDGET=${MQAR_BUDGET:-240}
mkdir -p "$RES" "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=${PY:-python3}
{ nproc; lscpu | grep -E "Model name|^CPU\(s\)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  $PY -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
  $PY -c "import matplotlib; print('matplotlib', matplotlib.__version__)" 2>&1 | tail -1; } > "$RES/machine.txt"
( $PY benchmarks/parity_seeds_cpu.py --out "$RES/cpu_seeds" --seeds 1000 1001 1002 1003 1004 31337 \
      --mlstm-seeds 1000 1001 --cores-per-run 1 --first-core 0 > "$RES/cpu_seeds.log" 2>&1
  # the CPU runs are done: let the GPU jobs use every core
  for p in $(pgrep -f "flashxlstm.cli.main experiment"); do taskset -a -cp 0-15 "$p" > /dev/null; done
  tar czf "$OUT/cpu_seeds.tar.gz" -C "$RES" cpu_seeds cpu_seeds.log machine.txt ) &
CPU=$!
taskset -c 8-15 $PY benchmarks/figure4_gpu.py --out "$RES/figure4" --seeds 0 1 2 --budget "$GRID_BUDGET" --grace 15 --cpus 8-15 \
    --extra "--steps $GRID_STEPS --eval-every 500" --pack "$OUT/figure4.tar.gz" > "$RES/figure4.log" 2>&1 &
GRID=$!
for s in 0 1 2; do
  taskset -c 8-15 $PY -m flashxlstm.cli.main experiment mqar --model "xlstm[1:0]" --vocab-size 256 --num-kv-pairs 16 \
    --context-length 256 --embedding-dim 64 --num-heads 1 --batch-size 64 --lr 3e-3 --steps 3000 --warmup-steps 150 \
    --grad-clip 1 --time-budget "$MQAR_BUDGET" --test-size 512 --eval-batch-size 256 --eval-every 250 --device cuda \
    --threads 1 --seed $s --quiet --out "$RES/mqar/seed_$s" > "$RES/mqar_seed$s.log" 2>&1 &
done
wait $CPU
wait $GRID
wait
$PY - "$RES/mqar" <<'PY'
import json, sys
from pathlib import Path
from flashxlstm.tasks.experiments import seed_summary, seed_table
out = Path(sys.argv[1])
runs = [json.loads(p.read_text()) for p in sorted(out.glob("seed_*/results.json"))]
if runs:
    s = seed_summary(runs, "test_accuracy")
    (out / "seeds.json").write_text(json.dumps(s, indent=2) + "\n")
    (out / "seeds.md").write_text(seed_table(s))
    print(seed_table(s))
PY
tar czf "$OUT/mqar.tar.gz" -C "$RES" mqar mqar_seed0.log mqar_seed1.log mqar_seed2.log
cat "$RES/machine.txt" "$RES/cpu_seeds/summary.md" "$RES/figure4/summary.md" 2>&1
