// The photo viewer (a video plays from its best moment): the full photo, its file name, path and fields (the EXIF date among them), "more like
// this", previous/next with the buttons or the arrow keys, Escape (or a click beside the photo) to close.
"use strict";

import { call, clock, element, fileName } from "./api.js";

const $ = (id) => document.getElementById(id);
let photos = []; // [{id, path}] of the list the viewer steps through
let at = 0;
let similar = null; // called with a photo's id by "More like this"
let returnFocus = null;
let shown = 0; // the latest photo asked for: details of an earlier one arriving late are dropped

export function openViewer(list, index, onSimilar) {
  photos = list;
  similar = onSimilar;
  returnFocus = document.activeElement;
  $("viewer").hidden = false;
  document.body.classList.add("viewing");
  show(index);
  $("viewer-close").focus();
}

export function closeViewer() {
  if ($("viewer").hidden) return;
  $("viewer").hidden = true;
  $("viewer-img").removeAttribute("src");
  stopVideo();
  document.body.classList.remove("viewing");
  if (returnFocus && document.contains(returnFocus)) returnFocus.focus();
}

async function show(index) {
  at = Math.min(Math.max(index, 0), photos.length - 1);
  const photo = photos[at];
  const token = ++shown;
  $("viewer").dataset.id = photo.id;
  const video = photo.t != null;
  $("viewer-img").hidden = video;
  $("viewer-video").hidden = !video;
  if (video) playFrom(photo);
  else {
    stopVideo();
    $("viewer-img").src = `/api/items/${photo.id}/photo`;
  }
  $("viewer-img").alt = fileName(photo.path);
  $("viewer-name").textContent = (fileName(photo.path) || `photo ${photo.id}`)
    + (photo.t != null ? ` at ${clock(photo.t)}` : "");
  $("viewer-path").textContent = photo.path || "";
  $("viewer-fields").replaceChildren();
  $("viewer-prev").disabled = at === 0;
  $("viewer-next").disabled = at === photos.length - 1;
  $("viewer-similar").hidden = !similar;
  try {
    const item = await call(`/api/items/${photo.id}`);
    if (token === shown) showFields(item.fields || {});
  } catch (err) {
    if (token === shown) $("viewer-fields").append(element("dd", "error", err.message));
  }
}

// A video plays from its moment: the server serves the file in ranges, the media fragment seeks to the time.
function playFrom(moment) {
  const player = $("viewer-video");
  player.poster = `/api/items/${moment.id}/thumbnail?size=1024`;
  player.src = `/api/items/${moment.id}/video#t=${moment.t}`;
  player.play().catch(() => {}); // autoplay may be refused: the controls are there
}

function stopVideo() {
  const player = $("viewer-video");
  player.pause();
  player.removeAttribute("src");
  player.load();
}

function showFields(fields) {
  const list = $("viewer-fields");
  const { taken, ...rest } = fields;
  const rows = taken ? [["taken", new Date(taken).toLocaleString()], ...Object.entries(rest)] : Object.entries(rest);
  for (const [key, value] of rows) {
    list.append(element("dt", "", key), element("dd", "", String(value)));
  }
}

function step(by) {
  const next = at + by;
  if (next >= 0 && next < photos.length) show(next);
}

$("viewer-close").addEventListener("click", closeViewer);
$("viewer-prev").addEventListener("click", () => step(-1));
$("viewer-next").addEventListener("click", () => step(1));
$("viewer-similar").addEventListener("click", () => {
  const id = photos[at].id;
  closeViewer();
  similar(id);
});
$("viewer").addEventListener("click", (e) => { if (e.target === e.currentTarget) closeViewer(); });
document.addEventListener("keydown", (e) => {
  if ($("viewer").hidden || e.altKey || e.ctrlKey || e.metaKey) return;
  if (e.key === "Escape") closeViewer();
  else if (e.key === "ArrowLeft") step(-1);
  else if (e.key === "ArrowRight") step(1);
  else return;
  e.preventDefault();
});
