"""Parallelism applied from outside the model, and checkpoints that any world size can resume.

`setup()` joins the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK; gloo on CPU, nccl on
CUDA) or runs alone. `parallelize(module, mode)` wraps the loss module: "ddp" (DistributedDataParallel) or
"fsdp" (FSDP2 `fully_shard` on every residual block, then the root, with a MixedPrecisionPolicy: bf16
parameters and fp32 gradient reduction under bf16 training). `save_checkpoint` / `load_checkpoint` go
through torch.distributed.checkpoint (DCP): each rank writes its shards, the metadata records the global
layout, and loading reshards onto whatever world size and wrapping the loading run has. The checkpoint
directory is swapped in atomically by rank 0 after every rank has written.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoints.atomic import atomic_directory, resolve_directory, write_json_atomic
from .presets import blocks_of


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> World:
    """The process group of a torchrun launch (initialised once, also for one process, so that
    `--parallel ddp|fsdp` runs at world size 1 as the baseline of a scaling run), or a world of one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ:  # not launched by torchrun
        return World(device=torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(rank=rank, size=size, local_rank=local, device=dev)


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def broadcast_object(obj, world: World):
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def parallelize(module: nn.Module, mode: str, world: World, *, amp: str = "none") -> nn.Module:
    """`module` wrapped for data parallelism ("none", "ddp", "fsdp")."""
    if mode == "none":
        return module
    if mode not in ("ddp", "fsdp"):
        raise ValueError(f"--parallel must be none, ddp or fsdp, got {mode!r}")
    if world.size == 1 and not dist.is_initialized():
        raise ValueError(f"--parallel {mode} needs a torchrun launch (torchrun --nproc-per-node N -m flashxlstm "
                         "train ...)")
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if amp == "bf16"
              else MixedPrecisionPolicy())
    for block in blocks_of(module.model):
        fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


TRAINER_STATE = "trainer.json"


@contextmanager
def _quiet_single_process():
    """DCP warns that it assumes a single process when no process group exists: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


RANK_FILE = "carried-rank{}.pt"


def save_checkpoint(directory: Path, module: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict,
                    world: World, extra_files: dict[str, dict] | None = None, per_rank=None) -> None:
    """Model and optimiser through DCP (every rank writes its part), plus trainer.json (step, history, ...)
    and `extra_files` (name -> JSON object) from rank 0, and `per_rank` (tensors) from each rank as
    carried-rankR.pt; the directory appears complete or not at all."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer)
    with _quiet_single_process():
        _save(directory, model_sd, optim_sd, trainer_state, world, extra_files, per_rank)


def _save(directory, model_sd, optim_sd, trainer_state, world, extra_files, per_rank) -> None:
    import torch.distributed.checkpoint as dcp

    if world.main:
        with atomic_directory(directory) as tmp:
            broadcast_object(str(tmp), world)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
            if per_rank is not None:
                torch.save(per_rank, tmp / RANK_FILE.format(world.rank))
            write_json_atomic(tmp / TRAINER_STATE, trainer_state)
            for name, obj in (extra_files or {}).items():
                write_json_atomic(tmp / name, obj)
            barrier(world)  # every rank has written its shards before the directory is swapped in
        barrier(world)
    else:
        tmp = broadcast_object(None, world)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        if per_rank is not None:
            torch.save(per_rank, Path(tmp) / RANK_FILE.format(world.rank))
        barrier(world)
        barrier(world)


def load_checkpoint(directory: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load model and optimiser (resharded to this run's world) in place; returns trainer.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    directory = resolve_directory(directory)
    if not (directory / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"cannot resume: no {TRAINER_STATE} in {directory}")
    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((directory / TRAINER_STATE).read_text())


def load_rank_files(directory: Path, saved_world_size: int) -> list:
    """The per-rank objects a save wrote (every rank's), in rank order; [] if there are none."""
    directory = resolve_directory(directory)
    paths = [directory / RANK_FILE.format(r) for r in range(saved_world_size)]
    if not all(p.is_file() for p in paths):
        return []
    return [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
