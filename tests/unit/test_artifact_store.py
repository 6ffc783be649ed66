"""The artifact store on a real S3 protocol server (moto on loopback) and on the local data dir."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app.services.artifacts import MANIFEST, ArtifactStore, LocalStore, S3Store
from tests.conftest import S3Server


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _s3_store(s3: S3Server, data_dir: Path, prefix: str, cache_bytes: int = 10**9) -> S3Store:
    return S3Store(data_dir, f"s3://{s3.bucket}/{prefix}", cache_bytes)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env("unused").items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "data")
    return _s3_store(request.getfixturevalue("s3_env"), tmp_path / "data", uuid.uuid4().hex)


def test_published_folder_reads_back_and_removal_hides_it(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir(exist_ok=True)
    staged = _folder(tmp_path / "data" / "staged", {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"})
    store.publish_dir(staged, "models/m1")
    assert store.exists("models/m1") and not staged.exists()
    copy = store.local_copy("models/m1")
    assert (copy / "a.txt").read_bytes() == b"alpha" and (copy / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert store.read_bytes("models/m1", "a.txt") == b"alpha"
    assert store.read_bytes("models/m1", "absent.json") is None
    store.remove("models/m1")
    assert not store.exists("models/m1")
    assert not store.local_copy("models/m1").exists()


def test_key_without_manifest_is_invisible(s3_env: S3Server, tmp_path: Path) -> None:
    """Files of a publish that never wrote its manifest (a writer killed mid-upload) are not an artifact."""
    prefix = uuid.uuid4().hex
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key=f"{prefix}/indexes/i1/v1/index.faiss", Body=b"half")
    store = _s3_store(s3_env, tmp_path, prefix)
    assert not store.exists("indexes/i1")
    assert not store.local_copy("indexes/i1").exists()
    assert store.read_bytes("indexes/i1", "index.faiss") is None


def test_cache_hit_does_not_download_again(s3_env: S3Server, tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex
    first = _s3_store(s3_env, tmp_path, prefix)
    first.publish_dir(_folder(tmp_path / "staged", {"weights": b"w" * 100}), "models/m")
    copy = first.local_copy("models/m")
    # Delete the files (not the manifest) in the store: only the cached copy can serve a second read.
    client = s3_env.client()
    for obj in client.list_objects_v2(Bucket=s3_env.bucket, Prefix=f"{prefix}/models/m/")["Contents"]:
        if not obj["Key"].endswith(MANIFEST):
            client.delete_object(Bucket=s3_env.bucket, Key=obj["Key"])
    another_process = _s3_store(s3_env, tmp_path, prefix)
    assert another_process.local_copy("models/m") == copy
    assert (copy / "weights").read_bytes() == b"w" * 100


def test_cache_bound_evicts_least_recently_used(s3_env: S3Server, tmp_path: Path) -> None:
    store = _s3_store(s3_env, tmp_path, uuid.uuid4().hex, cache_bytes=1500)
    for name in ("a", "b"):
        store.publish_dir(_folder(tmp_path / f"staged-{name}", {"f": name.encode() * 1000}), f"models/{name}")
    a = store.local_copy("models/a")
    b = store.local_copy("models/b")  # 2000 bytes > 1500: the older copy goes
    assert b.is_dir() and not a.exists()
    again = store.local_copy("models/a")  # fetched again; now b is the older one
    assert (again / "f").read_bytes() == b"a" * 1000 and not b.exists()


def test_checkpoint_survives_the_machine(s3_env: S3Server, tmp_path: Path) -> None:
    """A work dir pushed after each checkpoint is restored, latest step only, into another data dir."""
    prefix = uuid.uuid4().hex
    store = _s3_store(s3_env, tmp_path / "machine-1", prefix)
    work = store.work_dir("job1")
    _folder(work, {"retune_state.json": b"{}", "best/model": b"m2", "trainer/checkpoint-2/opt": b"o2"})
    store.save_checkpoint("job1", work, 2)
    _folder(work, {"best/model": b"m4", "trainer/checkpoint-4/opt": b"o4"})  # checkpoint-2 is still on disk
    store.save_checkpoint("job1", work, 4)

    other = _s3_store(s3_env, tmp_path / "machine-2", prefix)
    fresh = other.work_dir("job1")
    assert other.restore_checkpoint("job1", fresh) == 4
    assert (fresh / "trainer" / "checkpoint-4" / "opt").read_bytes() == b"o4"
    assert (fresh / "best" / "model").read_bytes() == b"m4"
    assert not (fresh / "trainer" / "checkpoint-2").exists()
    other.remove_work("job1")
    assert not fresh.exists()
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=f"{prefix}/work/job1/")
    assert listed.get("KeyCount", 0) == 0
    assert _s3_store(s3_env, tmp_path / "machine-3", prefix).restore_checkpoint("job1", tmp_path / "w") is None
