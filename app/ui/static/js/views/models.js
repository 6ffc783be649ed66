// Models: kind, origin, verdict, calibration, a download, and the model card.

import { ApiError, download, get } from "../api.js";
import { errorBox, fmt, h, showError, verdictBadge } from "../dom.js";

function calibrationText(model) {
  const c = model.calibration;
  if (c === undefined) return "";
  if (c === null) return model.calibration_reason || "none";
  if (typeof c !== "object") return String(c);
  if (c.fitted === false || c.reason) return c.reason || "not fitted";
  const ece = c.ece ?? c.test_ece;
  return [c.method, ece !== undefined ? `ECE ${fmt.num(ece, 3)}` : null].filter(Boolean).join(", ") || JSON.stringify(c);
}

/**
 * The model card hook: the card a download carries (README.md) when the API serves it on its own
 * (`card_url`, or GET /models/{id}/card); shown as text, so the card's content cannot inject markup.
 */
async function showCard(model, box) {
  box.replaceChildren(h("p", { class: "muted" }, "Loading the model card..."));
  try {
    const response = await fetch(model.card_url || `/models/${model.id}/card`, { headers: { Authorization: `Bearer ${sessionStorage.getItem("retune.key")}` } });
    if (response.status === 404) {
      box.replaceChildren(h("p", { class: "muted" }, "This API serves no model card on its own; the download contains it (README.md)."));
      return;
    }
    const text = await response.text();
    let card = text;
    try { const body = JSON.parse(text); card = body.card || body.markdown || body.text || text; } catch { /* plain text */ }
    box.replaceChildren(h("h3", {}, `Model card: ${model.name}`), h("pre", { class: "card-text", id: "model-card" }, card));
  } catch (err) {
    box.replaceChildren(h("p", { class: "error" }, err.message));
  }
}

function modelRow(model, cardBox, error) {
  const save = async () => {
    try { await download(model.download_url || `/models/${model.id}/download`, `${model.id}.tar.gz`); } catch (err) {
      showError(error, err instanceof ApiError && err.status === 404 && err.message === "Not Found" ? new Error("this API has no model download yet") : err);
    }
  };
  return h("tr", { dataset: { model: model.id } },
    h("td", {}, model.name, h("div", { class: "muted" }, model.id)), h("td", {}, model.kind),
    h("td", {}, model.source, model.base_model ? h("div", { class: "muted" }, `from ${model.base_model}`) : null,
      model.job_id ? h("div", {}, h("a", { href: `#/jobs/${model.job_id}` }, `job ${model.job_id}`)) : null),
    h("td", {}, verdictBadge(model)), h("td", {}, calibrationText(model)), h("td", {}, fmt.time(model.created_at)),
    h("td", { class: "row" }, h("button", { class: "secondary", onclick: save }, "Download"),
      h("button", { class: "secondary", onclick: () => showCard(model, cardBox) }, "Card")));
}

export async function modelsView() {
  const error = errorBox("models");
  const cardBox = h("div", { id: "card-box" });
  const models = await get("/models");
  return h("div", {}, h("h2", {}, "Models"),
    h("table", {}, h("thead", {}, h("tr", {}, ...["model", "kind", "origin", "verdict", "calibration", "created", ""].map((t) => h("th", {}, t)))),
      h("tbody", { id: "models" }, ...models.map((m) => modelRow(m, cardBox, error)))), error, cardBox);
}
