# Parity on the 2-core VM with today's harness (official recipe, batch 128); run from the repository root.
run() { n=$(echo $1 | tr -d '[]:'); .venv/bin/flashxlstm experiment formal-language --task parity --model "$1" \
  --steps $2 --batch-size 128 --lr 1e-3 --curriculum 0 --warmup-steps $(($2/10)) --eval-every 250 --test-size 512 --threads 2 \
  --seed 0 --out runs/parity_cpu/$n > runs/parity_cpu/$n.log 2>&1; }
mkdir -p runs/parity_cpu
run "xlstm[0:1]" 3000
run "xlstm[1:1]" 3000
run "xlstm[1:0]" 1500
run transformer 1500
