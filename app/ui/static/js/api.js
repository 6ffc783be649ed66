// The API client: every call sends the session's key as a Bearer header; errors carry the API's own message.

const KEY = "retune.key";

export class ApiError extends Error {
  constructor(status, body) {
    super(errorMessage(status, body));
    this.status = status;
    this.body = body;
    this.field = errorField(body);
  }
}

/** The API's sentence: `detail` as a string, or FastAPI's validation list joined into one. */
export function errorMessage(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

/** The dotted path of the first bad field: the `field` key, else the `params.x` the message names. */
export function errorField(body) {
  if (!body) return null;
  if (typeof body.field === "string" && body.field) return body.field;
  const detail = body.detail;
  if (Array.isArray(detail) && detail.length) return (detail[0].loc || []).filter((p) => p !== "body").join(".");
  if (typeof detail === "string") {
    const match = detail.match(/\b(params(?:\.[A-Za-z_][\w]*)+)/);
    if (match) return match[1];
  }
  return null;
}

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
};

function headers(extra = {}) {
  const h = { ...extra };
  if (session.key) h.Authorization = `Bearer ${session.key}`;
  return h;
}

async function parse(response) {
  const text = await response.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return { detail: text }; }
}

export async function api(method, path, body, key) {
  const init = { method, headers: headers(body === undefined ? {} : { "content-type": "application/json" }) };
  if (key !== undefined) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const data = await parse(response);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);
export const put = (path, body) => api("PUT", path, body);
export const del = (path) => api("DELETE", path);

/** An upload with progress: fetch cannot report upload progress, XMLHttpRequest's upload.onprogress can. */
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (session.key) xhr.setRequestHeader("Authorization", `Bearer ${session.key}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let data = null;
      try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { data = { detail: xhr.responseText }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data));
    };
    xhr.onerror = () => reject(new ApiError(0, { detail: "network error: the service did not answer" }));
    xhr.send(formData);
  });
}

/** A download behind the Bearer header: fetched as a blob, then saved (a plain link cannot send the key). */
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw new ApiError(response.status, await parse(response));
  const disposition = response.headers.get("content-disposition") || "";
  const named = disposition.match(/filename="?([^";]+)"?/);
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: named ? named[1] : filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * The key's scope, found by asking rather than guessing: GET /keys answers only an admin key; for the others
 * POST /jobs with an empty body is refused with 403 before validation for a read key, and with 422 for a write key
 * (nothing is created either way). The read key's 403 message is the API's own, shown beside disabled controls.
 */
export async function probeScope(key) {
  try {
    await api("GET", "/keys", undefined, key);
    return { scope: "admin" };
  } catch (err) {
    if (err.status !== 403) throw err;
  }
  try {
    await api("POST", "/jobs", {}, key);
    return { scope: "write" };
  } catch (err) {
    if (err.status === 403) return { scope: "read", writeDenied: err.message };
    if (err.status === 422 || err.status === 400) return { scope: "write" };
    throw err;
  }
}
