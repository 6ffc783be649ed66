// Datasets: drag-and-drop upload with progress, their stats, delete.

import { del, get, upload } from "../api.js";
import { errorBox, fmt, h, showError, writeButton } from "../dom.js";

function qrelsText(stats) {
  const qrels = stats.qrels || {};
  return Object.entries(qrels).map(([split, s]) => `${split}: ${s.queries} q / ${s.pairs} pairs`).join(", ");
}

function datasetRow(state, ds, refresh, error) {
  const remove = async () => {
    if (!confirm(`Delete dataset ${ds.name}?`)) return;
    try { await del(`/datasets/${ds.id}`); await refresh(); } catch (err) { showError(error, err); }
  };
  const s = ds.stats || {};
  return h("tr", { dataset: { id: ds.id } },
    h("td", {}, ds.name, h("div", { class: "muted" }, ds.id)), h("td", {}, ds.format),
    h("td", { class: "num" }, s.docs ?? s.passages ?? ""), h("td", { class: "num" }, s.queries ?? ""),
    h("td", {}, qrelsText(s)), h("td", {}, fmt.time(ds.created_at)),
    h("td", {}, writeButton(state, "Delete", remove, "danger")));
}

function uploadForm(state, refresh) {
  const error = errorBox("upload");
  const bar = h("div", { id: "upload-bar" });
  const progress = h("span", { class: "progress", hidden: true }, bar);
  const percent = h("span", { class: "muted", id: "upload-percent" });
  const name = h("input", { type: "text", id: "dataset-name", placeholder: "name (optional)" });
  const file = h("input", { type: "file", id: "dataset-file", accept: ".zip,.jsonl,.tar.gz,.tgz", disabled: !state.canWrite });
  const send = async (chosen) => {
    if (!chosen) return;
    showError(error, null);
    const form = new FormData();
    form.append("file", chosen);
    if (name.value.trim()) form.append("name", name.value.trim());
    progress.hidden = false;
    const onProgress = (share) => { bar.style.width = `${Math.round(share * 100)}%`; percent.textContent = `${Math.round(share * 100)}%`; };
    try {
      await upload("/datasets", form, onProgress);
      percent.textContent = `uploaded ${chosen.name}`;
      await refresh();
    } catch (err) {
      percent.textContent = "";
      showError(error, err);
    }
  };
  file.addEventListener("change", () => send(file.files[0]));
  const drop = h("div", { class: "drop", id: "drop" }, "Drop a .zip (BEIR folder) or .jsonl here, or choose: ", file);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (state.canWrite) send(e.dataTransfer.files[0]); });
  const denied = state.canWrite ? null : h("p", { class: "denied" }, state.writeDenied);
  return h("section", { class: "card" }, h("h3", {}, "Upload"), denied, h("div", { class: "row" }, name), drop,
    h("div", { class: "row" }, progress, percent), error);
}

export async function datasetsView(state) {
  const error = errorBox("datasets");
  const body = h("tbody", { id: "datasets" });
  const refresh = async () => {
    const rows = await get("/datasets");
    body.replaceChildren(...rows.map((ds) => datasetRow(state, ds, refresh, error)));
  };
  await refresh();
  return h("div", {}, h("h2", {}, "Datasets"), uploadForm(state, refresh),
    h("table", {}, h("thead", {}, h("tr", {}, ...["name", "format", "docs", "queries", "qrels", "created", ""].map((t) => h("th", {}, t)))), body), error);
}
