// Talking to the server's JSON API: one call() for every request, the API key for writes when the server
// asks for one (kept for this tab only), and the file name shown for a stored path.
"use strict";

const KEY = "crossmodal-api-key";

export async function call(url, options = {}) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.detail || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// A write (e.g. DELETE): sent with the key this tab was given; on a 401 the user is asked for it once.
export async function write(url, options = {}) {
  const send = () => call(url, { ...options, headers: { ...(options.headers || {}), ...keyHeader() } });
  try {
    return await send();
  } catch (err) {
    if (err.status !== 401) throw err;
    const key = window.prompt("This server needs its API key for changes:");
    if (!key) throw err;
    sessionStorage.setItem(KEY, key);
    return send();
  }
}

function keyHeader() {
  const key = sessionStorage.getItem(KEY);
  return key ? { "X-API-Key": key } : {};
}

export function fileName(path) {
  return path ? path.split("/").pop() : "";
}

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A time in a video as people write it: 75.5 -> "1:15".
export function clock(seconds) {
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
