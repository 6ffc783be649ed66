"""`retune datasets|models|indexes|keys|aliases ...`: one sub-command per endpoint, output via `show`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app.client.api import ApiError
from app.client.context import JsonOpt, as_archive, get_api
from app.client.endpoints import delete_item, show_item, show_list
from app.client.output import console, print_json, show
from app.client.transfer import download, upload

datasets = typer.Typer(help="Upload, list, show and delete datasets.", no_args_is_help=True)
models = typer.Typer(help="List, download and upload models.", no_args_is_help=True)
indexes = typer.Typer(help="Build and list search indexes.", no_args_is_help=True)
keys = typer.Typer(help="Create, list and revoke API keys (admin scope).", no_args_is_help=True)
aliases = typer.Typer(help="Point names at indexes.", no_args_is_help=True)


def _dataset_row(ds: dict[str, Any]) -> dict[str, Any]:
    stats = ds.get("stats") or {}
    splits = ",".join(stats.get("qrels", {}))
    return {**ds, "docs": stats.get("docs"), "queries": stats.get("queries"), "splits": splits}


@datasets.command("upload")
def datasets_upload(
    path: Annotated[Path, typer.Argument(help="A .jsonl file, a .zip/.tar.gz of a BEIR folder, or the folder itself.")],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: the file name).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a dataset; a folder is zipped on the fly."""
    api = get_api()
    with as_archive(path, "zip") as file:
        body = upload(api, "/datasets", file, {"name": name} if name else {}, quiet=as_json)
    show(body, as_json, title="dataset")


@datasets.command("list")
def datasets_list(as_json: JsonOpt = False) -> None:
    columns = ["id", "name", "format", "docs", "queries", "splits", "created_at"]
    show_list("/datasets", as_json, columns, _dataset_row)


@datasets.command("show")
def datasets_show(dataset_id: str, as_json: JsonOpt = False) -> None:
    show_item("GET", f"/datasets/{dataset_id}", as_json, "dataset")


@datasets.command("delete")
def datasets_delete(dataset_id: str, as_json: JsonOpt = False) -> None:
    delete_item(f"/datasets/{dataset_id}", "dataset", dataset_id, as_json)


@models.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    columns = ["id", "name", "kind", "source", "better_than_base", "created_at"]
    show_list("/models", as_json, columns)


@models.command("show")
def models_show(model_id: str, as_json: JsonOpt = False) -> None:
    show_item("GET", f"/models/{model_id}", as_json, "model")


@models.command("download")
def models_download(
    model_id: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: ID.FORMAT).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="tar.gz or zip.")] = "tar.gz",
    as_json: JsonOpt = False,
) -> None:
    """Download a model folder (sentence-transformers format) as an archive."""
    target = output or Path(f"{model_id.replace('/', '_')}.{fmt}")
    path = download(get_api(), f"/models/{model_id}/download", target, {"format": fmt}, quiet=as_json)
    info = {"model_id": model_id, "path": str(path), "bytes": path.stat().st_size}
    if as_json:
        print_json(info)
    else:
        console.print(f"wrote {path} ({info['bytes']} bytes)", highlight=False)


@models.command("upload")
def models_upload(
    path: Annotated[Path, typer.Argument(help="A .tar.gz/.zip of a sentence-transformers folder, or the folder.")],
    name: Annotated[str | None, typer.Option(help="Model name.")] = None,
    kind: Annotated[str | None, typer.Option(help="embedder or reranker (checked by the service).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a model archive as a base model; a folder is archived on the fly."""
    form = {k: v for k, v in {"name": name, "kind": kind}.items() if v}
    with as_archive(path, "gztar") as file:
        body = upload(get_api(), "/models", file, form, quiet=as_json)
    show(body, as_json, title="model")


@indexes.command("create")
def indexes_create(
    dataset: Annotated[str, typer.Option(help="Dataset id whose corpus is indexed.")],
    model: Annotated[str, typer.Option(help="Embedder model id.")],
    index_type: Annotated[str, typer.Option("--type", help="auto, flat, hnsw or ivf.")] = "auto",
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the index is ready (or failed).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --wait.")] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Build an index of a dataset's corpus; exit 1 if, with --wait, the build fails."""
    api = get_api()
    index = api.json("POST", "/indexes", json={"dataset_id": dataset, "model_id": model, "index_type": index_type})
    while wait and index["status"] == "building":
        time.sleep(interval)
        index = api.json("GET", f"/indexes/{index['id']}")
    show(index, as_json, title="index")
    if wait and index["status"] != "ready":
        raise ApiError(f"index {index['id']} {index['status']}: {index.get('error')}")


@indexes.command("list")
def indexes_list(as_json: JsonOpt = False) -> None:
    columns = ["id", "status", "model_id", "index_type", "num_docs", "created_at"]
    show_list("/indexes", as_json, columns)


@indexes.command("show")
def indexes_show(index_id: str, as_json: JsonOpt = False) -> None:
    show_item("GET", f"/indexes/{index_id}", as_json, "index")


@keys.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")],
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "read",
    as_json: JsonOpt = False,
) -> None:
    """Create a key; the key itself is shown once."""
    show_item("POST", "/keys", as_json, "key (shown once)", json={"name": name, "scope": scope})


@keys.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    show_list("/keys", as_json, ["id", "name", "prefix", "scope", "created_at", "revoked_at"])


@keys.command("revoke")
def keys_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    show_item("DELETE", f"/keys/{key_id}", as_json, "revoked key")


@aliases.command("set")
def aliases_set(name: str, index_id: str, as_json: JsonOpt = False) -> None:
    """Point alias NAME at index INDEX_ID (an atomic switch for searches using the alias)."""
    show_item("PUT", f"/aliases/{name}", as_json, "alias", json={"index_id": index_id})


@aliases.command("list")
def aliases_list(as_json: JsonOpt = False) -> None:
    show_list("/aliases", as_json, ["name", "index_id", "updated_at"])
