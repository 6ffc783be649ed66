// Search: an index (or alias), an optional reranker, a threshold slider; each hit's first-stage, reranker and final scores.

import { get, post } from "../api.js";
import { errorBox, fmt, h, showError } from "../dom.js";

function resultRow(hit, rank) {
  return h("tr", { dataset: { doc: hit.doc_id } },
    h("td", { class: "num" }, rank + 1), h("td", {}, hit.doc_id), h("td", {}, (hit.text || "").slice(0, 300)),
    h("td", { class: "num" }, fmt.num(hit.recall_score)), h("td", { class: "num" }, fmt.num(hit.rerank_score)),
    h("td", { class: "num" }, fmt.num(hit.fused_score)), h("td", { class: "num" }, h("strong", {}, fmt.num(hit.score))));
}

function thresholdControl() {
  const on = h("input", { type: "checkbox", id: "use-threshold" });
  const slider = h("input", { type: "range", id: "threshold", min: "0", max: "1", step: "0.01", value: "0.5", disabled: true });
  const shown = h("span", { id: "threshold-value", class: "muted" }, "off");
  const sync = () => { slider.disabled = !on.checked; shown.textContent = on.checked ? slider.value : "off"; };
  on.addEventListener("change", sync);
  slider.addEventListener("input", sync);
  return { element: h("label", {}, h("span", { class: "name" }, "threshold"), on, slider, shown), value: () => (on.checked ? Number(slider.value) : null) };
}

export async function searchView() {
  const [indexes, aliases, models] = await Promise.all([get("/indexes"), get("/aliases"), get("/models")]);
  const error = errorBox("search");
  const target = h("select", { id: "search-index" },
    ...aliases.map((a) => h("option", { value: a.name }, `alias ${a.name} -> ${a.index_id}`)),
    ...indexes.filter((i) => i.status === "ready").map((i) => h("option", { value: i.id }, `${i.id} (${i.num_docs} docs)`)));
  const reranker = h("select", { id: "search-reranker" }, h("option", { value: "" }, "no reranker"),
    ...models.filter((m) => m.kind === "reranker").map((m) => h("option", { value: m.id }, `${m.name} (${m.id})`)));
  const query = h("input", { type: "text", id: "search-query", placeholder: "a question", style: "min-width:30rem" });
  const topK = h("input", { type: "number", id: "search-top-k", value: "10", min: "1" });
  const recallK = h("input", { type: "number", id: "search-recall-k", value: "100", min: "1" });
  const threshold = thresholdControl();
  const results = h("tbody", { id: "results" });
  const meta = h("p", { class: "muted", id: "search-meta" });
  const form = h("form", { id: "search-form" },
    h("label", {}, h("span", { class: "name" }, "index or alias"), target), h("label", {}, h("span", { class: "name" }, "reranker"), reranker),
    h("label", {}, h("span", { class: "name" }, "query"), query), h("label", {}, h("span", { class: "name" }, "top k"), topK),
    h("label", {}, h("span", { class: "name" }, "recall k"), recallK), threshold.element, h("button", { type: "submit", id: "search-button" }, "Search"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(error, null);
    const body = { index_id: target.value, query: query.value, top_k: Number(topK.value), recall_k: Number(recallK.value) };
    if (reranker.value) body.reranker_id = reranker.value;
    if (threshold.value() !== null) body.threshold = threshold.value();
    const started = performance.now();
    try {
      const answer = await post("/search", body);
      results.replaceChildren(...answer.results.map(resultRow));
      meta.textContent = `${answer.results.length} results from index ${answer.index_id} in ${Math.round(performance.now() - started)} ms`;
    } catch (err) {
      results.replaceChildren();
      meta.textContent = "";
      showError(error, err);
    }
  });
  return h("div", {}, h("h2", {}, "Search"), h("section", { class: "card" }, form), meta,
    h("table", {}, h("thead", {}, h("tr", {}, ...["#", "doc", "text", "first stage", "reranker (logit)", "fused", "final score"].map((t) => h("th", {}, t)))), results));
}
