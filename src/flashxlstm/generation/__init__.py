"""Generation: prefill with the chunkwise form, decode with the step form, sampling.

`generate(model, input_ids, max_new_tokens, ...)` works for any model with the stateful interface
`logits, state = model(input_ids, state=None)`; models expose it as a thin `generate` method.
"""
from .cuda_graph import StaticDecodeStep
from .generate import generate, prefill
from .sampling import filter_logits, next_token

__all__ = ["generate", "prefill", "next_token", "filter_logits", "StaticDecodeStep"]
