// The new-job form's params, built from the API's own schema (/openapi.json components.schemas.EmbedderParams,
// RerankerParams, MiningParams, ServingBackendParams) with their defaults; without those schemas, a JSON textarea.

import { h } from "./dom.js";

const SCHEMA_BY_KIND = {
  embedder: "EmbedderParams", reranker: "RerankerParams", mine_negatives: "MiningParams", serving_backend: "ServingBackendParams",
};
let openapi = null;

export async function paramsSchema(kind) {
  if (!openapi) {
    const response = await fetch("/openapi.json");
    openapi = response.ok ? await response.json() : {};
  }
  return ((openapi.components || {}).schemas || {})[SCHEMA_BY_KIND[kind]] || null;
}

/** A property's own type: `$ref`s followed, `Optional[X]` (anyOf with null) read as X. */
function resolve(prop) {
  let p = prop;
  if (p.$ref) p = { ...(openapi.components.schemas[p.$ref.split("/").pop()] || {}), ...p };
  const options = p.anyOf || p.oneOf;
  if (options) {
    const real = options.filter((o) => o.type !== "null");
    if (real.length === 1) return { ...resolve(real[0]), ...p, anyOf: undefined, oneOf: undefined, nullable: true };
    return { ...p, type: "json" };
  }
  if (p.allOf && p.allOf.length === 1) return { ...resolve(p.allOf[0]), ...p, allOf: undefined };
  return p;
}

export function fieldBox(path, label, input, help) {
  return h("div", { class: "field", dataset: { field: path } },
    h("label", {}, h("span", { class: "name" }, label), input),
    help ? h("div", { class: "help" }, help) : null,
    h("div", { class: "field-error", dataset: { errorFor: path } }));
}

function inputFor(name, prop) {
  const attrs = { name, id: `param-${name}`, dataset: { param: name } };
  const value = prop.default;
  if (prop.enum) {
    return h("select", attrs, ...prop.enum.map((v) => h("option", { value: v, selected: v === value }, String(v))));
  }
  if (prop.type === "boolean") return h("input", { ...attrs, type: "checkbox", checked: value === true });
  if (prop.type === "integer" || prop.type === "number") {
    return h("input", { ...attrs, type: "number", step: prop.type === "integer" ? "1" : "any",
      value: value ?? "", min: prop.minimum ?? prop.exclusiveMinimum, max: prop.maximum ?? prop.exclusiveMaximum });
  }
  if (prop.type === "string") return h("input", { ...attrs, type: "text", value: value ?? "" });
  return h("input", { ...attrs, type: "text", dataset: { param: name, json: "1" }, value: value === undefined ? "" : JSON.stringify(value) });
}

/** The params part of the form: one field per schema property, or one JSON textarea. */
export function paramsFields(schema) {
  if (!schema) {
    const area = h("textarea", { id: "params-json", name: "params" }, "{}");
    return { element: fieldBox("params", "params (JSON)", area, "This API publishes no params schema: give params as JSON."), read: () => readJson(area) };
  }
  const props = Object.entries(schema.properties || {}).map(([name, prop]) => [name, resolve(prop)]);
  const fields = props.map(([name, prop]) => [name, prop, inputFor(name, prop)]);
  const element = h("div", { class: "grid", id: "params-fields" },
    ...fields.map(([name, prop, input]) => fieldBox(`params.${name}`, prop.title || name, input, prop.description)));
  return { element, read: () => readFields(fields) };
}

function readJson(area) {
  try {
    const value = JSON.parse(area.value || "{}");
    if (value && typeof value === "object" && !Array.isArray(value)) return value;
  } catch { /* reported below */ }
  throw Object.assign(new Error("params must be a JSON object"), { field: "params" });
}

/** Only the values a person changed are sent: the API's defaults stay the API's. */
function readFields(fields) {
  const params = {};
  for (const [name, prop, input] of fields) {
    let value;
    if (input.type === "checkbox") value = input.checked;
    else if (input.value === "") continue;
    else if (input.dataset.json) {
      try { value = JSON.parse(input.value); } catch { throw Object.assign(new Error(`params.${name}: not valid JSON`), { field: `params.${name}` }); }
    } else if (input.type === "number") value = Number(input.value);
    else value = input.value;
    if (JSON.stringify(value) !== JSON.stringify(prop.default)) params[name] = value;
  }
  return params;
}

/** Show an error at its field: the exact path, else its nearest enclosing field (params.x.y -> params.x -> params). */
export function showFieldError(form, err, fallback) {
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
  fallback.textContent = "";
  if (!err) return;
  let path = err.field || "";
  while (path) {
    const box = form.querySelector(`[data-error-for="${CSS.escape(path)}"]`);
    if (box) {
      box.textContent = err.message;
      box.closest(".field").classList.add("invalid");
      return;
    }
    path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
  }
  fallback.textContent = err.message;
}
