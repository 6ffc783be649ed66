// Indexes and aliases: build an index (status polled while it builds), point an alias at an index.

import { get, post, put } from "../api.js";
import { poll } from "../app.js";
import { errorBox, fmt, h, showError, statusBadge, writeButton } from "../dom.js";

function indexRow(index) {
  return h("tr", { dataset: { index: index.id } },
    h("td", {}, index.id), h("td", {}, statusBadge(index.status)), h("td", {}, index.dataset_id), h("td", {}, index.model_id),
    h("td", {}, index.index_type), h("td", { class: "num" }, index.num_docs ?? ""), h("td", { class: "num" }, index.dim ?? ""),
    h("td", { class: "num" }, fmt.bytes(index.memory_bytes)), h("td", { class: "error" }, index.error || ""));
}

const options = (items, label) => items.map((i) => h("option", { value: i.id }, label(i)));

function buildForm(state, datasets, models) {
  const error = errorBox("build-index");
  const dataset = h("select", { id: "index-dataset" }, ...options(datasets, (d) => `${d.name} (${d.id})`));
  const model = h("select", { id: "index-model" }, ...options(models.filter((m) => m.kind === "embedder"), (m) => `${m.name} (${m.id})`));
  const type = h("select", { id: "index-type" }, ...["auto", "flat", "hnsw", "ivf"].map((t) => h("option", { value: t }, t)));
  const build = async () => {
    showError(error, null);
    try { await post("/indexes", { dataset_id: dataset.value, model_id: model.value, index_type: type.value }); } catch (err) { showError(error, err); }
  };
  const button = writeButton(state, "Build index", build);
  button.id = "build-index";
  return h("section", { class: "card" }, h("h3", {}, "Build an index"),
    h("div", { class: "row" }, dataset, model, type, button), state.canWrite ? null : h("p", { class: "denied" }, state.writeDenied), error);
}

function aliasForm(state, indexes, refresh) {
  const error = errorBox("alias");
  const name = h("input", { type: "text", id: "alias-name", placeholder: "alias name" });
  const index = h("select", { id: "alias-index" }, ...options(indexes.filter((i) => i.status === "ready"), (i) => i.id));
  const set = async () => {
    showError(error, null);
    try { await put(`/aliases/${encodeURIComponent(name.value.trim())}`, { index_id: index.value }); await refresh(); } catch (err) { showError(error, err); }
  };
  const button = writeButton(state, "Point alias here", set);
  button.id = "set-alias";
  return h("section", { class: "card" }, h("h3", {}, "Switch an alias"), h("div", { class: "row" }, name, index, button), error);
}

export async function indexesView(state) {
  const [datasets, models] = await Promise.all([get("/datasets"), get("/models")]);
  const error = errorBox("indexes");
  const body = h("tbody", { id: "indexes" });
  const aliasBody = h("tbody", { id: "aliases" });
  const aliasBox = h("div");
  let readyIds = "";
  const refresh = async () => {
    const [indexes, aliases] = await Promise.all([get("/indexes"), get("/aliases")]);
    body.replaceChildren(...indexes.map(indexRow));
    aliasBody.replaceChildren(...aliases.map((a) => h("tr", {}, h("td", {}, a.name), h("td", {}, a.index_id), h("td", {}, fmt.time(a.updated_at)))));
    const ready = indexes.filter((i) => i.status === "ready").map((i) => i.id).join(",");
    if (ready !== readyIds) { readyIds = ready; aliasBox.replaceChildren(aliasForm(state, indexes, refresh)); }  // keep typed input otherwise
  };
  poll(async () => { try { await refresh(); showError(error, null); } catch (err) { showError(error, err); } });
  return h("div", {}, h("h2", {}, "Indexes"), buildForm(state, datasets, models),
    h("table", {}, h("thead", {}, h("tr", {}, ...["index", "status", "dataset", "model", "type", "docs", "dim", "memory", "error"].map((t) => h("th", {}, t)))), body),
    error, h("h3", {}, "Aliases"), h("table", {}, h("thead", {}, h("tr", {}, ...["alias", "index", "updated"].map((t) => h("th", {}, t)))), aliasBody), aliasBox);
}
