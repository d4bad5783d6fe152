"""Serving: an OpenAI-compatible HTTP server over an engine that batches recurrent states continuously.

- `Engine` (engine.py): the scheduler, usable from Python without HTTP; `SamplingParams` per request.
- `RowSampler` (sampler.py): every row's next token chosen on the device (greedy, or the request's
  temperature / top-k / top-p with a seeded, batch-independent draw).
- `SlotStates` (states.py): the batch of per-sequence states and the decode step over it (CUDA graphs per
  batch-size bucket on CUDA); the only module that knows how a model's state looks.
- `PrefillSlices` (slices.py): prompts prefilled in fixed-shape slices (a CUDA graph per shape on CUDA), one
  per scheduler step, so a decode step waits for at most one slice.
- text.py: tokenizers, chat prompts, streamed detokenisation with stop strings.
- app.py: the FastAPI application (needs the `serve` extra: fastapi, uvicorn).
"""
from .engine import Engine, EngineConfig, EngineError, RequestHandle, RequestOutput
from .params import SamplingParams
from .sampler import RowSampler
from .slices import PrefillSlices
from .states import SlotStates
from .text import ByteTokenizer, ServingTokenizer, TextStream, load_serving_tokenizer

__all__ = ["Engine", "EngineConfig", "EngineError", "RequestHandle", "RequestOutput", "SamplingParams",
           "RowSampler", "PrefillSlices", "SlotStates", "ByteTokenizer", "ServingTokenizer", "TextStream", "load_serving_tokenizer"]
