"""Runtime backends for inference: the engine under an embedder's or reranker's transformer body.

torch fp32 is the reference and the default. The others (torch int8 and bf16, ONNX Runtime and OpenVINO in
fp32 and int8) replace only the transformer body of a loaded sentence-transformers model
(:func:`app.retrieval.backends.base.attach`), so tokenisation, prompts, pooling, normalisation, the
batcher and every route stay as they are. A model is served by another backend only when the gate
(:mod:`app.evaluation.backend_gate`) accepted it; the choice is the model's ``serving_backend.json``.
Submodules are imported directly: ``spec`` (names, no torch), ``base``, ``choice``, ``loading``, one per engine.
"""
