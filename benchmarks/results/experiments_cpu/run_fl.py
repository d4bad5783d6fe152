import sys, torch
torch.set_num_threads(1)
from flashxlstm.tasks.experiments import run_formal_language
from flashxlstm.tasks.harness import TrainConfig
task, model, steps, lr, bs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
r = run_formal_language(task, model, out, train_cfg=TrainConfig(steps=steps, lr=lr, warmup_steps=min(100, steps//10), eval_every=max(steps//8,1), seed=0),
                        batch_size=bs, test_size=256, log=lambda s: print(s, flush=True))
print("FINAL", task, model, r["train_scaled_accuracy"], r["test_scaled_accuracy"], r["wall_time_s"], flush=True)
