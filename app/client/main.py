"""The `retune` entry point: global options, `login`, `search`, and the resource sub-commands."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.client.api import ApiClient, ApiError
from app.client.config import Credentials, save_credentials
from app.client.context import JsonOpt, get_api, overrides
from app.client.exit_codes import ExitCode
from app.client.jobs import jobs
from app.client.output import clip, console, err_console, print_json, show
from app.client.resources import aliases, datasets, indexes, keys, models

app = typer.Typer(
    name="retune",
    help="Command-line client of a Retune service (fine-tune and serve retrieval models).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(datasets, name="datasets")
app.add_typer(jobs, name="jobs")
app.add_typer(models, name="models")
app.add_typer(indexes, name="indexes")
app.add_typer(keys, name="keys")
app.add_typer(aliases, name="aliases")


@app.callback()
def connection(
    url: Annotated[str | None, typer.Option(envvar="RETUNE_URL", help="Service URL (default: saved login).")] = None,
    key: Annotated[str | None, typer.Option(envvar="RETUNE_API_KEY", help="API key (default: saved login).")] = None,
) -> None:
    overrides.url, overrides.key = url, key


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="Service URL, e.g. http://127.0.0.1:8000")],
    key: Annotated[
        str, typer.Option(envvar="RETUNE_API_KEY", prompt="API key", hide_input=True, help="Default: prompted.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Check the key against the service, then save URL and key (file mode 0600) for the other commands."""
    api = ApiClient(url, key)
    api.json("GET", "/models")  # any read: a wrong or revoked key is refused here, before anything is saved
    path = save_credentials(Credentials(url=api.url, key=key))
    if as_json:
        print_json({"url": api.url, "config": str(path)})
    else:
        console.print(f"logged in to {api.url}; saved to {path}", highlight=False)


@app.command()
def search(
    index: Annotated[str, typer.Argument(help="Index id or alias.")],
    query: Annotated[str, typer.Argument(help="The query text.")],
    reranker: Annotated[str | None, typer.Option(help="Reranker model id for the second stage.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Minimum normalised score, 0..1.")] = None,
    top_k: Annotated[int, typer.Option(help="Hits to return.")] = 10,
    recall_k: Annotated[int | None, typer.Option(help="First-stage candidates (service default: 100).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search an index: a table of rank, doc id, score and text."""
    body = {"index_id": index, "query": query, "top_k": top_k, "reranker_id": reranker, "threshold": threshold}
    if recall_k is not None:
        body["recall_k"] = recall_k
    result = get_api().json("POST", "/search", json={k: v for k, v in body.items() if v is not None})
    if as_json:
        print_json(result)
        return
    hits = [{"rank": i, **hit, "text": clip(hit.get("text"))} for i, hit in enumerate(result["results"], 1)]
    show(hits, False, ["rank", "doc_id", "score", "text"], title=f"index {result['index_id']}")


def main() -> None:
    """Run the CLI; an API error prints the service's message on stderr and exits 1."""
    try:
        app(prog_name="retune")
    except ApiError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(int(ExitCode.ERROR))
    except KeyboardInterrupt:
        err_console.print("interrupted (a job being watched keeps running: `retune jobs cancel ID` stops it)")
        sys.exit(130)
