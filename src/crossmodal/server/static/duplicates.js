// The duplicates view: groups of photos that are copies of each other (largest photo first), to review in
// the viewer and remove from the collection through the API's delete.
"use strict";

import { call, element, fileName, write } from "./api.js";

const $ = (id) => document.getElementById(id);

// Show the groups at ``threshold`` (null: the server's default); ``isCurrent()`` says whether the answer is
// still wanted when it arrives.
export async function showDuplicates(threshold, { setStatus, view, isCurrent }) {
  $("threshold").value = threshold || "";
  $("groups").replaceChildren();
  setStatus("Looking for copies…");
  let data;
  try {
    data = await call(threshold ? `/api/duplicates?threshold=${encodeURIComponent(threshold)}` : "/api/duplicates");
  } catch (err) {
    if (isCurrent()) setStatus(err.message, true);
    return;
  }
  if (!isCurrent()) return;
  $("threshold").value = data.threshold;
  const photos = data.groups.reduce((n, g) => n + g.size, 0);
  const shown = data.total > data.groups.length ? ` (the first ${data.groups.length})` : "";
  const groups = data.total === 1 ? "1 group" : `${data.total} groups`;
  setStatus(data.total ? `${groups}, ${photos} photos${shown} (${data.took_ms.toFixed(0)} ms)`
    : "No copies at this threshold.");
  $("groups").append(...data.groups.map((group) => groupSection(group, view, setStatus)));
}

function groupSection(group, view, setStatus) {
  const section = element("section", "group");
  const heading = element("h2", "", `${group.size} photos`);
  const tiles = element("div", "tiles");
  group.photos.forEach((photo, i) => tiles.append(tile(photo, i, group, section, view, setStatus)));
  section.append(heading, tiles);
  return section;
}

function tile(photo, i, group, section, view, setStatus) {
  const name = fileName(photo.path);
  const figure = element("figure", "tile");
  figure.dataset.id = photo.id;
  const img = element("img");
  img.loading = "lazy";
  img.src = photo.thumbnail;
  img.alt = name;
  img.title = name;
  img.tabIndex = 0;
  const open = () => view(group.photos, group.photos.indexOf(photo));
  img.addEventListener("click", open);
  img.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  const caption = element("figcaption");
  const likeness = i === 0 ? "largest" : photo.exact ? "exact copy" : `${Math.round(photo.similarity * 100)}% alike`;
  caption.append(element("span", "name", name), element("span", "facts", facts(photo)),
                 element("span", "likeness", likeness));
  const remove = element("button", "remove", "Remove");
  remove.type = "button";
  remove.title = "Remove from the collection (the file itself stays where it is)";
  remove.addEventListener("click", () => removePhoto(photo, group, figure, section, setStatus));
  figure.append(img, caption, remove);
  return figure;
}

function facts(photo) {
  const size = photo.width ? `${photo.width}×${photo.height}` : "size unknown";
  const bytes = photo.bytes >= 1e6 ? `${(photo.bytes / 1e6).toFixed(1)} MB` : `${Math.round(photo.bytes / 1e3)} KB`;
  return `${size} · ${bytes}`;
}

async function removePhoto(photo, group, figure, section, setStatus) {
  const name = fileName(photo.path);
  if (!window.confirm(`Remove ${name} from the collection? The file stays on disk (delete it there too, or the ` +
                      "next index run adds it again).")) return;
  try {
    await write(`/api/items/${photo.id}`, { method: "DELETE" });
  } catch (err) {
    setStatus(`Could not remove ${name}: ${err.message}`, true);
    return;
  }
  figure.remove();
  group.photos.splice(group.photos.indexOf(photo), 1);
  const left = section.querySelectorAll(".tile").length;
  section.querySelector("h2").textContent = left > 1 ? `${left} photos` : "No copies left";
  section.classList.toggle("resolved", left < 2);
  setStatus(`Removed ${name}.`);
}
