"""The `retune` client's pure parts: --param parsing, exit codes, error messages, the saved login, the poller."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from app.client.api import ApiClient, ApiError, error_message
from app.client.config import Credentials, config_path, load_credentials, save_credentials
from app.client.context import as_archive
from app.client.exit_codes import ExitCode, job_exit_code
from app.client.params import ParamError, parse_params
from app.client.transfer import upload
from app.client.watch import MetricPoller, evaluation_rows, watch_job

ROOT = Path(__file__).resolve().parents[2]


def test_param_values_are_json_when_they_parse_else_strings() -> None:
    parsed = parse_params(
        ["epochs=1", "lr=2e-5", "fp16=true", "layers=[1, 2]", "name=my model", "seed=", "x=null", "eq=a=b"]
    )
    assert parsed == {
        "epochs": 1,
        "lr": 2e-5,
        "fp16": True,
        "layers": [1, 2],
        "name": "my model",
        "seed": "",
        "x": None,
        "eq": "a=b",
    }
    assert parse_params(None) == {}


@pytest.mark.parametrize("bad", ["epochs", "=1", " =1"])
def test_param_without_key_or_equals_is_refused(bad: str) -> None:
    with pytest.raises(ParamError, match="KEY=VALUE"):
        parse_params([bad])


@pytest.mark.parametrize(
    ("job", "code"),
    [
        ({"status": "succeeded", "better_than_base": True}, ExitCode.OK),
        ({"status": "succeeded", "better_than_base": False}, ExitCode.NOT_BETTER),
        ({"status": "succeeded", "better_than_base": None}, ExitCode.NOT_BETTER),
        ({"status": "succeeded", "verdict": {"result": "better"}, "better_than_base": False}, ExitCode.OK),
        ({"status": "succeeded", "verdict": {"result": "not_better"}, "better_than_base": True}, ExitCode.NOT_BETTER),
        ({"status": "succeeded", "verdict": {"result": "worse"}}, ExitCode.NOT_BETTER),
        ({"status": "succeeded", "kind": "mine_negatives", "better_than_base": None}, ExitCode.OK),
        ({"status": "failed", "better_than_base": True}, ExitCode.JOB_FAILED),
        ({"status": "cancelled"}, ExitCode.JOB_CANCELLED),
        ({"status": "running"}, ExitCode.ERROR),
    ],
)
def test_exit_code_per_job_outcome(job: dict, code: ExitCode) -> None:
    assert job_exit_code(job) == code


def test_exit_codes_are_distinct() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode)


def test_error_message_is_the_api_detail() -> None:
    assert error_message({"detail": "dataset 'x' not found"}, "Not Found") == "dataset 'x' not found"
    problems = [{"loc": ["body", "params", "epochs"], "msg": "Input should be a valid integer"}]
    assert error_message({"detail": problems}, "?") == "params.epochs: Input should be a valid integer"
    assert error_message("<html>", "Bad Gateway") == "Bad Gateway"


def test_login_file_has_mode_0600_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    old = os.umask(0)  # the most permissive umask: the file must still be 0600
    try:
        path = save_credentials(Credentials(url="http://h:1", key="rt_secret"))
    finally:
        os.umask(old)
    assert path == config_path() == tmp_path / "cfg" / "retune" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials() == Credentials(url="http://h:1", key="rt_secret")
    assert json.loads(path.read_text())["key"] == "rt_secret"


def _metrics_api(points: list[dict], honour_after_step: bool) -> ApiClient:
    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after_step")
        shown = [p for p in points if not honour_after_step or after is None or p["step"] > int(after)]
        return httpx.Response(200, json={"job_id": "J", "points": shown})

    api = ApiClient("http://retune.test", "rt_k")
    api.http = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    return api


@pytest.mark.parametrize("honour_after_step", [True, False])
def test_poller_keeps_each_point_once_whether_or_not_after_step_is_honoured(honour_after_step: bool) -> None:
    points = [
        {"step": 0, "split": "test", "name": "ndcg@10", "value": 0.5, "epoch": 0.0},
        {"step": 1, "split": "train", "name": "loss", "value": 2.0, "epoch": 0.5},
    ]
    poller = MetricPoller(_metrics_api(points, honour_after_step), "J")
    poller.poll()
    points += [
        {"step": 2, "split": "train", "name": "loss", "value": 1.5, "epoch": 1.0},
        {"step": 2, "split": "test", "name": "ndcg@10", "value": 0.6, "epoch": 1.0},
    ]
    poller.poll()
    poller.poll()
    assert len(poller.points) == 4
    assert poller.latest_loss() == 1.5
    assert evaluation_rows(poller.points) == [("test", "ndcg@10", 0.5, 0.6)]


def test_client_imports_without_torch_or_the_service() -> None:
    code = (
        "import sys, app.client.main; "
        "bad = [m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'app' and "
        "m.split('.')[1:2] not in ([], ['client'])]; print(bad); assert not bad"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _echo_api(tmp_path: Path) -> tuple[ApiClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        if request.url.path == "/jobs/J":
            return httpx.Response(405, json={"detail": "Method Not Allowed"})
        return httpx.Response(201, json={"bytes": len(request.content)})

    api = ApiClient("http://retune.test", "rt_k")
    api.http = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    return api, seen


def test_a_folder_is_archived_and_uploaded_whole_through_the_progress_reader(tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    lines = [json.dumps({"_id": str(i), "text": os.urandom(16).hex()}) for i in range(5000)]  # incompressible
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    api, seen = _echo_api(tmp_path)
    with as_archive(folder) as archive:
        names = zipfile.ZipFile(archive).namelist()
        assert archive.name == "beir.zip" and archive.stat().st_size > 64 * 1024  # more than one httpx chunk
        upload(api, "/datasets", archive, {"name": "n"})
        size = archive.stat().st_size
    assert sorted(names) == ["beir/", "beir/corpus.jsonl", "beir/qrels/", "beir/qrels/test.tsv"]
    assert not archive.exists()  # the temporary archive is removed
    body = seen[0].content
    assert b'filename="beir.zip"' in body and b'name="name"' in body and len(body) > size


def test_a_route_the_service_lacks_is_named() -> None:
    api, _ = _echo_api(Path())
    with pytest.raises(ApiError, match=r"this service has no DELETE /jobs/J") as caught:
        api.json("DELETE", "/jobs/J")
    assert caught.value.status_code == 405


def test_the_retune_script_entry_point_is_the_client() -> None:
    import importlib
    import tomllib

    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["retune"]
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert module.startswith("app.client.")


@pytest.mark.parametrize(("columns", "width"), [(None, 200), ("100", 100)])
def test_piped_tables_are_wide(columns: str | None, width: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | ({"COLUMNS": columns} if columns else {})
    code = "from app.client.output import console; print(console.width)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.stdout.strip() == str(width), run.stderr


def test_watch_waits_out_a_503_and_ends_with_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([503, 200, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metrics"):
            return httpx.Response(200, json={"job_id": "J", "points": []})
        code = next(answers)
        if code == 503:
            return httpx.Response(503, json={"detail": "the database is unavailable; retry shortly"})
        return httpx.Response(200, json={"id": "J", "status": "succeeded", "step": 3, "total_steps": 3})

    api = ApiClient("http://retune.test", "rt_k")
    api.http = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    job = watch_job(api, "J", interval=0.01, quiet=True)
    assert job["status"] == "succeeded" and next(answers) == 200  # one retry, one answer used


def test_watch_gives_up_on_an_error_that_is_not_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "job 'J' not found"})

    api = ApiClient("http://retune.test", "rt_k")
    api.http = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    with pytest.raises(ApiError, match="job 'J' not found"):
        watch_job(api, "J", interval=0.01, quiet=True)
