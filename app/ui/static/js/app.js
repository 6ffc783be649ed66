// The dashboard's shell: sign-in, the key's scope, hash routes, and one polling timer per page.

import { ApiError, probeScope, session } from "./api.js";
import { errorBox, h, showError } from "./dom.js";
import { datasetsView } from "./views/datasets.js";
import { indexesView } from "./views/indexes.js";
import { jobView, jobsView } from "./views/jobs.js";
import { modelsView } from "./views/models.js";
import { searchView } from "./views/search.js";

const SCOPE = "retune.scope";
const POLL_MS = 1500;
const view = document.getElementById("view");
let poller = null;

export const state = {
  get scope() { return sessionStorage.getItem(SCOPE); },
  get canWrite() { return this.scope === "write" || this.scope === "admin"; },
  get writeDenied() { return sessionStorage.getItem(`${SCOPE}.denied`) || ""; },
};

/** Run ``tick`` now and every ~1.5 s while the page shows; the next route stops it. */
export function poll(tick) {
  stopPolling();
  let busy = false;
  const run = async () => {
    if (busy) return;
    busy = true;
    try { await tick(); } finally { busy = false; }
  };
  run();
  poller = setInterval(run, POLL_MS);
}

function stopPolling() {
  if (poller) clearInterval(poller);
  poller = null;
}

function signInView() {
  const error = errorBox("signin");
  const input = h("input", { type: "password", id: "api-key", placeholder: "rt_...", autocomplete: "off" });
  const form = h("form", { class: "card", id: "signin" },
    h("h2", {}, "Sign in"),
    h("p", { class: "notice" }, "An API key (kept in this browser tab's session storage only)."),
    h("label", {}, h("span", { class: "name" }, "API key"), input), h("button", { type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(error, null);
    try {
      const found = await probeScope(input.value.trim());
      session.key = input.value.trim();
      sessionStorage.setItem(SCOPE, found.scope);
      sessionStorage.setItem(`${SCOPE}.denied`, found.writeDenied || "");
      navigate("#/jobs");
    } catch (err) {
      showError(error, err);
    }
  });
  return h("section", { class: "card" }, form);
}

function signOut() {
  session.key = null;
  sessionStorage.removeItem(SCOPE);
  sessionStorage.removeItem(`${SCOPE}.denied`);
  navigate("");
}

/** Show ``hash``'s view once: a changed hash renders through its hashchange event, the same hash here. Setting
 * the hash and also calling route() rendered the view twice at once, and the later render replaced the page
 * the user was already typing in (an error shown at the job form vanished). */
function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

const ROUTES = [
  [/^#\/datasets$/, () => datasetsView(state)],
  [/^#\/jobs\/([\w-]+)$/, (m) => jobView(state, m[1])],
  [/^#\/jobs$/, () => jobsView(state)],
  [/^#\/models$/, () => modelsView(state)],
  [/^#\/indexes$/, () => indexesView(state)],
  [/^#\/search$/, () => searchView(state)],
];

function renderHeader() {
  const who = document.getElementById("who");
  const nav = document.getElementById("nav");
  nav.hidden = !session.key;
  who.replaceChildren();
  if (session.key) who.append(`scope: ${state.scope}`, h("button", { class: "secondary", onclick: signOut }, "Sign out"));
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", location.hash.startsWith(a.getAttribute("href")));
}

export async function route() {
  stopPolling();
  renderHeader();
  if (!session.key) {
    view.replaceChildren(signInView());
    return;
  }
  const hash = location.hash || "#/jobs";
  const found = ROUTES.map(([re, make]) => [hash.match(re), make]).find(([m]) => m);
  view.replaceChildren(h("p", { class: "muted" }, "Loading..."));
  try {
    view.replaceChildren(await (found ? found[1](found[0]) : jobsView(state)));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signOut();
    const box = errorBox("page");
    showError(box, err);
    view.replaceChildren(box);
  }
}

window.addEventListener("hashchange", route);
route();
