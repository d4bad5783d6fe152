"""Token-shard training under torchrun on CPU (gloo): DDP (NeurIPS xLSTM[1:1]) and FSDP2 (the 7B family) give
the single-process losses (fp32, 1e-5), and an FSDP run stopped after a checkpoint at world size 2 resumes at
world size 1 with the same losses."""
import json
import os
import subprocess
import sys

import pytest

from flashxlstm.data.prepare import prepare
from flashxlstm.training.lm import RunConfig, resume_lm, train_lm

STEPS = 20
TINY = {"family": "neurips", "embedding_dim": 16, "num_blocks": 2, "slstm_at": "xLSTM[1:1]", "mlstm_num_heads": 2,
        "slstm_num_heads": 2, "mlstm_chunk_size": 8}
TINY_LARGE = {"family": "large", "embedding_dim": 16, "num_blocks": 2, "num_heads": 2, "chunk_size": 8}
FLAGS = ["--seq-len", "16", "--batch-size", "4", "--steps", str(STEPS), "--warmup-steps", "2", "--lr", "3e-3",
         "--eval-every", "10", "--save-every", "10", "--log-every", "1", "--val-fraction", "0.1",
         "--eval-windows", "4", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    (root / "corpus").mkdir()
    for k in range(6):
        (root / "corpus" / f"{k}.txt").write_text(f"document {k}: " + "the quick brown fox jumps. " * (8 + 5 * k))
    prepare([root / "corpus"], "bytes", root / "data", log=lambda m: None)
    refs = {}
    for name, fields in (("neurips", TINY), ("large", TINY_LARGE)):
        (root / f"{name}.json").write_text(json.dumps(fields))
        ref = train_lm(RunConfig(data=str(root / "data"), out=str(root / f"single-{name}"),
                                 model=str(root / f"{name}.json"), seq_len=16, batch_size=4, steps=STEPS,
                                 warmup_steps=2, lr=3e-3, eval_every=10, save_every=10, val_fraction=0.1,
                                 eval_windows=4, progress=False), log=lambda m: None)
        refs[name] = ([r["loss"] for r in ref["history"]["train"]], [r["val_loss"] for r in ref["history"]["val"]])
    return root, refs


def _losses(out):
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return [r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r]


def _torchrun(root, out, family, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "flashxlstm", "train", "--data", str(root / "data"), "--model", str(root / f"{family}.json"),
           "--out", str(out), *FLAGS, *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_ddp_matches_single_process(setup):
    root, refs = setup
    ref, ref_val = refs["neurips"]
    _torchrun(root, root / "ddp", "neurips", "--parallel", "ddp")
    losses, val = _losses(root / "ddp")
    assert len(losses) == STEPS
    assert max(abs(a - b) for a, b in zip(losses, ref)) < 1e-5, (losses, ref)
    assert max(abs(a - b) for a, b in zip(val, ref_val)) < 1e-5


def test_fsdp_matches_and_resumes_on_another_world_size(setup):
    root, refs = setup
    ref, ref_val = refs["large"]
    out = root / "fsdp"
    _torchrun(root, out, "large", "--parallel", "fsdp", "--stop-after-step", "10")
    first, _ = _losses(out)
    assert len(first) == 10 and max(abs(a - b) for a, b in zip(first, ref)) < 1e-5, (first, ref)
    resumed = resume_lm(out, {"parallel": "none", "progress": False}, log=lambda m: None)  # world size 2 -> 1
    losses = [r["loss"] for r in resumed["history"]["train"]]
    assert len(losses) == STEPS and resumed["world_size"] == 1
    assert max(abs(a - b) for a, b in zip(losses, ref)) < 1e-5, (losses, ref)
    assert abs(resumed["history"]["val"][-1]["val_loss"] - ref_val[-1]) < 1e-5
