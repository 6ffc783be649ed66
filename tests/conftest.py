"""Shared fixtures: the real data shipped beside the repo, sliced small enough for seconds-long tests."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import socket
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two tests at once (pytest-xdist), one per core: each test process and every service
    # or worker it starts gets one torch thread, so two tests do not oversubscribe the cores (with torch's
    # default of a thread per core each, two at once ran several times slower than one after the other).
    for _threads_var in ("RETUNE_TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_threads_var, "1")

SHARED_DATA = Path(os.environ.get("RETUNE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> NoReturn:
    """A data set, service or tool a test needs is not here: under CI (CI=true) the test fails, so a
    green CI never hides an integration test that did not run; on a developer's machine it skips."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing requirement fails, it does not skip)")
    pytest.skip(reason)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "scifact").is_dir():
        missing(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in list(csv.reader(fh, delimiter="\t"))[1:]:
            out.setdefault(row[0], {})[row[1]] = int(row[2])
    return out


def scifact_slice_zip(n_train: int = 40, n_test: int = 20, n_distractors: int = 120, seed: int = 0) -> bytes:
    """A BEIR zip of real SciFact: the first train/test queries, their judged docs and random others.

    qrels keep the official CRLF line ends, as a user's download would have.
    """
    src = SHARED_DATA / "scifact"
    if not src.exists():
        missing(f"shared data not found at {src}")
    corpus = {d["_id"]: d for d in _read_jsonl(src / "corpus.jsonl")}
    queries = {q["_id"]: q for q in _read_jsonl(src / "queries.jsonl")}
    train = dict(list(_read_qrels(src / "qrels" / "train.tsv").items())[:n_train])
    test = dict(list(_read_qrels(src / "qrels" / "test.tsv").items())[:n_test])
    docs = {d for judged in (*train.values(), *test.values()) for d in judged}
    docs |= set(random.Random(seed).sample(sorted(set(corpus) - docs), n_distractors))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scifact-slice/corpus.jsonl", "".join(json.dumps(corpus[d]) + "\n" for d in sorted(docs)))
        zf.writestr("scifact-slice/queries.jsonl", "".join(json.dumps(queries[q]) + "\n" for q in [*train, *test]))
        for split, qrels in (("train", train), ("test", test)):
            rows = "".join(f"{q}\t{d}\t{g}\r\n" for q, judged in qrels.items() for d, g in judged.items())
            zf.writestr(f"scifact-slice/qrels/{split}.tsv", "query-id\tcorpus-id\tscore\r\n" + rows)
    return buf.getvalue()


@pytest.fixture(scope="session")
def scifact_zip() -> bytes:
    return scifact_slice_zip()


@dataclass
class S3Server:
    """A real S3 protocol server (moto's) on loopback, with one bucket for the run."""

    endpoint: str
    bucket: str

    def env(self, prefix: str) -> dict[str, str]:
        """What a Retune process needs to store its artifacts under ``s3://bucket/prefix``."""
        return {
            "RETUNE_ARTIFACT_URL": f"s3://{self.bucket}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
            region_name="us-east-1",
        )  # fmt: skip


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing('moto is not installed (pip install "moto[server]")')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}", "retune-test")
    s3.client().create_bucket(Bucket=s3.bucket)
    try:
        yield s3
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Integration files first: with two test processes (`make test`), the long ones start early and the
    short unit files fill the end, so that neither process waits on the other's last long file."""
    items.sort(key=lambda item: "tests/unit/" in item.nodeid.replace("\\", "/"))
