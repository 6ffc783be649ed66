"""Does a downloaded model reproduce its job's test figure outside Retune? (SciFact test, full corpus)

    .venv/bin/python -m bench.scifact_embedder --keep /tmp/E     # the job, its model kept
    .venv/bin/python -m bench.download_reproduce --model /tmp/E  # ~6 min on a 2-core CPU

The kept model folder is packed by the same code that streams `GET /models/{id}/download`
(`app.services.model_archive.stream_model_archive`), unpacked into a temporary folder, and evaluated by a
bare script: the BEIR files read with `json` / `csv`, `SentenceTransformer(folder).encode_query` /
`encode_document` (the saved prompts), FAISS exact inner product, pytrec_eval. Nothing of Retune's
evaluation path is used, so an equal figure shows the archive carries everything search needs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tarfile
import tempfile
from pathlib import Path

from bench.common import RESULTS, SHARED_DATA, write_results


def _beir(name: str, split: str) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    root = SHARED_DATA / name
    docs = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines() if line.strip()]
    corpus = {d["_id"]: f"{d['title']} {d['text']}".strip() if d.get("title") else d["text"] for d in docs}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (root / "queries.jsonl").read_text().splitlines())}
    qrels: dict[str, dict[str, int]] = {}
    with (root / "qrels" / f"{split}.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return corpus, {q: queries[q] for q in qrels}, qrels


def _download(model_dir: Path, dest: Path) -> Path:
    from app.services.model_archive import stream_model_archive

    archive = b"".join(stream_model_archive(model_dir, "model", "# card\n", "tar.gz"))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tf:
        tf.extractall(dest, filter="data")
    return dest / "model"


def bare_ndcg_at_10(model_dir: Path, dataset: str, split: str) -> dict[str, float]:
    import faiss
    import numpy as np
    import pytrec_eval
    from sentence_transformers import SentenceTransformer

    corpus, queries, qrels = _beir(dataset, split)
    model = SentenceTransformer(str(model_dir), device="cpu")
    doc_ids, query_ids = list(corpus), list(queries)
    docs = model.encode_document([corpus[d] for d in doc_ids], normalize_embeddings=True, batch_size=64)
    qs = model.encode_query([queries[q] for q in query_ids], normalize_embeddings=True)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    scores, ranks = index.search(np.ascontiguousarray(qs, dtype=np.float32), 100)
    run = {
        q: {doc_ids[r]: float(s) for s, r in zip(scores[i], ranks[i], strict=True) if r >= 0}
        for i, q in enumerate(query_ids)
    }
    measures = {"ndcg_cut.10", "recall.100", "recip_rank"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    mean = {k: sum(per_query.get(q, {}).get(k, 0.0) for q in qrels) / len(qrels) for k in ("ndcg_cut_10", "recall_100")}
    return {"ndcg@10": mean["ndcg_cut_10"], "recall@100": mean["recall_100"], "queries": len(qrels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder kept by bench.scifact_embedder")
    parser.add_argument("--job-result", type=Path, default=RESULTS / "scifact_embedder.json")
    parser.add_argument("--name", default="download_reproduce")
    args = parser.parse_args()
    job = json.loads(args.job_result.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        bare = bare_ndcg_at_10(_download(args.model, Path(tmp)), "scifact", "test")
    job_figure = job["fine_tuned"]["ndcg@10"]
    write_results(
        args.name,
        {
            "data": "SciFact official test queries, full corpus, read from the BEIR files",
            "job_result": {"file": str(args.job_result.name), "date": job["date"], "ndcg@10": job_figure},
            "bare_script": bare,
            "difference_ndcg@10": bare["ndcg@10"] - job_figure,
        },
    )


if __name__ == "__main__":
    main()
