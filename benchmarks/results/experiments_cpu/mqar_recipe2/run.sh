cd /work/main
for m in "xlstm[1:0]" transformer lstm; do
  n=$(echo $m | tr -d '[]:')
  .venv/bin/flashxlstm experiment mqar --model "$m" --num-kv-pairs 16 --context-length 256 --vocab-size 256 \
    --embedding-dim 64 --num-heads 1 --steps 900 --batch-size 32 --lr 3e-3 --warmup-steps 90 --test-size 128 \
    --eval-batch-size 64 --eval-every 150 --threads 1 --seed 0 --out /tmp/mq/$n > /tmp/mq/$n.log 2>&1
done
