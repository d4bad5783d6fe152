import sys, torch
torch.set_num_threads(1)
from flashxlstm.tasks.experiments import run_mqar
from flashxlstm.tasks.harness import TrainConfig
from flashxlstm.tasks.mqar import MQARConfig
from flashxlstm.tasks.zoo import ModelSize
model, steps, lr, bs, dim, heads, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
r = run_mqar(model, out, train_cfg=TrainConfig(steps=steps, lr=lr, warmup_steps=min(100, steps//10), eval_every=max(steps//8,1), seed=0),
             mqar=MQARConfig(vocab_size=256, num_kv_pairs=16, context_length=256), size=ModelSize(dim, 2, heads, 256),
             batch_size=bs, test_size=128, eval_batch_size=64, log=lambda s: print(s, flush=True))
print("FINAL mqar", model, r["test_accuracy"], r["wall_time_s"], flush=True)
