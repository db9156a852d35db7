// The gallery: thumbnails with state and attribute chips, sorting, next to review, upload by picker or drop.
import { get, post, say } from "./api.js";

let colours = {};

export function setColours(c) { colours = c; }

export async function showGallery() {
  const sort = document.getElementById("sort").value;
  const rows = await get(`/api/images?sort=${encodeURIComponent(sort)}`);
  const grid = document.getElementById("gallery");
  grid.replaceChildren(...rows.map(card));
  document.getElementById("gallery-count").textContent = `${rows.length} image(s)`;
}

function card(row) {
  const element = document.createElement("div");
  element.className = "card";
  element.dataset.id = row.id;
  element.dataset.state = row.state;
  const image = document.createElement("img");
  image.loading = "lazy";
  image.alt = row.id;
  image.src = `/api/images/${encodeURIComponent(row.id)}/image?size=thumbnail`;
  const meta = document.createElement("div");
  meta.className = "meta";
  const id = document.createElement("div");
  id.className = "id";
  id.textContent = row.id;
  const state = document.createElement("span");
  state.className = `state ${row.state.replace(" ", "-")}`;
  state.textContent = row.state + (row.uncertainty != null ? ` · u ${row.uncertainty.toFixed(3)}` : "");
  const chips = document.createElement("div");
  for (const name of row.present) {
    const chip = document.createElement("span");
    chip.className = row.corrected.includes(name) ? "chip corrected" : "chip";
    chip.title = row.corrected.includes(name) ? "saved by a person" : "predicted";
    chip.style.background = colours[name] || "#666";
    chip.textContent = name.replaceAll("_", " ");
    chips.append(chip);
  }
  meta.append(id, state);
  if (row.draft) {
    const draft = document.createElement("span");
    draft.className = "draft";
    draft.textContent = "unsaved draft";
    meta.append(draft);
  }
  meta.append(chips);
  element.append(image, meta);
  element.addEventListener("click", () => { location.hash = `#/image/${encodeURIComponent(row.id)}`; });
  return element;
}

export async function nextToReview(after) {
  const { id } = await get(`/api/next${after ? `?after=${encodeURIComponent(after)}` : ""}`);
  if (id) location.hash = `#/image/${encodeURIComponent(id)}`;
  else say("nothing left to review", "info");
}

export async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  say(`adding and predicting ${files.length} image(s)...`, "info");
  try {
    const result = await post("/api/images", form);
    report(result);
  } catch (error) {
    if (error.data && error.data.refused) report(error.data);
    else say(error.message);
  }
  await showGallery();
}

function report(result) {
  const refused = result.refused.map((r) => r.reason).join("; ");
  if (refused) say(`added ${result.added.length}; refused: ${refused}`);
  else say(`added and predicted ${result.added.length} image(s)`, "info");
}

async function predictAll() {
  const rows = await get("/api/images");
  const waiting = rows.filter((r) => r.state === "not predicted");
  for (const [i, row] of waiting.entries()) {
    say(`predicting ${row.id} (${i + 1} of ${waiting.length})...`, "info");
    try { await post(`/api/images/${encodeURIComponent(row.id)}/predict`); } catch (error) { say(error.message); return; }
  }
  say(waiting.length ? `predicted ${waiting.length} image(s)` : "every image is predicted", "info");
  await showGallery();
}

export function wireGallery() {
  document.getElementById("predict-all").addEventListener("click", predictAll);
  document.getElementById("sort").addEventListener("change", showGallery);
  document.getElementById("next-review").addEventListener("click", () => nextToReview());
  const input = document.getElementById("upload");
  input.addEventListener("change", () => { upload([...input.files]); input.value = ""; });
  const view = document.getElementById("gallery-view");
  view.addEventListener("dragover", (e) => { e.preventDefault(); view.classList.add("dropping"); });
  view.addEventListener("dragleave", () => view.classList.remove("dropping"));
  view.addEventListener("drop", (e) => {
    e.preventDefault();
    view.classList.remove("dropping");
    upload([...e.dataTransfer.files]);
  });
}
