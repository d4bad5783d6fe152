"""/metrics: the engine's counters and gauges in the Prometheus text exposition format (version 0.0.4)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _metric(lines: list[str], name: str, kind: str, help_text: str, samples: dict[str, float] | float) -> None:
    lines.append(f"# HELP flashxlstm_{name} {help_text}")
    lines.append(f"# TYPE flashxlstm_{name} {kind}")
    if not isinstance(samples, dict):
        samples = {"": samples}
    for labels, value in samples.items():
        lines.append(f"flashxlstm_{name}{labels} {float(value):.6g}")


def render(engine: "Engine", rejected: dict[int, int]) -> str:
    """rejected: HTTP status -> count of requests refused before reaching the engine."""
    s = engine.stats
    lines: list[str] = []
    _metric(lines, "requests_total", "counter", "Requests accepted by the engine.", s.requests_received)
    _metric(lines, "requests_finished_total", "counter", "Requests ended, by finish reason.",
            {f'{{reason="{k}"}}': v for k, v in sorted(s.finished.items())} or {'{reason="stop"}': 0})
    _metric(lines, "requests_rejected_total", "counter", "Requests refused with an HTTP error, by status.",
            {f'{{status="{k}"}}': v for k, v in sorted(rejected.items())} or {'{status="400"}': 0})
    _metric(lines, "prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", s.prompt_tokens)
    _metric(lines, "generation_tokens_total", "counter", "Tokens generated.", s.generated_tokens)
    _metric(lines, "generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
            s.tokens_per_second())
    _metric(lines, "running_sequences", "gauge", "Sequences in the decode batch.", engine.num_running)
    _metric(lines, "batch_occupancy", "gauge", "Running sequences / max batch size.",
            engine.num_running / engine.config.max_batch)
    _metric(lines, "batch_occupancy_mean", "gauge", "Mean rows per decode step / max batch size.",
            s.occupancy_sum / s.decode_steps / engine.config.max_batch if s.decode_steps else 0.0)
    _metric(lines, "queue_length", "gauge", "Requests waiting for a slot or prefilling.",
            engine.num_waiting + engine.num_prefilling)
    _metric(lines, "decode_steps_total", "counter", "Batched decode steps.", s.decode_steps)
    _metric(lines, "decode_seconds_total", "counter", "Seconds between the results of decode steps that ran back to back (prefill slices between them included).", s.decode_seconds)
    _metric(lines, "engine_errors_total", "counter", "Scheduler steps that failed (their requests ended).", s.errors)
    return "\n".join(lines) + "\n"
