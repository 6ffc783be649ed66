"""`retune jobs ...`: create (and watch) fine-tuning jobs; `watch` exits with a code per outcome (exit_codes.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from app.client.context import JsonOpt, get_api
from app.client.endpoints import delete_item, show_item, show_list
from app.client.exit_codes import job_exit_code
from app.client.output import console, print_json, show
from app.client.params import ParamError, parse_params
from app.client.watch import watch_job

jobs = typer.Typer(help="Create, watch, list, cancel and delete fine-tuning jobs.", no_args_is_help=True)

JOB_COLUMNS = ["id", "kind", "status", "progress", "model_id", "better", "created_at"]
IntervalOpt = Annotated[float, typer.Option(help="Seconds between polls.")]


def _job_row(job: dict[str, Any]) -> dict[str, Any]:
    progress = f"{job.get('step') or 0}/{job['total_steps']}" if job.get("total_steps") else "-"
    return {**job, "progress": progress, "better": job.get("verdict", job.get("better_than_base"))}


def _parse(option: str, items: list[str] | None) -> dict[str, Any]:
    try:
        return parse_params(items)
    except ParamError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def _watch_and_exit(job_id: str, interval: float, as_json: bool) -> None:
    job = watch_job(get_api(), job_id, interval, quiet=as_json)
    if as_json:
        print_json(job)
    raise typer.Exit(int(job_exit_code(job)))


@jobs.command("create")
def jobs_create(
    kind: Annotated[str, typer.Option(help="embedder, reranker, mine_negatives or serving_backend.")],
    dataset: Annotated[str, typer.Option(help="Dataset id to train on.")],
    base_model: Annotated[str | None, typer.Option(help="Model id, allowed folder or hub id.")] = None,
    eval_split: Annotated[str | None, typer.Option(help="A qrels split to evaluate on, e.g. test.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Training param KEY=VALUE (JSON values).")] = None,
    eval_param: Annotated[
        list[str] | None, typer.Option("--eval", help="Evaluation option KEY=VALUE, e.g. max_queries=100.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Watch it until it ends; exit code as `jobs watch`.")] = False,
    interval: IntervalOpt = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Start a fine-tuning (or negative-mining) job."""
    body: dict[str, Any] = {"kind": kind, "dataset_id": dataset, "params": _parse("--param", param)}
    evaluation = _parse("--eval", eval_param)
    if eval_split:
        evaluation["split"] = eval_split
    if evaluation:
        body["eval"] = evaluation
    if base_model:
        body["base_model"] = base_model
    job = get_api().json("POST", "/jobs", json=body)
    if not watch:
        show(job, as_json, title="job")
        return
    if not as_json:
        console.print(f"job {job['id']} {job['status']}", highlight=False)
    _watch_and_exit(job["id"], interval, as_json)


@jobs.command("watch")
def jobs_watch(job_id: str, interval: IntervalOpt = 1.0, as_json: JsonOpt = False) -> None:
    """Follow a job: progress (step/total, loss, ETA), then its evaluations against the base model.

    Exit code: 0 succeeded and better than the base, 3 failed, 4 cancelled, 5 succeeded but not better,
    1 an API error.
    """
    _watch_and_exit(job_id, interval, as_json)


@jobs.command("list")
def jobs_list(as_json: JsonOpt = False) -> None:
    show_list("/jobs", as_json, JOB_COLUMNS, _job_row)


@jobs.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    show_item("GET", f"/jobs/{job_id}", as_json, "job")


@jobs.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Ask a job to stop; a running job stops at its next step."""
    show_item("POST", f"/jobs/{job_id}/cancel", as_json, "job")


@jobs.command("retry")
def jobs_retry(job_id: str, as_json: JsonOpt = False) -> None:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    show(get_api().json("POST", f"/jobs/{job_id}/retry"), as_json, title="job")


@jobs.command("delete")
def jobs_delete(job_id: str, as_json: JsonOpt = False) -> None:
    """Delete a finished job with its metrics (the model it produced stays)."""
    delete_item(f"/jobs/{job_id}", "job", job_id, as_json)
