// The search page: text, dropped/pasted/picked photos, "more like this", filters, paging and the duplicates
// view, all through the JSON API of the same server. The query, filters and page live in the address
// (Back and Forward work, a search can be shared or bookmarked); a photo search keeps its photo in memory.
"use strict";

import { call, clock, element, fileName } from "./api.js";
import { showDuplicates } from "./duplicates.js";
import { closeViewer, openViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const DEFAULTS = { kind: "image", k: "24" };
const DIVERSE = "0.5"; // MMR's lambda when "Spread out near-copies" is ticked
// A condition starts where a comma is followed by KEY and an operator: "near=48.8,2.3,5" stays whole.
const NEXT_CONDITION = /,\s*(?=[A-Za-z_][\w.]*\s*(?:!=|<=|>=|=|<|>))/;

let upload = null; // {n, file}: the photo of the latest photo search (a file cannot live in the address)
let uploads = 0;
let shownMode = null; // the kind of search on screen: text, like, photo, duplicates, or null
let latest = 0; // the latest request: answers to earlier ones are dropped
const names = new Map(); // item id -> stored path, for "More like <name>"

history.scrollRestoration = "manual";

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

function whereList(text) {
  return (text || "").split(NEXT_CONDITION).map((s) => s.trim()).filter(Boolean);
}

function put(params, key, value, fallback = "") {
  if (value && value !== fallback) params.set(key, value);
  else params.delete(key);
}

// The address's parameters with the filter controls' values (defaults left out).
function withFilters(params) {
  put(params, "kind", $("kind").value, DEFAULTS.kind);
  put(params, "k", $("k").value, DEFAULTS.k);
  put(params, "path", $("path").value.trim());
  put(params, "where", $("where").value.trim());
  put(params, "diverse", $("diverse").checked ? DIVERSE : "");
  put(params, "both", $("both").checked ? "1" : "");
  return params;
}

function showFilters(params) {
  $("kind").value = params.get("kind") || DEFAULTS.kind;
  $("k").value = params.get("k") || DEFAULTS.k;
  $("path").value = params.get("path") || "";
  $("where").value = params.get("where") || "";
  $("diverse").checked = params.has("diverse");
  $("both").checked = params.has("both");
  if (["path", "where", "diverse", "both"].some((key) => params.has(key))) $("filters").open = true;
}

function navigate(params, replace = false) {
  const url = params.toString() ? `?${params}` : location.pathname;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  load();
}

function modeOf(params) {
  if (params.get("view") === "duplicates") return "duplicates";
  if (params.has("q")) return "text";
  if (params.has("like")) return "like";
  if (params.has("photo")) return "photo";
  return null;
}

// Show what the address says: the controls, then the search or view it names.
function load() {
  closeViewer();
  const params = new URLSearchParams(location.search);
  showFilters(params);
  const mode = modeOf(params);
  if (mode === "text") $("q").value = params.get("q");
  if (mode !== shownMode) { // a new kind of search: the old results and query go
    clearScreen();
    if (mode !== "text") $("q").value = "";
  }
  shownMode = mode;
  $("duplicates").hidden = mode !== "duplicates";
  $("duplicates-link").classList.toggle("current", mode === "duplicates");
  $("results").hidden = mode === "duplicates";
  document.title = titleOf(params, mode);
  const token = ++latest;
  if (mode === "duplicates") {
    showDuplicates(params.get("threshold"), { setStatus, view, isCurrent: () => token === latest });
  } else if (mode) {
    search(params, mode, token);
  } else {
    setStatus("");
  }
}

function titleOf(params, mode) {
  const what = { text: params.get("q"), like: "more like this", photo: "photo search", duplicates: "duplicates" };
  return mode ? `${what[mode]} – crossmodal` : "crossmodal search";
}

function clearScreen() {
  $("results").replaceChildren();
  $("groups").replaceChildren();
  $("pager").hidden = true;
  showQuery(null);
}

async function search(params, mode, token) {
  const k = parseInt(params.get("k") || DEFAULTS.k, 10);
  const page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
  const options = {
    k, offset: (page - 1) * k, kind: params.get("kind") || DEFAULTS.kind, path: params.get("path") || null,
    where: whereList(params.get("where")), diverse: params.has("diverse") ? parseFloat(params.get("diverse")) : null,
  };
  setStatus("Searching…");
  let data;
  try {
    if (mode === "text") {
      // both text towers: an English query read twice, better ranked (a text query's option only)
      data = await searchJson({ text: params.get("q"), ...options, both_towers: params.has("both") || null });
    } else if (mode === "like") {
      const id = parseInt(params.get("like"), 10);
      showLike(id);
      data = await searchJson({ image_id: id, ...options });
    } else {
      if (!upload || String(upload.n) !== params.get("photo")) {
        fail("A photo search cannot be repeated from the address: drop, paste or pick the photo again.");
        return;
      }
      showPhoto(upload.file);
      data = await call("/api/search/image", { method: "POST", body: photoForm(upload.file, options) });
    }
  } catch (err) {
    if (token === latest) fail(err.message);
    return;
  }
  if (token !== latest) return;
  render(data, options.kind);
  window.scrollTo(0, 0);
}

function searchJson(body) {
  return call("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify(body) });
}

function photoForm(file, options) {
  const form = new FormData();
  form.append("file", file);
  for (const [key, value] of Object.entries(options)) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== null && one !== undefined) form.append(key, one);
    }
  }
  return form;
}

// An error replaces the results it would otherwise leave standing.
function fail(message) {
  $("results").replaceChildren();
  $("pager").hidden = true;
  setStatus(message, true);
}

