"""Retune's own training losses: compositions of sentence-transformers losses, one per file."""
