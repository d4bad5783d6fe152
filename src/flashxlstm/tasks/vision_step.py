"""Static-shape training and inference steps for the vision models, replayed as CUDA graphs on a GPU.

    step = TrainStep(model, lr=2e-3, weight_decay=0.05, amp="bf16", grad_clip=1.0, graph=True)
    loss = step(images, labels, lr)     # one AdamW step at `lr`; a detached 0-dim tensor (no host sync)
    infer = InferStep(model, amp="bf16", graph=True)
    logits = infer(images)              # a static buffer when graphed: read or copy it before the next call

A vision model sees one image size and, in training, one batch size, so its whole training step (forward,
loss, backward, gradient clipping, the AdamW update and an optional EMA of the weights) can be captured once
and replayed: one graph launch per step instead of one Python dispatch per op. A ViL block is a few hundred
small ops, so eagerly the host, not the GPU, sets the pace. `graph=False` runs the same function eagerly (the
CPU path, and the reference `check_graph` compares a replay with).

What capture needs, and what this module arranges:
- the optimiser is capturable: AdamW(capturable=True, foreach=True) with its learning rate one device tensor,
  written before each replay;
- inputs are copied into static buffers; the loss (and logits) come back in static buffers;
- autocast runs without its weight-cast cache (a cast cached outside the graph would be stale inside it);
- the first `warmup` calls run eagerly on a side stream (cuBLAS / Triton autotuning and lazy allocations
  happen there, and they are real steps); the next call captures the step and replays it.
Inputs of another shape than the captured one are a ValueError, not a silent re-capture.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training.engine import AMP_DTYPES
from ..training.schedule import decay_groups


def _autocast(device: torch.device, amp: str):
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if AMP_DTYPES[amp] is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp], cache_enabled=False)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_graph_device(graph: bool, device: torch.device) -> None:
    if graph and device.type != "cuda":
        raise ValueError(f"graph=True needs the model on a CUDA device, got {device}; use graph=False")


class TrainStep:
    """One AdamW step per call on a fixed-shape batch, eager or as a replayed CUDA graph.

    Decay groups are `training.schedule.decay_groups` (weight matrices decay, vectors do not). With
    `ema_decay`, `self.ema` is a copy of the model whose weights follow ema = d * ema + (1 - d) * weights
    after every step, d = `ema_decay_at(step)` (buffers are copied)."""

    def __init__(self, model: nn.Module, *, lr: float, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), amp: str = "none", grad_clip: float = 0.0,
                 label_smoothing: float = 0.0, ema_decay: float | None = None, graph: bool = False,
                 warmup: int = 3):
        self.model, self.device = model, _device_of(model)
        _check_graph_device(graph, self.device)
        if grad_clip < 0 or not 0.0 <= label_smoothing < 1.0 or (ema_decay is not None and not 0.0 <= ema_decay < 1.0):
            raise ValueError(f"TrainStep: grad_clip must be >= 0, label_smoothing in [0, 1) and ema_decay in [0, 1) "
                             f"or None, got {grad_clip}, {label_smoothing}, {ema_decay}")
        self.amp, self.grad_clip, self.label_smoothing = amp, grad_clip, label_smoothing
        _autocast(self.device, amp)  # names a bad amp now
        self.graph, self.warmup = graph, max(int(warmup), 1)
        groups = decay_groups(model, weight_decay)
        if graph:  # the learning rate lives on the device, so a replay reads the value written before it
            self.lr = torch.tensor(float(lr), device=self.device)
            self.optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=betas, weight_decay=weight_decay,
                                               capturable=True, foreach=True)
        else:
            self.lr = float(lr)
            self.optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=betas, weight_decay=weight_decay)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.ema_decay = ema_decay
        self.ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
        for m in self.ema.modules() if self.ema is not None else ():
            if getattr(m, "_compiled_call_impl", None) is not None:  # a compiled block's copy would call the original
                m._compiled_call_impl = None
        self._ema_d = torch.zeros((), device=self.device)
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[Tensor, Tensor] | None = None
        self._loss: Tensor | None = None

    def ema_decay_at(self, step: int) -> float:
        """The EMA decay after optimiser step `step` (1-based): min(ema_decay, (1 + step) / (10 + step)), so
        the average forgets its random start quickly in a short run and settles at `ema_decay`."""
        return min(self.ema_decay, (1.0 + step) / (10.0 + step))

    def _set_lr(self, lr: float) -> None:
        if self.ema is not None:
            self._ema_d.fill_(self.ema_decay_at(self.calls + 1))
        if isinstance(self.lr, Tensor):
            self.lr.fill_(float(lr))
        else:
            self.lr = float(lr)
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr

    def _run(self, x: Tensor, y: Tensor) -> Tensor:
        """The step itself: what is captured (gradients start from None, so capture allocates them)."""
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device, self.amp):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=self.device.type == "cuda")
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():  # ema = d ema + (1 - d) weights, d read from the device (one graph for all steps)
                ema_p, params = list(self.ema.parameters()), list(self.model.parameters())
                torch._foreach_mul_(ema_p, self._ema_d)
                torch._foreach_add_(ema_p, torch._foreach_mul(params, 1.0 - self._ema_d))
                for eb, b in zip(self.ema.buffers(), self.model.buffers()):
                    eb.copy_(b)
        return loss.detach()

    def _check_batch(self, x: Tensor, y: Tensor) -> None:
        if self._static is not None and (x.shape != self._static[0].shape or y.shape != self._static[1].shape):
            raise ValueError(f"TrainStep: captured for images {tuple(self._static[0].shape)} and labels "
                             f"{tuple(self._static[1].shape)}, got {tuple(x.shape)} and {tuple(y.shape)}")

    def __call__(self, x: Tensor, y: Tensor, lr: float) -> Tensor:
        self._set_lr(lr)
        self.calls += 1
        if not self.graph:
            return self._run(x, y)
        self._check_batch(x, y)
        if self._graph is None:
            if self._static is None:
                self._static = (x.detach().clone(), y.detach().clone())
            self._static[0].copy_(x)
            self._static[1].copy_(y)
            if self.calls <= self.warmup:  # eager on a side stream (the documented warm-up before capture)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    loss = self._run(*self._static)
                torch.cuda.current_stream(self.device).wait_stream(side)
                return loss
            self.optimizer.zero_grad(set_to_none=True)
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._loss = self._run(*self._static)
                self._graph = graph
            except Exception as e:  # noqa: BLE001  what cannot be captured still trains, eagerly
                return self.fall_back(f"capture failed: {type(e).__name__}: {e}", x, y)
        else:
            self._static[0].copy_(x)
            self._static[1].copy_(y)
        self._graph.replay()  # capture records without running: this call's step happens here
        return self._loss

    def fall_back(self, reason: str, x: Tensor | None = None, y: Tensor | None = None) -> Tensor | None:
        """Run eagerly from now on (the capturable optimiser and its state carry on); `self.graph_error` keeps
        the reason. With (x, y), takes this call's step eagerly."""
        self.graph, self.graph_error, self._graph = False, reason, None
        torch.cuda.synchronize(self.device)
        return self._run(x, y) if x is not None else None

    graph_error: str | None = None

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def _tensors(self) -> list[Tensor]:
        ts = list(self.model.parameters()) + list(self.model.buffers())
        ts += [v for st in self.optimizer.state.values() for v in st.values() if isinstance(v, Tensor)]
        if self.ema is not None:
            ts += list(self.ema.parameters())
        return ts

    @torch.no_grad()
    def check_graph(self, x: Tensor, y: Tensor, lr: float) -> dict[str, float]:
        """One replayed step against one eager step from the same weights and optimiser state on (x, y):
        the largest absolute differences of the loss and of the updated weights (and EMA weights). Leaves the
        model at the eager step's result. Needs a captured step."""
        if not self.captured:
            raise RuntimeError("TrainStep.check_graph: nothing captured yet (call the step warmup + 1 times first)")
        tensors = self._tensors()
        before = [t.clone() for t in tensors]
        loss_g = self(x, y, lr).clone()
        after_g = [p.clone() for p in self.model.parameters()]
        ema_g = [p.clone() for p in self.ema.parameters()] if self.ema is not None else []
        for t, b in zip(tensors, before):
            t.copy_(b)
        self.calls -= 1  # the eager step redoes the replayed one (same learning rate and EMA decay)
        self._set_lr(lr)
        self.calls += 1
        with torch.enable_grad():
            loss_e = self._run(x, y)
        torch.cuda.synchronize(self.device)
        diff = lambda a, b: max((float((u.float() - v.float()).abs().max()) for u, v in zip(a, b)), default=0.0)
        out = {"loss": float((loss_g - loss_e).abs()), "weights": diff(after_g, list(self.model.parameters()))}
        if self.ema is not None:
            out["ema_weights"] = diff(ema_g, list(self.ema.parameters()))
        return out


