// Jobs: the list with live progress, the new-job form, and a job's page with live curves, events and cancel.

import { ApiError, get, post } from "../api.js";
import { poll } from "../app.js";
import { HEADLINE, LossChart, MetricChart } from "../charts.js";
import { errorBox, fmt, h, showError, statusBadge, verdictBadge, writeButton } from "../dom.js";
import { fieldBox, paramsFields, paramsSchema, showFieldError } from "../form.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

/** Seconds left: the API's `estimated_finish` when it gives one, else the step rate since the job started. */
function etaSeconds(job) {
  if (FINISHED.has(job.status)) return NaN;
  if (job.estimated_finish) return (new Date(job.estimated_finish) - Date.now()) / 1000;
  if (!job.started_at || !job.step || !job.total_steps) return NaN;
  const elapsed = (Date.now() - new Date(job.started_at)) / 1000;
  return (elapsed / job.step) * (job.total_steps - job.step);
}

function progress(job) {
  const share = job.total_steps ? Math.min(1, job.step / job.total_steps) : FINISHED.has(job.status) ? 1 : 0;
  const eta = fmt.duration(etaSeconds(job));
  return h("span", { class: "row" }, h("span", { class: "progress" }, h("div", { style: `width:${Math.round(share * 100)}%` })),
    h("span", { class: "muted", dataset: { progress: job.id } }, `${job.step} / ${job.total_steps ?? "?"}${eta ? `, ETA ${eta}` : ""}`));
}

function jobRow(job) {
  return h("tr", { dataset: { job: job.id } },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id), h("div", { class: "muted" }, job.kind)),
    h("td", {}, statusBadge(job.status)), h("td", {}, progress(job)), h("td", {}, verdictBadge(job)),
    h("td", {}, job.base_model), h("td", {}, fmt.time(job.created_at)));
}

const evalInputs = () => ({
  split: h("input", { type: "text", id: "eval-split", value: "test", placeholder: "qrels split, e.g. test" }),
  holdout_fraction: h("input", { type: "number", id: "eval-holdout", step: "any", placeholder: "e.g. 0.2 (JSONL data)" }),
  max_queries: h("input", { type: "number", id: "eval-max-queries", step: "1" }),
  max_corpus_docs: h("input", { type: "number", id: "eval-max-docs", step: "1" }),
});

function readEval(inputs) {
  const spec = {};
  for (const [name, input] of Object.entries(inputs)) {
    if (input.value.trim() === "") continue;
    spec[name] = input.type === "number" ? Number(input.value) : input.value.trim();
  }
  return spec;
}

async function newJobForm(state) {
  const [datasets, models] = await Promise.all([get("/datasets"), get("/models")]);
  const kind = h("select", { id: "job-kind" }, ...["embedder", "reranker", "mine_negatives", "serving_backend"].map((k) => h("option", { value: k }, k)));
  const dataset = h("select", { id: "job-dataset" }, ...datasets.map((d) => h("option", { value: d.id }, `${d.name} (${d.id})`)));
  const base = h("input", { type: "text", id: "job-base-model", list: "model-ids", placeholder: "default: the service's" });
  const eval_ = evalInputs();
  const paramsBox = h("div");
  const fallback = errorBox("job-form");
  let params = null;
  const renderParams = async () => {
    params = paramsFields(await paramsSchema(kind.value));
    paramsBox.replaceChildren(params.element);
  };
  kind.addEventListener("change", renderParams);
  await renderParams();
  const submit = writeButton(state, "Start job", undefined);
  submit.type = "submit";
  submit.id = "start-job";
  const form = h("form", { id: "job-form", novalidate: true },
    fieldBox("kind", "kind", kind), fieldBox("dataset_id", "dataset", dataset),
    fieldBox("base_model", "base model", base), h("datalist", { id: "model-ids" }, ...models.map((m) => h("option", { value: m.id }, m.name))),
    h("h3", {}, "Evaluation"), h("div", { class: "grid" }, ...Object.entries(eval_).map(([n, i]) => fieldBox(`eval.${n}`, n, i))),
    h("h3", {}, "Params"), paramsBox,
    h("div", { class: "row" }, submit, state.canWrite ? null : h("span", { class: "denied", id: "job-denied" }, state.writeDenied)), fallback);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showFieldError(form, null, fallback);
    try {
      const body = { kind: kind.value, dataset_id: dataset.value, params: params.read() };
      if (base.value.trim()) body.base_model = base.value.trim();
      if (kind.value !== "mine_negatives") body.eval = readEval(eval_);
      const job = await post("/jobs", body);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      showFieldError(form, err, fallback);
    }
  });
  return h("section", { class: "card" }, h("h3", {}, "New job"), form);
}

