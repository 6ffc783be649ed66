"""`retune jobs watch`: poll the job and its metric points, draw a progress bar, then the evaluation table."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app.client.api import ApiClient, ApiError
from app.client.output import console, err_console

FINAL_STATUSES = {"succeeded", "failed", "cancelled"}
RETRIES = 30  # consecutive failed polls (service unreachable or 503) tolerated before the watch gives up
PointKey = tuple[int, str, str]  # (step, split, name)


class MetricPoller:
    """Fetches only new points where the service honours ``after_step`` and still works where it ignores it.

    It asks from the last step seen (points of that step may still be arriving) and keeps points by
    (step, split, name), so a repeated point is stored once either way.
    """

    def __init__(self, api: ApiClient, job_id: str) -> None:
        self.api = api
        self.job_id = job_id
        self.points: dict[PointKey, dict[str, Any]] = {}

    def poll(self) -> None:
        last_step = max((k[0] for k in self.points), default=None)
        params = {"after_step": last_step - 1} if last_step is not None else None
        body = self.api.json("GET", f"/jobs/{self.job_id}/metrics", params=params)
        for point in body["points"]:
            self.points[(point["step"], point["split"], point["name"])] = point

    def latest_loss(self) -> float | None:
        losses = [(k[0], p["value"]) for k, p in self.points.items() if k[2] == "loss"]
        return max(losses)[1] if losses else None


def evaluation_rows(points: dict[PointKey, dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    """(split, metric, base, latest) for every evaluated metric: base is its first step (step 0), latest its last."""
    series: dict[tuple[str, str], dict[int, float]] = {}
    for (step, split, name), point in points.items():
        if split == "train":
            continue
        series.setdefault((split, name), {})[step] = point["value"]
    rows = []
    for (split, name), values in sorted(series.items()):
        first, last = min(values), max(values)
        rows.append((split, name, values[first], values[last]))
    return rows


def evaluation_table(points: dict[PointKey, dict[str, Any]]) -> Table:
    table = Table(title="evaluations (base = step 0)")
    for name in ("split", "metric"):
        table.add_column(name, no_wrap=True)
    for name in ("base", "latest", "change"):
        table.add_column(name, justify="right", no_wrap=True)
    for split, metric, base, latest in evaluation_rows(points):
        change = latest - base
        style = "green" if change > 0 else "red" if change < 0 else ""
        table.add_row(split, metric, f"{base:.4f}", f"{latest:.4f}", f"[{style}]{change:+.4f}[/]" if style else "0")
    return table


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=err_console,
    )


def poll_job(api: ApiClient, poller: MetricPoller, interval: float) -> dict[str, Any]:
    """The job and its new metric points; a restart or outage of the service (503, refused connection) is waited out."""
    failures = 0
    while True:
        try:
            job = api.json("GET", f"/jobs/{poller.job_id}")
            poller.poll()
            return job
        except ApiError as exc:
            failures += 1
            if exc.status_code not in (None, 502, 503, 504) or failures > RETRIES:
                raise
            err_console.print(f"retrying: {exc}", highlight=False, markup=False, soft_wrap=True)
            time.sleep(interval)


def watch_job(api: ApiClient, job_id: str, interval: float = 1.0, quiet: bool = False) -> dict[str, Any]:
    """Poll until the job ends; with ``quiet`` (``--json``) draw nothing. Returns the final job."""
    poller = MetricPoller(api, job_id)
    with _progress() as progress:
        task = progress.add_task("queued", total=None, loss="-", visible=not quiet)
        while True:
            job = poll_job(api, poller, interval)
            loss = poller.latest_loss()
            progress.update(
                task,
                description=job["status"],
                completed=job.get("step") or 0,
                total=job.get("total_steps"),
                loss="-" if loss is None else f"{loss:.4f}",
            )
            if job["status"] in FINAL_STATUSES:
                break
            time.sleep(interval)
    if not quiet:
        console.print(evaluation_table(poller.points))
        print_outcome(job)
    return job


def print_outcome(job: dict[str, Any]) -> None:
    verdict = job.get("verdict")
    better = job.get("better_than_base")
    line = f"job {job['id']} {job['status']}"
    if job.get("model_id"):
        line += f"; model {job['model_id']}"
    if verdict is not None:
        line += f"; verdict {verdict}"
    elif better is not None:
        line += "; better than base" if better else "; not better than base"
    if job.get("error"):
        line += f"; error: {job['error']}"
    console.print(line, highlight=False, soft_wrap=True)
