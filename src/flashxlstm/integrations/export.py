"""The decode step of either model family as a graph: one token and the state in, logits and the new state out.

    step = DecodeStep(model)                                  # an nn.Module over flat tensors
    state = step.initial_state(batch_size=2)                  # list of tensors, names in step.state_names
    logits, *state = step(input_ids, *state)                  # input_ids (B, 1) int64 -> logits (B, V) float32
    program = export_decode_step(model)                       # torch.export.ExportedProgram, batch size dynamic
    export_decode_step_onnx(model, "step.onnx")               # the same graph as ONNX (opset 18)
    runner = OnnxDecodeStep("step.onnx")                      # onnxruntime: logits, state = runner(ids, state)

The state crosses the graph boundary as flat tensors, one per state field of each block (`state.<block>.<field>`
in, `new_state.<block>.<field>` out; fields that a block does not have, such as the conv window of a
kernel-size-0 layer, are left out), so any runtime that passes tensors can carry it. A prompt is fed through the
same step one token at a time (exact, as the recurrent form is; the chunked prefill stays in PyTorch).
The graph is traced from the model's torch code, so trace it on the CPU or with torch backends: Triton kernels
do not export to ONNX. Needs `pip install flashxlstm[export]` (onnx, onnxscript, onnxruntime) for ONNX.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ._model_io import call, initial_state


def _field_names(entry: Any) -> list[str]:
    fields = getattr(entry, "_fields", None)  # a typed (NamedTuple) state names its fields
    return list(fields) if fields is not None else [str(j) for j in range(len(entry))]


class DecodeStep(nn.Module):
    """`model` as a one-token step over flat tensors: forward(input_ids (B, 1), *state) -> (logits (B, V), *state).

    The layout of the flat state (which block and field each tensor is) is read from the model's state for one
    token; `state_names` lists it, `flatten` / `unflatten` convert from and to the model's own nested state.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"DecodeStep: model must be a flashxlstm model (nn.Module), got {type(model).__name__}")
        self.model = model
        template = initial_state(model, 1)
        # (block, field index, field name, whether present) for every field of every block
        self._layout = [(b, j, name, entry[j] is not None)
                        for b, entry in enumerate(template) for j, name in enumerate(_field_names(entry))]
        self._types = [type(entry) for entry in template]
        self._widths = [len(entry) for entry in template]
        self.state_names = [f"state.{b}.{name}" for b, _, name, present in self._layout if present]

    def flatten(self, state: Any) -> list[Tensor]:
        if not isinstance(state, (tuple, list)) or len(state) != len(self._types):
            raise ValueError(f"DecodeStep: state must hold one entry per block ({len(self._types)}), "
                             f"got {type(state).__name__}")
        return [state[b][j] for b, j, _, present in self._layout if present]

    def unflatten(self, flat: Sequence[Tensor]) -> tuple:
        if len(flat) != len(self.state_names):
            raise ValueError(f"DecodeStep: expected {len(self.state_names)} state tensors ({', '.join(self.state_names)}), "
                             f"got {len(flat)}")
        it = iter(flat)
        fields: list[list[Any]] = [[None] * w for w in self._widths]
        for b, j, _, present in self._layout:
            if present:
                fields[b][j] = next(it)
        return tuple(t(*f) if hasattr(t, "_fields") else t(f) for t, f in zip(self._types, fields))

    def initial_state(self, batch_size: int) -> list[Tensor]:
        """The flat state of a model that has seen nothing."""
        return self.flatten(initial_state(self.model, batch_size))

    def forward(self, input_ids: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new_state = call(self.model, input_ids, self.unflatten(state))
        return (logits[:, -1].float(), *self.flatten(new_state))


def _example(step: DecodeStep, batch_size: int) -> tuple[Tensor, ...]:
    device = next(step.model.parameters()).device
    ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    return (ids, *step.initial_state(batch_size))


def _dynamic_batch(n_state: int) -> tuple:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return ({0: batch}, tuple({0: batch} for _ in range(n_state)))  # (input_ids, *state)


def export_decode_step(model: nn.Module, batch_size: int = 2, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """torch.export of `DecodeStep(model)`; with dynamic_batch the program takes any batch size."""
    step = DecodeStep(model).eval()
    args = _example(step, batch_size)
    shapes = _dynamic_batch(len(step.state_names)) if dynamic_batch else None
    with torch.no_grad():
        return torch.export.export(step, args, dynamic_shapes=shapes)


def export_decode_step_onnx(model: nn.Module, path: str | os.PathLike, batch_size: int = 2, dynamic_batch: bool = True,
                            opset_version: int = 18, program: torch.export.ExportedProgram | None = None) -> list[str]:
    """Write `DecodeStep(model)` as an ONNX file (inputs input_ids and state.*, outputs logits and new_state.*);
    returns the state names. The model must be on the CPU (the ONNX graph is traced from torch code).
    program: the result of export_decode_step(model), to convert instead of tracing again."""
    param = next(model.parameters())
    if param.device.type != "cpu":
        raise ValueError(f"export_decode_step_onnx: the model is on {param.device}; export from a CPU copy (model.cpu())")
    step = DecodeStep(model).eval()
    names = step.state_names
    if program is None:
        program = export_decode_step(model, batch_size, dynamic_batch)
    elif len(program.graph_signature.user_inputs) != 1 + len(names):
        raise ValueError(f"export_decode_step_onnx: program takes {len(program.graph_signature.user_inputs)} inputs, "
                         f"the decode step of this model {1 + len(names)}: pass export_decode_step(model)")
    onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=opset_version,
                                     input_names=["input_ids", *names],
                                     output_names=["logits", *("new_" + n for n in names)])
    onnx_program.save(os.fspath(path))
    return names


class OnnxDecodeStep:
    """An exported step run by onnxruntime on the CPU: (input_ids (B, 1), state list) -> (logits, new state list).

    Tensors in and out are torch tensors; the state is the flat list `DecodeStep.initial_state` gives."""

    def __init__(self, path: str | os.PathLike):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        self.state_names = [i.name for i in self.session.get_inputs()][1:]

    def __call__(self, input_ids: Tensor, state: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if len(state) != len(self.state_names):
            raise ValueError(f"OnnxDecodeStep: expected {len(self.state_names)} state tensors "
                             f"({', '.join(self.state_names)}), got {len(state)}")
        feed = {"input_ids": input_ids.detach().cpu().long().numpy()}
        feed.update((name, t.detach().cpu().numpy()) for name, t in zip(self.state_names, state))
        logits, *new_state = self.session.run(None, feed)
        return torch.from_numpy(logits), [torch.from_numpy(t) for t in new_state]
