"""Where artifacts live: one interface over a local directory (the default) and any S3-compatible store.

Every artifact (dataset files, models, indexes, a job's checkpoints) is a folder under a key such as
``models/ID``; SQL stores the key. Publishing is atomic on both stores: the local store renames a staged
folder into place; the S3 store uploads the files under a fresh version prefix and writes the key's
manifest LAST, and readers trust only keys with a manifest, so no reader sees half a model or index.
The row naming a key is committed only after ``publish_dir`` returned (see ``storage.publish``).

Readers work on local files (sentence-transformers, FAISS and the dataset readers read folders): the S3
store downloads a key once into a size-bounded cache under ``data_dir/cache/artifacts``, keyed by key and manifest
version, evicting the least recently used copies. Published keys are never rewritten (new artifacts get
new ids), so a process remembers what it fetched and a search does not contact S3 per request.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.core.config import Settings

MANIFEST = "manifest.json"
CHECKPOINT_PREFIX = "checkpoint-"


def work_key(job_id: str) -> str:
    return f"work/{job_id}"


def checkpoint_key(job_id: str, step: int) -> str:
    return f"{work_key(job_id)}/{CHECKPOINT_PREFIX}{step}"


def checkpoint_files(work_dir: Path, step: int) -> list[Path]:
    """What resuming needs: the work dir without the trainer's other (rotated) checkpoints."""
    keep = f"{CHECKPOINT_PREFIX}{step}"
    files = []
    for path in sorted(work_dir.rglob("*")):
        parts = path.relative_to(work_dir).parts
        stale = len(parts) > 1 and parts[0] == "trainer" and parts[1].startswith(CHECKPOINT_PREFIX)
        if path.is_file() and not (stale and parts[1] != keep):
            files.append(path)
    return files


class ArtifactStore(ABC):
    """Folders under keys; readers see a key's complete folder or nothing."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @abstractmethod
    def publish_dir(self, local_dir: Path, key: str) -> None:
        """Make ``local_dir`` the artifact under ``key``, atomically; ``local_dir`` is consumed."""

    @abstractmethod
    def local_copy(self, key: str) -> Path:
        """The artifact's folder on this machine; a path that does not exist when the store has none."""

    @abstractmethod
    def read_bytes(self, key: str, name: str) -> bytes | None:
        """One small file of an artifact (a calibration, a provenance) without fetching the whole folder."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def remove(self, key: str) -> None:
        """Gone for readers at once, then its files (idempotent)."""

    def work_dir(self, job_id: str) -> Path:
        """A running job's local scratch folder: checkpoints are written here first."""
        path = self.data_dir / "work" / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @abstractmethod
    def save_checkpoint(self, job_id: str, work_dir: Path, step: int) -> None:
        """After the trainer saved checkpoint ``step`` in ``work_dir``: make it survive this machine."""

    @abstractmethod
    def restore_checkpoint(self, job_id: str, work_dir: Path) -> int | None:
        """Into an empty ``work_dir``: the latest complete checkpoint of the job; its step, or None."""

    def remove_work(self, job_id: str) -> None:
        """A job succeeded or was deleted: its local work dir and its stored checkpoints go."""
        shutil.rmtree(self.data_dir / "work" / job_id, ignore_errors=True)


