"""Retune vs infinity (infinity-emb) serving the same fine-tuned models on the same CPU threads.

    nice -n 10 .venv/bin/python -m bench.serving_peers          # ~20 min on the 2-core CPU, one thread

infinity is not a dependency of Retune: install it in its own venv (see docs/benchmarks.md) and pass
its executable as ``--infinity-bin``. One run:

1. Models, through Retune's real path: the service (``python -m app.cli serve``, embedded mode) on a fresh
   data dir, SciFact uploaded, a short embedder job and a short reranker job (its candidates from that
   embedder), with ``RETUNE_SERVING_BACKENDS`` set so the end-of-job 1% gate picks each model's
   backend (``GET /models/{id}`` reports it). Speed does not depend on how long they trained.
   Both are downloaded (``GET /models/{id}/download``) and unpacked: infinity serves those folders.
2. The service is restarted and infinity started, both pinned to the same CPUs (``--cpus``) with the
   same thread count (``--threads``), and measured in alternating order round by round:
   embeddings (``--passages`` SciFact passages in requests of ``--batch``; Retune ``/v1/embeddings``,
   infinity ``/embeddings``) and rerank (``--rerank-queries`` test queries, each with its top
   ``--candidates`` from the torch fp32 embedder; Retune ``/v1/rerank``, infinity ``/rerank``), each at
   1 and 8 concurrent clients (threads with httpx): docs/s or pairs/s, and request latency p50 / p95.
3. Quality: nDCG@10 of what each server returned (rankings of the 300 test queries over the embedded
   passages; the reranked candidates) against torch fp32 in this process on the same inputs, paired
   with the 95% bootstrap interval (``app.evaluation.verdict.judge``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.evaluation.metrics import per_query_metrics
from app.evaluation.verdict import judge
from app.ingest import ParseLimits, parse_beir_dir
from app.retrieval.embedder import EmbedderConfig, encode_texts, load_embedder, passage_text
from app.retrieval.reranker import load_reranker, rerank_logits
from app.services.existing_model_gate import DEFAULT_CANDIDATES
from bench.common import ROOT, SHARED_DATA, percentiles_ms, write_results
from bench.search_latency import KEY, _free_port, _stop_group, _wait

DEFAULT_BACKENDS = json.dumps(DEFAULT_CANDIDATES, separators=(",", ":"))  # what a serving_backend job tries
DEFAULT_EMBEDDER_JOB = {"max_steps": 2, "batch_size": 8, "hard_negatives": "none"}
DEFAULT_RERANKER_JOB = {"max_steps": 2, "batch_size": 4, "group_size": 4, "recall_k": 10}
JOB_EVAL = {"split": "test", "max_queries": 10, "max_corpus_docs": 200, "max_validation_queries": 20}
DEFAULT_INFINITY = "/work/peers/infinity-venv/bin/infinity_emb"
ROUTES = ("embeddings", "rerank")
UNITS = {"embeddings": "docs", "rerank": "pairs"}

# A request: index -> (output, units of work). A server: route -> request factory.
Request = Callable[[httpx.Client, int], tuple[Any, int]]


def _pinned(cpus: list[int]) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, cpus)


def _thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}


def start_retune(data_dir: Path, port: int, env: dict[str, str], cpus: list[int] | None, log: Path) -> Any:
    """The real service, embedded mode (API + worker), in its own process group."""
    env = {**os.environ, **env, "RETUNE_DATA_DIR": str(data_dir), "RETUNE_PORT": str(port)}
    env |= {"RETUNE_BOOTSTRAP_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, stdout=log.open("ab"),
        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_pinned(cpus) if cpus else None,
    )  # fmt: skip


def start_infinity(
    binary: Path, folders: list[Path], port: int, engine: str, batch: int, threads: int, cpus: list[int], log: Path
) -> Any:
    cmd = [str(binary), "v2", "--engine", engine, "--device", "cpu", "--port", str(port), "--no-model-warmup"]
    for folder in folders:
        cmd += ["--model-id", str(folder), "--served-model-name", folder.name, "--batch-size", str(batch)]
        cmd += ["--pooling-method", pooling_of(folder)]
    env = {**os.environ, **_thread_env(threads), "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_pinned(cpus), cwd=log.parent,
    )  # fmt: skip


def pooling_of(folder: Path) -> str:
    """The sentence-transformers folder's own pooling, for infinity's ONNX path (whose "auto" may differ)."""
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        return "auto"
    modes = json.loads(config.read_text())
    return "mean" if modes.get("pooling_mode_mean_tokens") else "cls" if modes.get("pooling_mode_cls_token") else "auto"


def wait_ready(url: str, path: str, proc: Any, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited ({proc.returncode}); its log:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"{url}{path} not ready; log:\n{log.read_text()[-3000:]}")


def scifact_slice_zip(doc_ids: list[str], train_queries: int, seed: int = 0) -> bytes:
    """SciFact as a BEIR zip cut to the benchmark's passages plus the judged docs of ``train_queries`` seeded
    training queries: the jobs mine and evaluate over ~1k docs, not 5,183 (minutes, not an hour, on the
    shared CPU); the models it yields are as fast to serve as any."""
    src = SHARED_DATA / "scifact"
    train = [line.split("\t") for line in (src / "qrels" / "train.tsv").read_text().splitlines()[1:] if line]
    kept = set(random.Random(seed).sample(sorted({row[0] for row in train}), train_queries))
    train_rows = [row for row in train if row[0] in kept]
    test_text = (src / "qrels" / "test.tsv").read_text()
    test_ids = {line.split("\t")[0] for line in test_text.splitlines()[1:] if line}
    docs = set(doc_ids) | {row[1] for row in train_rows}
    corpus = [line for line in (src / "corpus.jsonl").read_text().splitlines() if json.loads(line)["_id"] in docs]
    queries = [line for line in (src / "queries.jsonl").read_text().splitlines()
               if json.loads(line)["_id"] in kept | test_ids]  # fmt: skip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("scifact/corpus.jsonl", "\n".join(corpus) + "\n")
        zf.writestr("scifact/queries.jsonl", "\n".join(queries) + "\n")
        zf.writestr("scifact/qrels/train.tsv", "query-id\tcorpus-id\tscore\n" + "".join(
            "\t".join(row) + "\n" for row in train_rows))  # fmt: skip
        zf.writestr("scifact/qrels/test.tsv", test_text)
    return buf.getvalue()


def train_models(client: httpx.Client, args: argparse.Namespace, doc_ids: list[str]) -> tuple[str, str]:
    """A short embedder job, then a short reranker job whose candidates come from that embedder."""
    upload = scifact_slice_zip(doc_ids, args.train_queries)
    dataset = client.post("/datasets", files={"file": ("scifact.zip", upload)}, data={"name": "sf"})
    dataset.raise_for_status()
    dataset_id = dataset.json()["id"]
    ids = []
    for kind, params in (("embedder", args.embedder_params), ("reranker", args.reranker_params)):
        params = json.loads(params) | ({"candidate_model": ids[0]} if ids else {})
        print(f"training the {kind} ({params}) ...", flush=True)
        body = {"kind": kind, "dataset_id": dataset_id, "eval": json.loads(args.job_eval), "params": params}
        job = client.post("/jobs", json=body)
        job.raise_for_status()
        waited = _wait(client, f"/jobs/{job.json()['id']}", {"succeeded"}, timeout=args.job_timeout)
        ids.append(waited["model_id"])
    return ids[0], ids[1]


def reused_models(client: httpx.Client) -> tuple[str, str]:
    """The newest embedder and reranker that jobs made in a reused data dir (``--reuse-data``)."""
    rows = [m for m in client.get("/models").json() if m.get("job_id")]
    newest = {kind: max((m for m in rows if m["kind"] == kind), key=lambda m: m["created_at"])["id"]
              for kind in ("embedder", "reranker")}  # fmt: skip
    print(f"reusing the models of an earlier run: {newest}", flush=True)
    return newest["embedder"], newest["reranker"]


def download(client: httpx.Client, model_id: str, dest: Path) -> Path:
    """``GET /models/{id}/download`` unpacked under ``dest``: the folder a user would hand to another server."""
    response = client.get(f"/models/{model_id}/download")
    response.raise_for_status()
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tf:
        tf.extractall(dest, filter="data")
        root = tf.getnames()[0].split("/")[0]
    return dest / root


def peer_copy(folder: Path, dest: Path, max_length: int | None) -> Path:
    """The downloaded folder as infinity reads it: Retune's runtime exports (``runtime/``) left out, and the
    tokenizer's ``model_max_length`` set to the length Retune serves the model with, so both servers read
    the same tokens (infinity's cross-encoder truncates at the tokenizer's maximum; it has no option for it)."""
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("runtime", "serving_backend.json"))
    st3_configs(dest, max_length or 256)
    if max_length:
        _set_json(dest / "tokenizer_config.json", "model_max_length", max_length)
    return dest


ST3_MODULES = {
    "sentence_transformers.base.modules.transformer.Transformer": "sentence_transformers.models.Transformer",
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": "sentence_transformers.models.Pooling",
    "sentence_transformers.base.modules.normalize.Normalize": "sentence_transformers.models.Normalize",
}


def st3_configs(folder: Path, max_seq_length: int) -> None:
    """infinity 0.0.78 runs sentence-transformers 3.x, which cannot read the module configs 6.x saves: they are
    rewritten in the 3.x format (module classes, ``max_seq_length``, pooling flags); weights are untouched."""
    modules = json.loads((folder / "modules.json").read_text())
    for module in modules:
        module["type"] = ST3_MODULES.get(module["type"], module["type"])
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file():
        old = json.loads(pooling.read_text())
        mode = old.get("pooling_mode", "mean")
        new = {
            "word_embedding_dimension": old["embedding_dimension"],
            "include_prompt": old.get("include_prompt", True),
        }
        new |= {f"pooling_mode_{m}": mode == m.split("_")[0] for m in ("cls_token", "mean_tokens", "max_tokens")}
        pooling.write_text(json.dumps(new))


def _set_json(path: Path, key: str, value: Any) -> None:
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data, indent=2))


def peer_folders(dest: Path, folders: dict[str, Path], engine: str, config: EmbedderConfig,
                 max_length: int | None, args: argparse.Namespace) -> dict[str, Path]:  # fmt: skip
    """The two folders one infinity engine serves (named ``embedder`` / ``reranker``: its model names)."""
    out = {
        "embedder": peer_copy(folders["embedder"], dest / "embedder", config.max_seq_length),
        "reranker": peer_copy(folders["reranker"], dest / "reranker", max_length),
    }
    if engine == "optimum":
        print("exporting ONNX for infinity's optimum engine (optimum-cli, in its venv) ...", flush=True)
        onnx_for_infinity(args.infinity_bin, out["embedder"], "feature-extraction", config.max_seq_length)
        onnx_for_infinity(args.infinity_bin, out["reranker"], "text-classification", max_length)
    return out


def onnx_for_infinity(binary: Path, folder: Path, task: str, max_length: int | None) -> None:
    """What infinity's docs ask of an ``--engine optimum`` user: an ONNX export in the folder (optimum-cli), and
    on a CPU a quantized one beside it (infinity then prefers ``*quantize*``). Its ONNX path truncates at
    ``max_position_embeddings``: set to the length Retune serves, so both read the same tokens."""
    cli = str(binary.parent / "optimum-cli")
    subprocess.run([cli, "export", "onnx", "--model", str(folder), "--task", task, str(folder)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)  # fmt: skip
    flags = Path("/proc/cpuinfo").read_text()
    arch = "--avx512_vnni" if "avx512_vnni" in flags else "--avx512" if "avx512f" in flags else "--avx2"
    subprocess.run([cli, "onnxruntime", "quantize", "--onnx_model", str(folder), "-o", str(folder / "quantized"),
                    arch], check=True, capture_output=True)  # fmt: skip
    # infinity 0.0.78 finds ONNX files in subfolders but then cannot load them: the quantized one goes beside model.onnx
    shutil.move(folder / "quantized" / "model_quantized.onnx", folder / "model_quantized.onnx")
    shutil.rmtree(folder / "quantized")
    if max_length:
        _set_json(folder / "config.json", "max_position_embeddings", max_length)


def run_clients(client_factory: Callable[[], httpx.Client], request: Request, n: int, clients: int) -> dict:
    """Requests 0..n-1 spread over ``clients`` threads (each takes the next); wall, latencies, outputs."""
    outputs: list[Any] = [None] * n
    latencies: list[float] = []
    units = [0]
    counter = itertools.count()
    lock = threading.Lock()
    errors: list[str] = []

    def loop() -> None:
        with client_factory() as client:
            while (i := next(counter)) < n:
                started = time.perf_counter()
                try:
                    out, work = request(client, i)
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    with lock:
                        errors.append(repr(exc)[:300])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)
                    outputs[i] = out
                    units[0] += work

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - started, "latencies": latencies, "outputs": outputs,
            "units": units[0], "errors": errors}  # fmt: skip


def retune_requests(emb_id: str, rr_id: str, batches: list[list[str]], rerank: list[tuple[str, list[str]]]) -> dict:
    def embed(client: httpx.Client, i: int) -> tuple[Any, int]:
        r = client.post("/v1/embeddings", json={"model": emb_id, "input": batches[i]})
        r.raise_for_status()
        return [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])], len(batches[i])

    def rank(client: httpx.Client, i: int) -> tuple[Any, int]:
        query, docs = rerank[i]
        r = client.post("/v1/rerank", json={"model": rr_id, "query": query, "documents": docs})
        r.raise_for_status()
        return {d["index"]: d["relevance_score"] for d in r.json()["results"]}, len(docs)

    return {"embeddings": embed, "rerank": rank}


def infinity_requests(emb: str, rr: str, batches: list[list[str]], rerank: list[tuple[str, list[str]]]) -> dict:
    def embed(client: httpx.Client, i: int) -> tuple[Any, int]:
        r = client.post("/embeddings", json={"model": emb, "input": batches[i]})
        r.raise_for_status()
        return [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])], len(batches[i])

    def rank(client: httpx.Client, i: int) -> tuple[Any, int]:
        query, docs = rerank[i]
        r = client.post("/rerank", json={"model": rr, "query": query, "documents": docs, "return_documents": False})
        r.raise_for_status()
        return {d["index"]: d["relevance_score"] for d in r.json()["results"]}, len(docs)

    return {"embeddings": embed, "rerank": rank}


def measure(servers: dict[str, tuple[str, dict]], sizes: dict[str, int], args: argparse.Namespace) -> dict:
    """Every (route, clients) on every server, ``args.rounds`` times, the server order rotating each round."""
    cells: dict[tuple[str, str, int], list[dict]] = {}
    names = list(servers)
    for r in range(args.rounds):
        for route in ROUTES:
            for clients in args.clients:
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    url, requests = servers[name]

                    def factory(url: str = url) -> httpx.Client:
                        return httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {KEY}"})

                    cell = run_clients(factory, requests[route], sizes[route], clients)
                    cells.setdefault((name, route, clients), []).append(cell)
                    rate = cell["units"] / cell["wall"]
                    print(
                        f"round {r} {route} x{clients} {name}: {rate:.1f}/s, errors {len(cell['errors'])}", flush=True
                    )
        if r + 1 < args.rounds:  # the figures so far, should the run be cut short
            partial = {"rounds_done": r + 1, "throughput_and_latency": summarise(cells, UNITS)}
            write_results(f"{args.name}_partial", partial, echo=False)
    return cells


def summarise(cells: dict[tuple[str, str, int], list[dict]], units: dict[str, str]) -> dict:
    """Per server, route and client count: median rate over rounds, pooled latency percentiles."""
    out: dict[str, Any] = {}
    for (name, route, clients), rounds in cells.items():
        rates = [c["units"] / c["wall"] for c in rounds]
        latencies = [x for c in rounds for x in c["latencies"]]
        out.setdefault(name, {}).setdefault(route, {})[f"clients_{clients}"] = {
            f"{units[route]}_per_s": round(statistics.median(rates), 2),
            f"{units[route]}_per_s_rounds": [round(x, 2) for x in rates],
            "requests": len(latencies),
            "errors": sum(len(c["errors"]) for c in rounds),
            "error_examples": [e for c in rounds for e in c["errors"]][:2],
            **(percentiles_ms(latencies) if latencies else {}),
        }
    return out


def ratios(summary: dict, units: dict[str, str], ours: str, peer: str) -> dict:
    """Retune / infinity for each figure; per-round rate ratios too (the rounds alternate the order)."""
    out: dict[str, Any] = {}
    for route, by_clients in summary[ours].items():
        for key, mine in by_clients.items():
            theirs = summary[peer][route][key]
            rate = f"{units[route]}_per_s"
            per_round = [a / b for a, b in zip(mine[rate + "_rounds"], theirs[rate + "_rounds"], strict=True)]
            out[f"{route}_{key}"] = {
                "throughput": round(mine[rate] / theirs[rate], 3),
                "throughput_per_round": [round(x, 3) for x in per_round],
                "p50": round(mine["p50_ms"] / theirs["p50_ms"], 3),
                "p95": round(mine["p95_ms"] / theirs["p95_ms"], 3),
            }
    return out


def quality(reference: dict[str, dict[str, float]], served: dict[str, dict[str, float]], qrels: dict) -> dict:
    """nDCG@10 of a served ranking paired query by query against torch fp32's, with the 95% interval."""
    base = per_query_metrics({q: qrels[q] for q in reference}, reference)
    final = per_query_metrics({q: qrels[q] for q in reference}, served)
    verdict = judge(base, final, "ndcg@10", split="test").to_dict()
    relative = verdict["delta"] / verdict["base"] if verdict["base"] else 0.0
    return {
        "torch_fp32_ndcg@10": round(verdict["base"], 4),
        "served_ndcg@10": round(verdict["final"], 4),
        "change": round(verdict["delta"], 4),
        "change_95_interval": [round(verdict["ci_low"], 4), round(verdict["ci_high"], 4)],
        "relative_change": round(relative, 4),
        "queries": verdict["queries"],
        "within_1_percent": bool(abs(relative) <= 0.01),
    }


