"""IR evaluation: metrics (pytrec_eval), held-out splits, retrieval and rerank evaluation."""
