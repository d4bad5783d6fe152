"""benchmarks/multigpu_scaling.py: its world-size ladder and throughput summary, and the launch it relies on
for its 1-GPU baseline: `--parallel fsdp` under torchrun with one process trains like the plain run."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from flashxlstm.data.prepare import prepare
from flashxlstm.training.lm import RunConfig, train_lm

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("multigpu_scaling", ROOT / "benchmarks" / "multigpu_scaling.py")
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def test_world_sizes_are_powers_of_two_up_to_the_kind():
    assert scaling.world_sizes(1) == [1]
    assert scaling.world_sizes(8) == [1, 2, 4, 8]
    assert scaling.world_sizes(6) == [1, 2, 4, 6]


def test_throughput_skips_the_compile_window_and_divides_by_the_world():
    rows = [{"step": 3, "tokens_per_s": 10.0, "max_memory_allocated_gb": 9.0},
            {"step": 6, "tokens_per_s": 400.0, "max_memory_allocated_gb": 5.0},
            {"step": 9, "tokens_per_s": 300.0, "max_memory_allocated_gb": 5.0},
            {"step": 12, "tokens_per_s": 500.0, "max_memory_allocated_gb": 5.0}]
    got = scaling.throughput(rows, world=4)
    assert got["tokens_per_s"] == 400.0 and got["tokens_per_s_per_gpu"] == 100.0
    assert got["peak_memory_gb_rank0"] == 9.0 and got["windows"] == 3
    assert scaling.throughput([{"step": 3, "tokens_per_s": 8.0}], world=1)["peak_memory_gb_rank0"] is None


def test_fsdp_under_torchrun_with_one_process_matches_the_plain_run(tmp_path):
    (tmp_path / "corpus").mkdir()
    for k in range(4):
        (tmp_path / "corpus" / f"{k}.txt").write_text(f"doc {k} " + "a small corpus of words. " * (10 + 4 * k))
    prepare([tmp_path / "corpus"], "bytes", tmp_path / "data", log=lambda m: None)
    model = {"family": "large", "embedding_dim": 16, "num_blocks": 1, "num_heads": 2, "chunk_size": 8}
    (tmp_path / "m.json").write_text(json.dumps(model))
    flags = dict(seq_len=16, batch_size=2, steps=4, warmup_steps=1, lr=3e-3, eval_every=100, save_every=100,
                 eval_windows=1, progress=False)
    ref = train_lm(RunConfig(data=str(tmp_path / "data"), out=str(tmp_path / "plain"), model=str(tmp_path / "m.json"),
                             **flags), log=lambda m: None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "flashxlstm",
           "train", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "m.json"), "--out",
           str(tmp_path / "fsdp"), "--parallel", "fsdp", "--seq-len", "16", "--batch-size", "2", "--steps", "4",
           "--warmup-steps", "1", "--lr", "3e-3", "--eval-every", "100", "--save-every", "100", "--eval-windows", "1",
           "--log-every", "1", "--no-progress", "--device", "cpu"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    got = [r["loss"] for r in scaling.metrics(tmp_path / "fsdp") if "loss" in r]
    want = [r["loss"] for r in ref["history"]["train"]]
    assert len(got) == 4 and max(abs(a - b) for a, b in zip(got, want)) < 1e-5, (got, want)
