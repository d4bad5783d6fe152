"""Generation: prefill with the chunkwise form, decode with the step form, logits processing and sampling.

`generate(model, input_ids, ...)` works for any model with the stateful decode protocol (see generate.py):
`model(input_ids, state=...)` returning `.logits` / `.state` (or a (logits, state) tuple). The models expose
it as their `generate` method. Nothing here imports a model.
"""
from .cuda_graph import StaticDecodeStep
from .generate import GenerateOutput, generate, logits_and_state, prefill
from .sampling import filter_logits, next_token, process_logits
from .settings import GenerationSettings, resolve_settings

__all__ = ["generate", "prefill", "next_token", "filter_logits", "process_logits", "logits_and_state",
           "StaticDecodeStep", "GenerateOutput", "GenerationSettings", "resolve_settings"]
