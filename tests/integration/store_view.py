"""What a test sees of a service's artifact store, read from outside the service.

On the local store that is folders under the data dir; on S3 it is the bucket's objects, read with
boto3 in Retune's layout (``PREFIX/KEY/manifest.json`` names a version, files under
``PREFIX/KEY/VERSION/``), so a test asserts the layout a reader depends on, not Retune's own reader.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class LocalView:
    """Artifacts as folders under the data dir (the embedded layout)."""

    kind = "local"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def ids(self, kind: str) -> list[str]:
        """Every id stored under ``kind/`` (``datasets``, ``models``, ``indexes``)."""
        folder = self.data_dir / kind
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def exists(self, key: str) -> bool:
        return (self.data_dir / key).exists()

    def leftovers(self, key: str) -> list[str]:
        """Anything stored under ``key`` (a removed artifact must leave nothing)."""
        root = self.data_dir / key
        return sorted(str(p) for p in root.rglob("*")) if root.is_dir() else ([str(root)] if root.exists() else [])

    def read_text(self, key: str, name: str) -> str:
        return (self.data_dir / key / name).read_text()

    def folder(self, key: str) -> Path:
        return self.data_dir / key


class S3View:
    """Artifacts as objects under ``s3://bucket/prefix`` (the production layout)."""

    kind = "s3"

    def __init__(self, env: Mapping[str, str]) -> None:
        import boto3

        self.bucket, _, self.prefix = env["RETUNE_ARTIFACT_URL"].removeprefix("s3://").partition("/")
        self.client = boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
        )  # fmt: skip
        self._downloads = Path(tempfile.mkdtemp(prefix="retune-s3-view-"))

    def _objects(self, under: str) -> list[str]:
        listing = self.client.get_paginator("list_objects_v2")
        pages = listing.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/{under}")
        return [o["Key"].removeprefix(f"{self.prefix}/") for page in pages for o in page.get("Contents", [])]

    def _manifest(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}/{MANIFEST}")["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(body.read())

    def ids(self, kind: str) -> list[str]:
        """Every id with an object under ``kind/``, published (with a manifest) or not: a refused upload
        must leave no files at all, not only no manifest."""
        return sorted({name.split("/")[1] for name in self._objects(f"{kind}/")})

    def exists(self, key: str) -> bool:
        return self._manifest(key) is not None

    def leftovers(self, key: str) -> list[str]:
        return self._objects(f"{key}/")

    def read_text(self, key: str, name: str) -> str:
        manifest = self._manifest(key)
        assert manifest is not None and name in manifest["files"], (key, name, manifest)
        obj = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}/{manifest['version']}/{name}")
        return obj["Body"].read().decode()

    def folder(self, key: str) -> Path:
        """The artifact's files downloaded into a folder of this test process, once per manifest version
        (a published key is never rewritten)."""
        manifest = self._manifest(key)
        assert manifest is not None, f"{key} is not published"
        target = self._downloads / f"{key.replace('/', '__')}--{manifest['version']}"
        if target.is_dir():
            return target
        scratch = Path(tempfile.mkdtemp(dir=self._downloads))
        for relative in manifest["files"]:
            path = scratch / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, f"{self.prefix}/{key}/{manifest['version']}/{relative}", str(path))
        scratch.rename(target)  # whole or not there: a failed download is not taken for the model
        return target


def store_view(env: Mapping[str, str], data_dir: Path) -> LocalView | S3View:
    """The view of the store a service started with ``env`` uses."""
    return S3View(env) if env.get("RETUNE_ARTIFACT_URL") else LocalView(data_dir)
