"""Inference side of the engine: embedders, FAISS indexes, rerankers. No HTTP, no SQL."""
