"""Adapters from the models to outside tools: lm-evaluation-harness (`lm_eval`) and exported decode steps
(`export`: torch.export and ONNX). They sit beside generation/ and checkpoints/, above models/: they only
call the models' public interface, and each imports its optional dependency (the `eval` / `export` extras)
when it is used.
"""
