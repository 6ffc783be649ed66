"""The dashboard at /ui in a real browser (Debian's chromium, driven by Playwright) against the real service.

The whole path through the face: sign in, upload, start a tiny job from the form, watch its curves grow while it
runs, build an index, search; and bad input shown as the API's own message (wrong key, read key, bad param).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.integration.conftest import ROOT, Service
from tests.integration.test_end_to_end import TINY_EMBEDDER

CHROMIUM = Path("/usr/bin/chromium")
DOCS_IMG = ROOT / "docs" / "img"
WAIT_MS = 30_000

# One backend: the dashboard is a face over the HTTP API, whose backends are covered elsewhere.
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("service", ["embedded"], indirect=True)]


def _missing(what: str) -> None:
    """Under CI a missing browser is a failure (the dashboard would go untested), elsewhere a skip."""
    missing(f"{what}; `make test` installs it (apt-get install -y chromium; pip install playwright)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, service: Service):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=service.url)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors  # no uncaught script error on any page


def _key(service: Service, scope: str) -> str:
    created = service.client.post("/keys", json={"name": f"ui-{scope}", "scope": scope})
    assert created.status_code == 201, created.text
    return created.json()["key"]


def _sign_in(page, key: str) -> None:
    page.goto("/ui/")
    page.fill("#api-key", key)
    page.click("#signin button[type=submit]")


def _screenshot(page, tmp_path: Path, name: str) -> None:
    """Saved as a test artifact and copied to docs/img, where docs/ui.md shows it."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, DOCS_IMG / name)


def _set_params(page, params: dict) -> None:
    """Fill the params: typed fields when the API publishes their schema, else the JSON textarea."""
    if page.locator("#params-fields").count():
        for name, value in params.items():
            page.fill(f"[data-param='{name}']", str(value))
    else:
        page.fill("#params-json", json.dumps(params))


def _param_error(page, name: str):
    typed = page.locator(f"[data-error-for='params.{name}']")
    return typed if typed.count() else page.locator("[data-error-for='params']")


def test_wrong_key_and_read_key_show_the_apis_message(page, service: Service) -> None:
    _sign_in(page, "rt_not_a_key")
    error = page.locator("[data-error=signin]")
    error.wait_for()
    page.wait_for_function("document.querySelector('[data-error=signin]').textContent.length > 0")
    assert "invalid or revoked API key" in error.inner_text()
    assert page.evaluate("sessionStorage.getItem('retune.key')") is None  # a refused key is not kept

    jobs_before = len(service.client.get("/jobs").json())
    _sign_in(page, _key(service, "read"))
    page.wait_for_selector("#job-form")
    assert page.inner_text("#who").startswith("scope: read")
    assert page.is_disabled("#start-job")
    assert "needs 'write'" in page.inner_text("#job-denied")  # the API's refusal, asked for at sign-in
    # Tried anyway (a stale page, a scope changed meanwhile): the API's 403 message is shown at the form.
    page.evaluate("document.getElementById('start-job').disabled = false")
    page.click("#start-job")
    page.wait_for_function("document.querySelector('[data-error=job-form]').textContent.includes('needs')")
    assert "this key has scope 'read'" in page.inner_text("[data-error=job-form]")
    assert len(service.client.get("/jobs").json()) == jobs_before


def _upload(page, zip_path: Path) -> None:
    page.goto("/ui/#/datasets")
    page.fill("#dataset-name", "scifact-ui")
    page.set_input_files("#dataset-file", str(zip_path))
    page.wait_for_function("document.getElementById('upload-percent').textContent.startsWith('uploaded')")
    assert page.get_attribute("#upload-bar", "style") == "width: 100%;"  # upload.onprogress reached the end
    row = page.locator("#datasets tr", has_text="scifact-ui")
    assert "test: 20 q" in row.inner_text() and "train: 40 q" in row.inner_text()