class InferStep:
    """The model's logits on a fixed-shape batch under no_grad and eval mode, eager or as a replayed CUDA graph.
    Graphed, the logits are a static buffer overwritten by the next call."""

    def __init__(self, model: nn.Module, *, amp: str = "none", graph: bool = False, warmup: int = 2):
        self.model, self.device = model, _device_of(model)
        _check_graph_device(graph, self.device)
        _autocast(self.device, amp)
        self.amp, self.graph, self.warmup = amp, graph, max(int(warmup), 1)
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._x: Tensor | None = None
        self._out: Tensor | None = None

    @torch.no_grad()
    def _run(self, x: Tensor) -> Tensor:
        was = self.model.training
        self.model.eval()
        try:
            with _autocast(self.device, self.amp):
                return self.model(x).float()
        finally:
            self.model.train(was)

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        if not self.graph:
            return self._run(x)
        if self._x is not None and x.shape != self._x.shape:
            raise ValueError(f"InferStep: captured for images {tuple(self._x.shape)}, got {tuple(x.shape)}")
        if self._x is None:
            self._x = x.detach().clone()
        self._x.copy_(x)
        if self._graph is None:
            if self.calls <= self.warmup:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    out = self._run(self._x)
                torch.cuda.current_stream(self.device).wait_stream(side)
                return out
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._out = self._run(self._x)
                self._graph = graph
            except Exception as e:  # noqa: BLE001  eager from now on
                self.graph, self.graph_error = False, f"capture failed: {type(e).__name__}: {e}"
                torch.cuda.synchronize(self.device)
                return self._run(x)
        self._graph.replay()
        return self._out

    graph_error: str | None = None

    @property
    def captured(self) -> bool:
        return self._graph is not None

    @torch.no_grad()
    def check_graph(self, x: Tensor) -> float:
        """The largest absolute difference between the replayed and the eager logits on `x`."""
        if not self.captured:
            raise RuntimeError("InferStep.check_graph: nothing captured yet")
        g = self(x).clone()
        return float((g - self._run(x)).abs().max())


def compile_blocks(model: nn.Module, backend: str = "inductor", **kwargs) -> nn.Module:
    """torch.compile each block of `model.blocks` in place (regional compilation: blocks of one structure share
    one compiled graph, so the compile time is that of one or two blocks, not of the whole depth); returns
    the model. The rest of the model (patch embedding, pooling, head) stays eager."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ValueError(f"compile_blocks: {type(model).__name__} has no `blocks` ModuleList to compile")
    for block in blocks:
        block.compile(backend=backend, **kwargs)
    return model