class LocalStore(ArtifactStore):
    """Keys are folders under the data dir (the embedded mode and a shared volume); a job's work dir
    is itself durable there, so checkpoints need no copy."""

    def path(self, key: str) -> Path:
        return (self.data_dir / key).resolve()

    def publish_dir(self, local_dir: Path, key: str) -> None:
        """A rename (staging is on the data dir's file system); it fails if the key is taken."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        local_dir.rename(target)

    def local_copy(self, key: str) -> Path:
        return self.path(key)

    def read_bytes(self, key: str, name: str) -> bytes | None:
        try:
            return (self.path(key) / name).read_bytes()
        except OSError:
            return None

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def remove(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def save_checkpoint(self, job_id: str, work_dir: Path, step: int) -> None:
        return None

    def restore_checkpoint(self, job_id: str, work_dir: Path) -> int | None:
        return None


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes)."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url.strip())
    if not match:
        raise ValueError(f"RETUNE_ARTIFACT_URL: expected s3://bucket/prefix or empty, got {url!r}")
    return match.group(1), match.group(2).strip("/")


class S3Store(ArtifactStore):
    """Any S3-compatible store through boto3, which reads the standard AWS variables itself
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).

    Layout: ``prefix/KEY/MANIFEST`` = {"version", "files": {relative path: bytes}}, files under
    ``prefix/KEY/VERSION/``. The cache (LRU by last use, at most ``cache_bytes``) is hand-written
    because boto3 and s3fs cache only listings, not whole folders keyed by a manifest version.
    """

    def __init__(self, data_dir: Path, url: str, cache_bytes: int) -> None:
        import boto3

        super().__init__(data_dir)
        self.bucket, self.prefix = parse_url(url)
        self.client = boto3.client("s3")
        self.cache_dir = data_dir / "cache" / "artifacts"  # beside HF_HOME=data_dir/cache/huggingface (image)
        self.cache_bytes = cache_bytes
        self._fetched: dict[str, Path] = {}
        self._small: dict[tuple[str, str], bytes | None] = {}
        self._lock = threading.Lock()

    def _object(self, key: str, *rest: str) -> str:
        return "/".join(part for part in (self.prefix, key, *rest) if part)

    def manifest(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object(key, MANIFEST))["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(body.read())

    def _upload(self, files: list[Path], root: Path, key: str) -> None:
        """Files first, under a version nobody reads yet; the manifest last (the publish)."""
        version = uuid.uuid4().hex
        listed = {}
        for path in files:
            relative = path.relative_to(root).as_posix()
            self.client.upload_file(str(path), self.bucket, self._object(key, version, relative))
            listed[relative] = path.stat().st_size
        previous = self.manifest(key)
        body = json.dumps({"version": version, "files": listed}).encode()
        self.client.put_object(Bucket=self.bucket, Key=self._object(key, MANIFEST), Body=body)
        if previous:
            self._delete_prefix(self._object(key, previous["version"]) + "/")

    def publish_dir(self, local_dir: Path, key: str) -> None:
        self._upload([p for p in sorted(local_dir.rglob("*")) if p.is_file()], local_dir, key)
        shutil.rmtree(local_dir, ignore_errors=True)

    def local_copy(self, key: str) -> Path:
        known = self._fetched.get(key)
        if known is not None and known.is_dir():
            os.utime(known)  # last use, for the LRU
            return known
        manifest = self.manifest(key)
        if manifest is None:
            return self.cache_dir / "missing" / key
        entry = self.cache_dir / f"{key.replace('/', '__')}--{manifest['version']}"
        if not entry.is_dir():
            self._download(key, manifest, entry)
        os.utime(entry)
        self._fetched[key] = entry
        self._evict(keep=entry)
        return entry

    def _download(self, key: str, manifest: dict[str, Any], entry: Path) -> None:
        """Into a private folder, then renamed into place: a concurrent reader sees all or nothing."""
        scratch = self.cache_dir / "tmp" / uuid.uuid4().hex
        for relative in manifest["files"]:
            target = scratch / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self._object(key, manifest["version"], relative), str(target))
        entry.parent.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            scratch.rename(entry)
        except OSError:  # another process or thread won the race; its copy is the same version
            shutil.rmtree(scratch, ignore_errors=True)

    def _evict(self, keep: Path) -> None:
        """Least recently used copies go until the cache fits its bound (never the one just asked for)."""
        with self._lock:
            entries = [p for p in self.cache_dir.iterdir() if p.is_dir() and "--" in p.name]
            sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in entries}
            total = sum(sizes.values())
            for entry in sorted(entries, key=lambda p: p.stat().st_mtime):
                if total <= self.cache_bytes:
                    break
                if entry != keep:
                    shutil.rmtree(entry, ignore_errors=True)
                    total -= sizes[entry]

    def read_bytes(self, key: str, name: str) -> bytes | None:
        if (key, name) in self._small:
            return self._small[(key, name)]
        manifest = self.manifest(key)
        data = None
        if manifest is not None and name in manifest["files"]:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._object(key, manifest["version"], name))
            data = obj["Body"].read()
        if manifest is not None:  # a published key never changes: remember the answer
            self._small[(key, name)] = data
        return data

    def exists(self, key: str) -> bool:
        return self.manifest(key) is not None

    def _delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            if objects := [{"Key": o["Key"]} for o in page.get("Contents", [])]:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def remove(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object(key, MANIFEST))  # invisible first
        self._delete_prefix(self._object(key) + "/")
        if (cached := self._fetched.pop(key, None)) is not None:
            shutil.rmtree(cached, ignore_errors=True)
        self._small = {known: data for known, data in self._small.items() if known[0] != key}

    def _checkpoints(self, job_id: str) -> list[int]:
        """Steps of the job's complete (manifested) checkpoints in the store."""
        prefix = self._object(work_key(job_id)) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        pattern = re.compile(re.escape(prefix + CHECKPOINT_PREFIX) + r"(\d+)/" + re.escape(MANIFEST))
        return sorted(
            int(match.group(1))
            for page in pages
            for o in page.get("Contents", [])
            if (match := pattern.fullmatch(o["Key"]))
        )

    def save_checkpoint(self, job_id: str, work_dir: Path, step: int) -> None:
        self._upload(checkpoint_files(work_dir, step), work_dir, checkpoint_key(job_id, step))
        for older in self._checkpoints(job_id):
            if older != step:
                self.remove(checkpoint_key(job_id, older))

    def restore_checkpoint(self, job_id: str, work_dir: Path) -> int | None:
        for step in reversed(self._checkpoints(job_id)):
            manifest = self.manifest(checkpoint_key(job_id, step))
            if manifest is None:
                continue
            staged = work_dir.parent / f".{work_dir.name}-{uuid.uuid4().hex}"
            self._download(checkpoint_key(job_id, step), manifest, staged)
            shutil.rmtree(work_dir, ignore_errors=True)  # what is there has no checkpoint: useless
            staged.rename(work_dir)
            return step
        return None

    def remove_work(self, job_id: str) -> None:
        super().remove_work(job_id)
        self._delete_prefix(self._object(work_key(job_id)) + "/")


@lru_cache
def _store(data_dir: Path, url: str, cache_bytes: int) -> ArtifactStore:
    return S3Store(data_dir, url, cache_bytes) if url else LocalStore(data_dir)


def get_store(settings: Settings) -> ArtifactStore:
    """The store ``RETUNE_ARTIFACT_URL`` names (empty: the data dir), one per process and configuration."""
    return _store(settings.data_dir, settings.artifact_url, settings.artifact_cache_bytes)