function render(data, kind) {
  const results = $("results");
  results.replaceChildren();
  results.classList.toggle("texts", kind === "text");
  const photos = data.results.filter((hit) => hit.kind === "image");
  for (const hit of data.results) {
    if (hit.path) names.set(hit.id, hit.path);
    results.append(hit.kind === "image" ? card(hit, photos) : textRow(hit));
  }
  const n = data.results.length;
  const read = understood(data.understood);
  setStatus((n ? `Results ${data.offset + 1}–${data.offset + n} (${data.took_ms.toFixed(0)} ms)` : "No results.")
    + (read ? ` · read: ${read}` : ""));
  $("pager").hidden = n === 0 && data.offset === 0;
  $("prev").disabled = data.offset === 0;
  $("next").disabled = n < data.k;
  $("page-label").textContent = `page ${Math.floor(data.offset / data.k) + 1}`;
}

function card(hit, photos) {
  const name = fileName(hit.path) || `item ${hit.id}`;
  const article = element("article", "card");
  article.tabIndex = 0;
  article.dataset.id = hit.id;
  article.title = name;
  const img = element("img");
  img.loading = "lazy";
  img.src = hit.thumbnail;
  img.alt = name;
  const meta = element("div", "meta");
  meta.append(element("span", "name", name), element("span", "score", hit.score.toFixed(3)));
  article.append(img, meta);
  if (hit.t != null) { // a video, shown by its best moment's frame: the time is on it
    article.classList.add("video");
    article.append(element("span", "moment", clock(hit.t)));
  }
  const about = whenAndWhere(hit.fields || {});
  if (about) article.append(element("div", "about", about));
  const open = () => view(photos, photos.indexOf(hit));
  article.addEventListener("click", open);
  article.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  return article;
}

// The day a photo was taken and where (its EXIF date, its place name): "2023-06-14 · Paris, France".
function whenAndWhere(fields) {
  const place = [fields.city, fields.country].filter(Boolean).join(", ");
  return [fields.taken ? String(fields.taken).slice(0, 10) : "", place].filter(Boolean).join(" · ");
}

// What the server read from the query's words: "2023 → taken 2023 (filter)".
function understood(notes) {
  return (notes || []).map((n) => `${n.words} → ${n.field} ${n.value} (${n.as === "filter" ? "filter" : "ignored"})`)
    .join("; ");
}

function textRow(hit) {
  const row = element("div", "text-hit");
  row.append(element("span", "score", hit.score.toFixed(3)), document.createTextNode(hit.text));
  return row;
}

function view(photos, index) {
  openViewer(photos, index, similar);
}

function showQuery(parts) {
  const card = $("query-card");
  card.hidden = !parts;
  card.replaceChildren(...(parts || []));
}

function queryImage(src) {
  const img = element("img");
  img.src = src;
  img.alt = "query photo";
  return img;
}

async function showLike(id) {
  const label = element("span", "", names.has(id) ? `More like ${fileName(names.get(id))}` : "More like this photo");
  showQuery([queryImage(`/api/items/${id}/thumbnail`), label]);
  if (!names.has(id)) {
    const item = await call(`/api/items/${id}`).catch(() => null);
    if (item && item.path) {
      names.set(id, item.path);
      label.textContent = `More like ${fileName(item.path)}`;
    }
  }
}

function showPhoto(file) {
  showQuery([queryImage(URL.createObjectURL(file)),
             element("span", "", `Photos like ${file.name || "the pasted image"}`)]);
}

function similar(id) {
  const params = withFilters(new URLSearchParams());
  params.set("like", id);
  navigate(params);
}

function searchPhoto(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus("That is not an image file.", true);
    return;
  }
  upload = { n: ++uploads, file };
  const params = withFilters(new URLSearchParams());
  params.set("photo", upload.n);
  navigate(params);
}

function goToPage(by) {
  const params = new URLSearchParams(location.search);
  const page = Math.max(1, (parseInt(params.get("page") || "1", 10) || 1) + by);
  put(params, "page", String(page), "1");
  navigate(params);
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("q").value.trim();
  if (!text) { setStatus("Type what you are looking for, or drop a photo.", true); return; }
  const params = withFilters(new URLSearchParams());
  params.set("q", text);
  navigate(params);
});
$("file").addEventListener("change", (e) => { searchPhoto(e.target.files[0]); e.target.value = ""; });
$("prev").addEventListener("click", () => goToPage(-1));
$("next").addEventListener("click", () => goToPage(1));
for (const id of ["kind", "k", "path", "where", "diverse", "both"]) {
  $(id).addEventListener("change", () => {
    if (shownMode === "duplicates") return; // filters apply to searches
    const params = withFilters(new URLSearchParams(location.search));
    params.delete("page");
    navigate(params, !shownMode); // a filter set before any search is no new history entry
  });
}
$("duplicates-link").addEventListener("click", (e) => {
  e.preventDefault();
  navigate(new URLSearchParams({ view: "duplicates" }));
});
$("duplicates-form").addEventListener("submit", (e) => {
  e.preventDefault();
  navigate(new URLSearchParams({ view: "duplicates", threshold: $("threshold").value }));
});
document.querySelector(".brand").addEventListener("click", (e) => {
  e.preventDefault();
  navigate(new URLSearchParams());
});
window.addEventListener("popstate", load);
document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) { e.preventDefault(); searchPhoto(file); }
});
let dragDepth = 0;
document.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; $("drop-overlay").hidden = false; });
document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop-overlay").hidden = true; } });
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("drop-overlay").hidden = true;
  searchPhoto(e.dataTransfer.files[0]);
});
load();