export async function jobsView(state) {
  const body = h("tbody", { id: "jobs" });
  const error = errorBox("jobs");
  const page = h("div", {}, h("h2", {}, "Jobs"),
    h("table", {}, h("thead", {}, h("tr", {}, ...["job", "status", "progress", "verdict", "base model", "created"].map((t) => h("th", {}, t)))), body),
    error, await newJobForm(state));
  poll(async () => {
    try { body.replaceChildren(...(await get("/jobs")).map(jobRow)); showError(error, null); } catch (err) { showError(error, err); }
  });
  return page;
}

/** The job's log: its events when the API has `GET /jobs/{id}/events`, else its `message` field. */
class JobLog {
  constructor(jobId) {
    this.jobId = jobId;
    this.after = null;
    this.hasEvents = true;
    this.box = h("div", { class: "log", id: "job-log" });
  }

  async update(job) {
    if (this.hasEvents) {
      try {
        const query = this.after ? `?after=${encodeURIComponent(this.after)}` : "";
        const answer = await get(`/jobs/${this.jobId}/events${query}`);
        const events = Array.isArray(answer) ? answer : answer.data || answer.events || [];
        for (const e of events) this.box.append(`${fmt.time(e.created_at)} [${e.level || e.type || "info"}] ${e.message ?? JSON.stringify(e.data)}\n`);
        if (events.length) this.after = events[events.length - 1].id;
        return;
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404 && err.message === "Not Found")) throw err;
        this.hasEvents = false;  // this API has no events route: fall back to the message
      }
    }
    this.box.textContent = [job.message, job.error].filter(Boolean).join("\n");
  }
}

function jobSummary(state, job, onCancel) {
  const cancel = FINISHED.has(job.status) ? null : writeButton(state, "Cancel", onCancel, "danger");
  if (cancel) cancel.id = "cancel-job";
  return h("div", {},
    h("div", { class: "row" }, statusBadge(job.status), progress(job), verdictBadge(job), cancel),
    h("table", {}, h("tbody", {},
      ...[["kind", job.kind], ["dataset", job.dataset_id], ["base model", job.base_model], ["model", job.model_id],
        ["output dataset", job.output_dataset_id], ["params", JSON.stringify(job.params)], ["eval", JSON.stringify(job.eval)],
        ["started", fmt.time(job.started_at)], ["finished", fmt.time(job.finished_at)], ["error", job.error]]
        .filter(([, v]) => v).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))));
}

export async function jobView(state, jobId) {
  const summary = h("div", { id: "job-summary" });
  const error = errorBox("job");
  const loss = new LossChart();
  const metrics = HEADLINE.map((m) => new MetricChart(m));
  const log = new JobLog(jobId);
  const cancel = async () => { try { await post(`/jobs/${jobId}/cancel`); } catch (err) { showError(error, err); } };
  let done = false;
  const page = h("div", {}, h("h2", {}, `Job ${jobId}`), summary, error,
    h("h3", {}, "Curves"), h("div", { class: "charts" }, loss.box, ...metrics.map((c) => c.box)),
    h("h3", {}, "Log"), log.box);
  const tick = async () => {
    if (done) return;
    try {
      const [job, { points }] = await Promise.all([get(`/jobs/${jobId}`), get(`/jobs/${jobId}/metrics`)]);
      summary.replaceChildren(jobSummary(state, job, cancel));
      loss.update(points);
      const lastStep = job.total_steps || Math.max(0, ...points.map((p) => p.step));
      for (const chart of metrics) chart.update(points, lastStep);
      await log.update(job);
      done = FINISHED.has(job.status);  // a finished job's page stops polling
    } catch (err) {
      showError(error, err);
    }
  };
  await tick();
  poll(tick);
  return page;
}
