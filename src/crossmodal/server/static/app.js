// The search page: text, dropped/pasted/picked photos, "more like this", filters and paging,
// all through the JSON API of the same server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { mode: null, text: "", itemId: null, file: null, offset: 0 };

function pageSize() { return parseInt($("k").value, 10); }
function kind() { return $("kind").value; }
function whereList() {
  return $("where").value.split(",").map((s) => s.trim()).filter(Boolean);
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

async function run() {
  const k = pageSize();
  let data;
  try {
    setStatus("Searching…");
    if (state.mode === "text") {
      data = await call("/api/search", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: state.text, k, offset: state.offset, kind: kind(),
                               path: $("path").value || null, where: whereList() }),
      });
    } else if (state.mode === "similar") {
      data = await call("/api/search", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ image_id: state.itemId, k, offset: state.offset, kind: kind(),
                               path: $("path").value || null, where: whereList() }),
      });
    } else if (state.mode === "photo") {
      const form = new FormData();
      form.append("file", state.file);
      form.append("k", k);
      form.append("offset", state.offset);
      form.append("kind", kind());
      if ($("path").value) form.append("path", $("path").value);
      data = await call("/api/search/image", { method: "POST", body: form });
    } else {
      return;
    }
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  render(data);
}

function render(data) {
  const results = $("results");
  results.replaceChildren();
  results.classList.toggle("texts", kind() === "text");
  for (const hit of data.results) {
    if (hit.kind === "image") {
      const card = document.createElement("article");
      card.className = "card";
      card.tabIndex = 0;
      card.dataset.id = hit.id;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.src = hit.thumbnail;
      img.alt = hit.path ? hit.path.split("/").pop() : `item ${hit.id}`;
      const meta = document.createElement("div");
      meta.className = "meta";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = img.alt;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      meta.append(name, score);
      card.append(img, meta);
      card.addEventListener("click", () => similar(hit.id, hit.thumbnail));
      card.addEventListener("keydown", (e) => { if (e.key === "Enter") similar(hit.id, hit.thumbnail); });
      results.append(card);
    } else {
      const row = document.createElement("div");
      row.className = "text-hit";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      row.append(score, document.createTextNode(hit.text));
      results.append(row);
    }
  }
  const n = data.results.length;
  setStatus(n ? `Results ${data.offset + 1}–${data.offset + n} (${data.took_ms.toFixed(0)} ms)` : "No results.");
  $("pager").hidden = n === 0 && data.offset === 0;
  $("prev").disabled = data.offset === 0;
  $("next").disabled = n < data.k;
  $("page-label").textContent = `page ${Math.floor(data.offset / data.k) + 1}`;
}

function showQuery(html) {
  const card = $("query-card");
  card.hidden = !html;
  card.replaceChildren();
  if (html) card.append(...html);
}

function similar(id, thumbnail) {
  Object.assign(state, { mode: "similar", itemId: id, offset: 0 });
  const img = document.createElement("img");
  img.src = thumbnail;
  img.alt = "query photo";
  showQuery([img, document.createTextNode(`More like #${id}`)]);
  window.scrollTo({ top: 0, behavior: "smooth" });
  run();
}

function searchPhoto(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus("That is not an image file.", true);
    return;
  }
  Object.assign(state, { mode: "photo", file, offset: 0 });
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  img.alt = "query photo";
  showQuery([img, document.createTextNode(`Photos like ${file.name || "the pasted image"}`)]);
  run();
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("q").value.trim();
  if (!text) { setStatus("Type what you are looking for, or drop a photo.", true); return; }
  Object.assign(state, { mode: "text", text, offset: 0 });
  showQuery(null);
  run();
});
$("file").addEventListener("change", (e) => searchPhoto(e.target.files[0]));
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - pageSize()); run(); });
$("next").addEventListener("click", () => { state.offset += pageSize(); run(); });
for (const id of ["kind", "k", "path", "where"]) {
  $(id).addEventListener("change", () => { state.offset = 0; run(); });
}
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
