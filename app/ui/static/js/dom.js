// Small DOM helpers: elements are built with textContent (never innerHTML), so API text cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const fmt = {
  num: (v, digits = 4) => (v === null || v === undefined ? "" : Number(v).toFixed(digits)),
  time: (iso) => (iso ? new Date(iso).toLocaleString() : ""),
  bytes: (n) => (n === null || n === undefined ? "" : n > 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`),
  duration: (seconds) => {
    if (!Number.isFinite(seconds) || seconds < 0) return "";
    const s = Math.round(seconds);
    return s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
  },
};

export function statusBadge(status) {
  return h("span", { class: `status ${status}` }, status);
}

/** The verdict a job or model carries: `verdict` when the API gives one, else the older `better_than_base`. */
export function verdictBadge(item) {
  let text = item.verdict;
  if (text && typeof text === "object") {
    // {metric, delta, ci_low, ci_high, result}: the result and the paired change with its 95% interval.
    const signed = (x) => (x >= 0 ? "+" : "") + x.toFixed(3);
    text = `${text.result.replace("_", " ")} (${text.metric} ${signed(text.delta)}, ${signed(text.ci_low)}..${signed(text.ci_high)})`;
  }
  if (!text && item.better_than_base !== null && item.better_than_base !== undefined) {
    text = item.better_than_base ? "better" : "not better";
  }
  if (!text) return "";
  return h("span", { class: `status verdict ${/not|worse/.test(text) ? "worse" : /better/.test(text) ? "better" : ""}` }, text);
}

export function errorBox(id) {
  return h("div", { class: "error", role: "alert", "data-error": id });
}

/** Show an error (the API's message) in a box; an empty message clears it. */
export function showError(box, err) {
  box.textContent = err ? err.message || String(err) : "";
}

/** A button for a write action: disabled with the API's refusal as its reason when the key may not write. */
export function writeButton(state, label, onclick, cls = "") {
  const denied = !state.canWrite;
  return h("button", { class: cls, onclick, disabled: denied, title: denied ? state.writeDenied : undefined }, label);
}
