// Requests to the server's REST API (same origin: the token cookie, if any, goes along) and the message banner.

export class HttpError extends Error {
  constructor(status, detail, data) { super(detail); this.status = status; this.data = data; }
}

export async function request(method, path, body) {
  const options = { method, headers: {} };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) { options.body = JSON.stringify(body); options.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!response.ok) {
    const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : response.statusText;
    throw new HttpError(response.status, detail, data);
  }
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const put = (path, body) => request("PUT", path, body);
export const del = (path) => request("DELETE", path);

export function say(message, kind = "error") {
  const banner = document.getElementById("banner");
  if (!message) { banner.hidden = true; return; }
  banner.textContent = message;
  banner.className = kind === "info" ? "info" : "";
  banner.hidden = false;
}

export function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot load ${url}`));
    image.src = url;
  });
}
