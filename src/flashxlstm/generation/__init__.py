"""Generation: prefill with the chunkwise form, decode with the step form, sampling."""