def _drop_bad_jsonl(page, service: Service) -> None:
    """A file dropped on the page is uploaded; a malformed one shows the API's message and is not stored."""
    before = len(service.client.get("/datasets").json())
    bad = '{"query": "q", "pos": "not a list"}\n'
    transfer = page.evaluate_handle(
        "([text, name]) => { const t = new DataTransfer(); t.items.add(new File([text], name)); return t; }",
        [bad, "bad.jsonl"],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.querySelector('[data-error=upload]').textContent.length > 0")
    assert "bad.jsonl, line 1, field 'pos'" in page.inner_text("[data-error=upload]")
    assert len(service.client.get("/datasets").json()) == before


def _loss_points(page) -> int:
    return int(page.get_attribute("#chart-loss", "data-points"))


def _job_status(page) -> str:
    return page.inner_text("#job-summary .status")


def _watch_job(page, timeout: float = 400) -> list[int]:
    """The loss chart's point counts seen while the page said 'running' (the page polls; this only reads it)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _job_status(page)
        if status in {"succeeded", "failed", "cancelled"}:
            return seen
        if status == "running" and (not seen or seen[-1] != _loss_points(page)):
            seen.append(_loss_points(page))
        time.sleep(0.2)
    pytest.fail(f"the job page never showed the job finished; loss points seen: {seen}")


@pytest.mark.slow
def test_dashboard_upload_train_watch_index_search(page, service: Service, scifact_zip: bytes, tmp_path) -> None:
    zip_path = tmp_path / "scifact-slice.zip"
    zip_path.write_bytes(scifact_zip)
    _sign_in(page, _key(service, "write"))
    page.wait_for_selector("#job-form")
    _upload(page, zip_path)
    _drop_bad_jsonl(page, service)

    page.goto("/ui/#/jobs")
    page.wait_for_selector("#job-form")
    dataset_id = [d["id"] for d in service.client.get("/datasets").json() if d["name"] == "scifact-ui"][-1]
    page.locator("#job-dataset").select_option(value=dataset_id)
    _set_params(page, {**TINY_EMBEDDER, "batch_size": 1})  # below the bound: shown at the field
    page.click("#start-job")
    field_error = _param_error(page, "batch_size")
    page.wait_for_function("() => [...document.querySelectorAll('.field-error')].some(e => e.textContent)")
    assert "params.batch_size" in field_error.inner_text() and "2" in field_error.inner_text()
    assert page.url.endswith("#/jobs")  # nothing was started

    _set_params(page, TINY_EMBEDDER)
    page.click("#start-job")
    page.wait_for_url("**/ui/#/jobs/*")
    page.wait_for_selector("#job-summary .status")
    seen = _watch_job(page)
    assert _job_status(page) == "succeeded", page.inner_text("#job-summary")
    # The loss curve gained points while the job ran, seen at least twice, growing.
    growing = [n for n in seen if n > 0]
    assert len(growing) >= 2 and growing == sorted(growing) and growing[0] < growing[-1], seen
    job_id = page.url.split("#/jobs/")[1]
    stored = service.client.get(f"/jobs/{job_id}/metrics").json()["points"]
    assert _loss_points(page) == sum(p["name"] == "loss" for p in stored) > 0  # the chart shows every stored point
    for metric in ("ndcg-10", "recall-100", "mrr-10"):
        chart = page.locator(f"#chart-{metric}")
        assert int(chart.get_attribute("data-baselines")) >= 1  # the base model's value drawn as a line
        assert int(chart.get_attribute("data-points")) >= 2  # step 0 and the end
    page.wait_for_function("document.getElementById('job-log').textContent.length > 0")
    _screenshot(page, tmp_path, "ui-job.png")
    model_id = service.client.get(f"/jobs/{job_id}").json()["model_id"]

    page.goto("/ui/#/indexes")
    page.wait_for_selector("#build-index")
    page.locator("#index-dataset").select_option(value=dataset_id)
    page.locator("#index-model").select_option(value=model_id)
    page.click("#build-index")
    # Other tests of the session built indexes too: wait for this model's row.
    page.locator("#indexes tr", has_text=model_id).filter(has_text="ready").wait_for(timeout=180_000)

    page.goto("/ui/#/search")
    page.wait_for_selector("#search-form")
    page.fill("#search-query", "Vitamin D deficiency is associated with an increased risk of infection.")
    page.fill("#search-top-k", "5")
    page.click("#search-button")
    page.wait_for_selector("#results tr")
    rows = page.locator("#results tr")
    assert rows.count() == 5
    assert "5 results from index" in page.inner_text("#search-meta")
    first = rows.nth(0).locator("td").all_inner_texts()
    assert first[1] and float(first[3]) > 0 and float(first[6]) > 0  # doc id, first-stage and final score
    _screenshot(page, tmp_path, "ui-search.png")
