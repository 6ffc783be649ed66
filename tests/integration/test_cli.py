"""The `retune` command-line client, run as a subprocess against the real service (API + worker).

Each call is a fresh `python -m app.client` process with its own HOME / XDG_CONFIG_HOME, as a user would run it.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from app.client.exit_codes import ExitCode, job_exit_code
from tests.integration.conftest import ADMIN_KEY, ROOT, Service
from tests.integration.test_end_to_end import TINY_EMBEDDER

# One backend: the CLI is a face over the HTTP API, whose backends are covered elsewhere.
pytestmark = pytest.mark.parametrize("service", ["embedded"], indirect=True)


class Cli:
    """Runs `python -m app.client ARGS` with a private config dir and no inherited RETUNE_URL / RETUNE_API_KEY."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if k not in {"RETUNE_URL", "RETUNE_API_KEY"}}
        self.env |= {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), "COLUMNS": "200", "NO_COLOR": "1"}

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "retune" / "config.json"

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 600):
        return subprocess.run(
            [sys.executable, "-m", "app.client", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,  # no controlling terminal: a prompt reads stdin
        )

    def json(self, *args: str, **kwargs):
        run = self(*args, "--json", **kwargs)
        assert run.returncode == 0, (args, run.stdout, run.stderr)
        return json.loads(run.stdout)


@pytest.fixture(scope="module")
def cli(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A CLI logged in to ``service`` with the admin key (the key taken from RETUNE_API_KEY)."""
    cli = Cli(tmp_path_factory.mktemp(f"cli-{service.backend}"))
    run = cli("login", service.url, env={"RETUNE_API_KEY": ADMIN_KEY})
    assert run.returncode == 0, run.stderr
    return cli


@pytest.fixture(scope="module")
def scifact_folder(scifact_zip: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scifact-folder")
    zipfile.ZipFile(io.BytesIO(scifact_zip)).extractall(root)
    return root / "scifact-slice"


@pytest.mark.integration
def test_login_stores_the_key_0600_and_a_wrong_key_is_refused(service: Service, tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    wrong = cli("login", service.url, env={"RETUNE_API_KEY": "rt_wrong"})
    assert wrong.returncode == ExitCode.ERROR
    assert "invalid or revoked API key" in wrong.stderr and "401" in wrong.stderr
    assert not cli.config_file.exists()
    assert cli("datasets", "list").returncode == ExitCode.ERROR  # not logged in

    prompted = cli("login", service.url, stdin=ADMIN_KEY + "\n")  # no RETUNE_API_KEY: the key is prompted for
    assert prompted.returncode == 0, prompted.stderr
    assert stat.S_IMODE(cli.config_file.stat().st_mode) == 0o600
    assert json.loads(cli.config_file.read_text()) == {"url": service.url, "key": ADMIN_KEY}
    assert isinstance(cli.json("datasets", "list"), list)


@pytest.mark.integration
@pytest.mark.slow
def test_upload_folder_train_watch_index_search(cli: Cli, scifact_folder: Path) -> None:
    dataset = cli.json("datasets", "upload", str(scifact_folder), "--name", "cli-scifact")
    assert dataset["format"] == "beir" and dataset["stats"]["qrels"]["test"]["queries"] == 20
    assert dataset["id"] in {d["id"] for d in cli.json("datasets", "list")}
    assert cli.json("datasets", "show", dataset["id"])["stats"] == dataset["stats"]

    params = [f"--param={k}={json.dumps(v)}" for k, v in TINY_EMBEDDER.items()]
    run = cli("jobs", "create", "--kind", "embedder", "--dataset", dataset["id"], "--eval-split", "test", *params,
              "--watch", "--interval", "0.5")  # fmt: skip
    jobs = cli.json("jobs", "list")
    job = next(j for j in jobs if j["dataset_id"] == dataset["id"])
    assert job["status"] == "succeeded", (job, run.stderr)
    assert run.returncode == job_exit_code(job) == (ExitCode.OK if job["better_than_base"] else ExitCode.NOT_BETTER)
    assert f"job {job['id']} succeeded" in run.stdout
    assert "evaluations" in run.stdout and "ndcg@10" in run.stdout and "test" in run.stdout, run.stdout
    shown = cli.json("jobs", "show", job["id"])
    assert (shown["id"], shown["status"], shown["model_id"]) == (job["id"], "succeeded", job["model_id"])
    watched = cli("jobs", "watch", job["id"], "--json")  # an ended job: the same code, the API's JSON
    assert watched.returncode == run.returncode and json.loads(watched.stdout)["id"] == job["id"]

    index = cli.json("indexes", "create", "--dataset", dataset["id"], "--model", job["model_id"], "--wait")
    assert index["status"] == "ready" and index["num_docs"] == dataset["stats"]["docs"]
    alias = cli.json("aliases", "set", "cli-alias", index["id"])
    assert alias["index_id"] == index["id"]

    query = "Vitamin D deficiency increases the risk of infection"
    hits = cli.json("search", "cli-alias", query, "--top-k", "3")["results"]
    assert len(hits) == 3
    table = cli("search", index["id"], query, "--top-k", "3")
    assert table.returncode == 0, table.stderr
    assert all(h["doc_id"] in table.stdout for h in hits), table.stdout


@pytest.mark.integration
def test_bad_inputs_show_the_api_message(cli: Cli, tmp_path: Path, scifact_zip: bytes) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"query": "q", "pos": ["a"], "neg": []}\n{not json\n')
    run = cli("datasets", "upload", str(bad))
    assert run.returncode == ExitCode.ERROR and "train.jsonl" in run.stderr and "line 2" in run.stderr, run.stderr

    archive = tmp_path / "slice.zip"
    archive.write_bytes(scifact_zip)
    dataset = cli.json("datasets", "upload", str(archive))
    run = cli("jobs", "create", "--kind", "embedder", "--dataset", dataset["id"], "--param", "epochs=many")
    assert run.returncode == ExitCode.ERROR and "params.epochs" in run.stderr and "422" in run.stderr, run.stderr
    run = cli("jobs", "create", "--kind", "embedder", "--dataset", dataset["id"], "--param", "epochs")
    assert run.returncode == ExitCode.USAGE and "KEY=VALUE" in run.stderr, run.stderr

    read_key = cli.json("keys", "create", "--name", "cli-reader", "--scope", "read")
    assert read_key["id"] in {k["id"] for k in cli.json("keys", "list")}
    run = cli("--key", read_key["key"], "jobs", "create", "--kind", "embedder", "--dataset", dataset["id"])
    assert run.returncode == ExitCode.ERROR and "needs 'write'" in run.stderr and "403" in run.stderr, run.stderr
    assert cli.json("keys", "revoke", read_key["id"])["revoked_at"]

    run = cli("datasets", "show", "no-such-dataset")
    assert run.returncode == ExitCode.ERROR and "not found" in run.stderr and "404" in run.stderr, run.stderr
    assert cli("datasets", "delete", dataset["id"]).returncode == 0
    assert dataset["id"] not in {d["id"] for d in cli.json("datasets", "list")}


@pytest.mark.integration
def test_cancel_then_watch_exits_with_the_cancelled_code(cli: Cli, tmp_path: Path, scifact_zip: bytes) -> None:
    archive = tmp_path / "slice.zip"
    archive.write_bytes(scifact_zip)
    dataset = cli.json("datasets", "upload", str(archive))
    job = cli.json("jobs", "create", "--kind", "embedder", "--dataset", dataset["id"], "--param", "epochs=3")
    assert job["status"] == "queued"
    cancelled = cli.json("jobs", "cancel", job["id"])
    assert cancelled["id"] == job["id"] and cancelled["status"] in {"cancelled", "cancelling"}
    run = cli("jobs", "watch", job["id"], "--interval", "0.5")
    assert run.returncode == ExitCode.JOB_CANCELLED, (run.stdout, run.stderr)
    assert f"job {job['id']} cancelled" in run.stdout
    again = cli("jobs", "cancel", job["id"])
    assert again.returncode == ExitCode.ERROR and "already cancelled" in again.stderr and "409" in again.stderr