def dense_run(queries: np.ndarray, docs: np.ndarray, qids: list[str], doc_ids: list[str], k: int) -> dict:
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    d = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    scores = q @ d.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}


def cosine_to_reference(served: np.ndarray, reference: np.ndarray) -> float:
    a = served / np.linalg.norm(served, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return round(float(np.min(np.sum(a * b, axis=1))), 5)


def scifact_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The passages (every test-judged doc plus seeded others), the test queries, the rerank queries."""
    scifact = parse_beir_dir(SHARED_DATA / "scifact", ParseLimits())
    qrels = scifact.qrels["test"]
    test_ids = sorted(qrels, key=int)
    judged = sorted({d for docs in qrels.values() for d in docs})
    others = sorted(set(scifact.corpus) - set(judged))
    doc_ids = judged + random.Random(0).sample(others, max(0, args.passages - len(judged)))
    random.Random(1).shuffle(doc_ids)
    step = max(1, len(test_ids) // args.rerank_queries)
    return {
        "doc_ids": doc_ids,
        "passages": [passage_text(scifact.corpus[d]) for d in doc_ids],
        "qids": test_ids,
        "queries": [scifact.queries[q] for q in test_ids],
        "qrels": qrels,
        "rerank_qids": test_ids[::step][: args.rerank_queries],
    }


def reference(emb_dir: Path, rr_dir: Path, emb_config: EmbedderConfig, rr_max_length: int | None, data: dict,
              args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """torch fp32 in this process: the quality reference, the rerank candidates, and in-process speed."""
    import torch

    torch.set_num_threads(args.threads)
    embedder = load_embedder(str(emb_dir), "cpu", emb_config.max_seq_length)
    texts = [emb_config.format_passage(p) for p in data["passages"]]
    started = time.perf_counter()
    docs = encode_texts(embedder, texts, emb_config.normalize, args.batch, task="document")
    docs_per_s = len(texts) / (time.perf_counter() - started)
    queries = encode_texts(embedder, [emb_config.format_query(q) for q in data["queries"]], True, 32, task="query")
    run = dense_run(queries, docs, data["qids"], data["doc_ids"], args.candidates)
    reranker = load_reranker(str(rr_dir), "cpu", rr_max_length)
    text_of = dict(zip(data["doc_ids"], data["passages"], strict=True))
    query_of = dict(zip(data["qids"], data["queries"], strict=True))
    candidates, rerank_run, pairs_seconds = [], {}, 0.0
    for qid in data["rerank_qids"]:
        ids = sorted(run[qid], key=lambda d: -run[qid][d])
        started = time.perf_counter()
        logits = rerank_logits(reranker, query_of[qid], [text_of[d] for d in ids])
        pairs_seconds += time.perf_counter() - started
        candidates.append((qid, ids))
        rerank_run[qid] = {d: float(x) for d, x in zip(ids, logits, strict=True)}
    pairs = sum(len(ids) for _, ids in candidates)
    return {
        "doc_vectors": docs,
        "run": run,
        "candidates": candidates,
        "rerank_run": rerank_run,
        "in_process": {
            "embeddings_docs_per_s": round(docs_per_s, 2),
            "rerank_pairs_per_s": round(pairs / pairs_seconds, 2),
        },
    }


def served_quality(name: str, server: tuple[str, dict], cells: dict, ref: dict, data: dict, query_texts: list[str],
                   query_body: dict) -> dict:  # fmt: skip
    """A server's first-round outputs scored against torch fp32; its query vectors fetched untimed."""
    url, _ = server
    embedded = cells[(name, "embeddings", 1)][0]["outputs"]
    docs = np.asarray([v for batch in embedded for v in batch], dtype=np.float32)
    path = "/v1/embeddings" if name == "retune" else "/embeddings"
    vectors = []
    with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as client:
        for start in range(0, len(query_texts), 32):
            r = client.post(path, json=query_body | {"input": query_texts[start : start + 32]})
            r.raise_for_status()
            vectors += [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    run = dense_run(np.asarray(vectors, dtype=np.float32), docs, data["qids"], data["doc_ids"], 100)
    reranked = cells[(name, "rerank", 1)][0]["outputs"]
    rerank_run = {qid: {ids[i]: s for i, s in scores.items()}
                  for (qid, ids), scores in zip(ref["candidates"], reranked, strict=True)}  # fmt: skip
    ref_first = {q: dict(sorted(h.items(), key=lambda x: -x[1])) for q, h in ref["run"].items()}
    return {
        "embeddings": quality(ref_first, run, data["qrels"])
        | {"min_cosine_to_fp32": cosine_to_reference(docs, ref["doc_vectors"])},
        "rerank": quality(ref["rerank_run"], rerank_run, data["qrels"]),
    }


def backend_in_process(folder: Path, label: str, kind: str, data: dict, ref: dict, config: EmbedderConfig,
                       max_length: int | None, args: argparse.Namespace) -> dict[str, float]:  # fmt: skip
    """Retune's chosen backend called in this process, no HTTP: how much of the served time is the model."""
    from app.retrieval.backends.loading import apply_backend
    from app.retrieval.backends.spec import parse_backend

    backend = parse_backend(label)
    if kind == "embedder":
        model = apply_backend(
            load_embedder(str(folder), "cpu", config.max_seq_length), folder, backend, kind, args.threads
        )
        texts = [config.format_passage(p) for p in data["passages"]]
        started = time.perf_counter()
        encode_texts(model, texts, config.normalize, args.batch, task="document")
        return {"embeddings_docs_per_s": round(len(texts) / (time.perf_counter() - started), 2)}
    model = apply_backend(load_reranker(str(folder), "cpu", max_length), folder, backend, kind, args.threads)
    text_of = dict(zip(data["doc_ids"], data["passages"], strict=True))
    query_of = dict(zip(data["qids"], data["queries"], strict=True))
    started = time.perf_counter()
    for qid, ids in ref["candidates"]:
        rerank_logits(model, query_of[qid], [text_of[d] for d in ids])
    pairs = sum(len(ids) for _, ids in ref["candidates"])
    return {"rerank_pairs_per_s": round(pairs / (time.perf_counter() - started), 2)}


def prepare_models(tmp: Path, data_dir: Path, doc_ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Phase 1: the jobs on an unpinned service (training speed is not measured), the models downloaded."""
    if args.reuse_data:
        shutil.copytree(args.reuse_data, data_dir)
    port = _free_port()
    env = {"RETUNE_SERVING_BACKENDS": args.backends, "RETUNE_WORKER_CONCURRENCY": "1",
           "RETUNE_TORCH_THREADS": str(args.train_threads)}  # fmt: skip
    proc = start_retune(data_dir, port, env, None, tmp / "retune_jobs.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, "/health", proc, tmp / "retune_jobs.log")
        with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as client:
            emb_id, rr_id = reused_models(client) if args.reuse_data else train_models(client, args, doc_ids)
            rows = {
                kind: client.get(f"/models/{mid}").json() for kind, mid in (("embedder", emb_id), ("reranker", rr_id))
            }
            folders = {kind: download(client, row["id"], tmp / "downloads" / kind) for kind, row in rows.items()}
    finally:
        _stop_group(proc)
    if args.keep_data:
        shutil.copytree(data_dir, args.keep_data, dirs_exist_ok=True)
    return {"rows": rows, "folders": folders}


def start_servers(tmp: Path, data_dir: Path, peers: dict[str, dict[str, Path]], args: argparse.Namespace) -> dict:
    """Phase 2: Retune (same data dir) and one infinity per engine, pinned to the same CPUs, same threads."""
    ports = {"retune": _free_port()} | {f"infinity-{engine}": _free_port() for engine in peers}
    env = {"RETUNE_TORCH_THREADS": str(args.threads), "RETUNE_WORKER_CONCURRENCY": "1", **_thread_env(args.threads)}
    procs = {"retune": start_retune(data_dir, ports["retune"], env, args.cpus, tmp / "retune.log")}
    for engine, folders in peers.items():
        name = f"infinity-{engine}"
        procs[name] = start_infinity(
            args.infinity_bin, [folders["embedder"], folders["reranker"]], ports[name], engine,
            args.infinity_batch, args.threads, args.cpus, tmp / f"{name}.log",
        )  # fmt: skip
    return {"procs": procs, "urls": {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--infinity-bin", type=Path, default=Path(DEFAULT_INFINITY), help="infinity_emb executable")
    parser.add_argument("--infinity-engines", default="torch,optimum", help="infinity --engine values, one server each")
    parser.add_argument("--infinity-batch", type=int, default=32, help="infinity's --batch-size (its default: 32)")
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32, help="passages per embeddings request")
    parser.add_argument("--rerank-queries", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=100, help="passages reranked per query")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default="1,8", help="concurrent clients, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each server (and the reference)")
    parser.add_argument("--train-threads", type=int, default=2, help="torch threads of the jobs (not timed)")
    parser.add_argument("--train-queries", type=int, default=64, help="SciFact training queries the jobs get")
    parser.add_argument("--backends", default=DEFAULT_BACKENDS, help="RETUNE_SERVING_BACKENDS for the jobs")
    parser.add_argument("--job-eval", default=json.dumps(JOB_EVAL), help="the jobs' eval spec (JSON)")
    parser.add_argument("--embedder-params", default=json.dumps(DEFAULT_EMBEDDER_JOB))
    parser.add_argument("--reranker-params", default=json.dumps(DEFAULT_RERANKER_JOB))
    parser.add_argument("--job-timeout", type=float, default=4 * 3600,
                        help="seconds to wait for each job (its gate scores every candidate backend)")  # fmt: skip
    parser.add_argument("--keep-data", type=Path, help="copy the service's data dir (with the models) here")
    parser.add_argument("--reuse-data", type=Path, help="a kept data dir: serve its newest job models, no jobs")
    parser.add_argument("--name", default="serving_peers")
    args = parser.parse_args()
    if not args.infinity_bin.is_file():
        parser.exit(2, f"infinity not found at {args.infinity_bin}: install infinity-emb in its own venv "
                       "(docs/benchmarks.md, 'Serving against a peer: infinity') or pass --infinity-bin\n")  # fmt: skip
    args.clients = [int(c) for c in args.clients.split(",")]
    args.infinity_engines = args.infinity_engines.split(",")
    args.cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data = scifact_inputs(args)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp, started = Path(tmp_name), time.monotonic()
        models = prepare_models(tmp, tmp / "data", data["doc_ids"], args)
        rows, folders = models["rows"], models["folders"]
        emb_config = EmbedderConfig.from_dict(rows["embedder"]["config"])
        rr_max_length = rows["reranker"]["config"].get("max_length")
        peers = {engine: peer_folders(tmp / "peer" / engine, folders, engine, emb_config, rr_max_length, args)
                 for engine in args.infinity_engines}  # fmt: skip
        print("torch fp32 reference in this process ...", flush=True)
        ref = reference(folders["embedder"], folders["reranker"], emb_config, rr_max_length, data, args)
        chosen = {kind: (rows[kind].get("serving_backend") or {}).get("backend", "torch-fp32") for kind in rows}
        in_process = {
            kind: backend_in_process(folders[kind], label, kind, data, ref, emb_config, rr_max_length, args)
            for kind, label in chosen.items()
        }
        cells, qualities, infinity_logs = serve_and_measure(tmp, peers, rows, emb_config, data, ref, args)
        wall = time.monotonic() - started
    units = UNITS
    summary = summarise(cells, units)
    models_out = {
        kind: {"serving_backend": row.get("serving_backend"), "config": row["config"], "job_id": row["job_id"]}
        for kind, row in rows.items()
    }
    infinity = {"engines": args.infinity_engines, "batch_size": args.infinity_batch}
    infinity |= {"versions": infinity_version(args.infinity_bin), "log_tails": infinity_logs}
    payload = {
        "setup": setup_text(args, data, chosen, rr_max_length, emb_config),
        "models": models_out,
        "infinity": infinity,
        "throughput_and_latency": summary,
        "ratio_retune_over_infinity": {
            name: ratios(summary, units, "retune", name) for name in summary if name != "retune"
        },
        "quality_vs_torch_fp32": qualities,
        "in_process_no_http": {"torch_fp32": ref["in_process"], "retune_chosen_backend": in_process},
        "wall_seconds": round(wall, 1),
    }
    write_results(args.name, payload)


def serve_and_measure(
    tmp: Path,
    peers: dict[str, Path],
    rows: dict,
    config: EmbedderConfig,
    data: dict,
    ref: dict,
    args: argparse.Namespace,
) -> tuple[dict, dict, str]:
    """Phase 2: both servers up, warmed, measured round by round, then their outputs scored."""
    text_of = dict(zip(data["doc_ids"], data["passages"], strict=True))
    query_of = dict(zip(data["qids"], data["queries"], strict=True))
    rerank = [(query_of[q], [text_of[d] for d in ids]) for q, ids in ref["candidates"]]
    batches = [data["passages"][i : i + args.batch] for i in range(0, len(data["passages"]), args.batch)]
    peer_batches = [[config.format_passage(p) for p in b] for b in batches]
    up = start_servers(tmp, tmp / "data", peers, args)
    urls, procs = up["urls"], up["procs"]
    try:
        for name, proc in procs.items():
            wait_ready(urls[name], "/health", proc, tmp / f"{name}.log")
        emb_id, rr_id = rows["embedder"]["id"], rows["reranker"]["id"]
        servers = {"retune": (urls["retune"], retune_requests(emb_id, rr_id, batches, rerank))}
        for name in procs.keys() - {"retune"}:
            servers[name] = (urls[name], infinity_requests("embedder", "reranker", peer_batches, rerank))
        for url, requests in servers.values():  # warm-up: models loaded, first passes done
            with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as client:
                for route in ROUTES:
                    requests[route](client, 0)
        cells = measure(servers, {"embeddings": len(batches), "rerank": len(rerank)}, args)
        peer_queries = [config.format_query(q) for q in data["queries"]]
        qualities = {}
        for name, server in servers.items():
            texts, body = (data["queries"], {"model": emb_id, "input_type": "query"}) if name == "retune" else (
                peer_queries, {"model": "embedder"})  # fmt: skip
            qualities[name] = served_quality(name, server, cells, ref, data, texts, body)
    finally:
        for proc in procs.values():
            _stop_group(proc)
    logs = {name: (tmp / f"{name}.log").read_text()[-1500:] for name in procs if name != "retune"}
    return cells, qualities, logs


def infinity_version(binary: Path) -> str:
    pip = binary.parent / "pip"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        shown = subprocess.run([str(pip), "list", "--format=json"], capture_output=True, text=True, timeout=120)
        wanted = {"infinity-emb", "torch", "sentence-transformers", "transformers", "optimum", "onnxruntime"}
        return ", ".join(f"{p['name']} {p['version']}" for p in json.loads(shown.stdout) if p["name"] in wanted)
    return "unknown"


def setup_text(
    args: argparse.Namespace, data: dict, chosen: dict, max_length: int | None, config: EmbedderConfig
) -> str:
    return (
        f"SciFact: {len(data['passages'])} passages (all {len(set(d for q in data['qrels'].values() for d in q))} "
        f"test-judged docs + seeded others) in requests of {args.batch}; {len(data['rerank_qids'])} test queries x "
        f"top {args.candidates} of the torch fp32 embedder for rerank; quality over all {len(data['qids'])} test "
        f"queries (embeddings). Each server pinned to CPUs {args.cpus} with {args.threads} thread(s) "
        f"(Retune RETUNE_TORCH_THREADS, infinity OMP_NUM_THREADS/MKL_NUM_THREADS); {args.rounds} rounds, "
        f"server order alternating, clients {args.clients}. Retune serves the embedder with {chosen['embedder']}, "
        f"the reranker with {chosen['reranker']} (its end-of-job 1% gate over {args.backends}); infinity "
        f"--engine {'/'.join(args.infinity_engines)} (one server each) --batch-size {args.infinity_batch}, "
        "serving the downloaded folders "
        f"(Retune's runtime/ exports left out; reranker tokenizer model_max_length set to Retune's {max_length}; "
        f"embedder max_seq_length {config.max_seq_length or 'its saved one'} from its folder). Models from short "
        f"Retune jobs on {args.train_queries} SciFact training queries, eval spec {args.job_eval} (params in "
        "models.*.config): serving speed does not depend on how long they trained."
    )


if __name__ == "__main__":
    main()
