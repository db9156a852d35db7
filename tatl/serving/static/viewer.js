// The viewer: the display copy with its layers (lesion outline, abnormal region, attributes) in two stages, the
// correction (editable) and the prediction, sharing one zoom and pan.
import { get, loadImage, post } from "./api.js";

export const view = {
  id: null, detail: null, attributes: [], colours: {}, size: [1, 1], scale: 1, tx: 0, ty: 0,
  hiddenLayers: new Set(), correction: {}, editing: null, mode: "correction",
};

const LESION_COLOUR = "#ffffff";
const ABNORMAL_COLOUR = "#ffd400";

function canvasOf(image, colour, outline = false) {
  // A canvas at the display size: `colour` where the mask image is white (or only its outline), transparent elsewhere.
  const [w, h] = view.size;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  if (!image) return canvas;
  context.drawImage(image, 0, 0, w, h);
  const pixels = context.getImageData(0, 0, w, h);
  const d = pixels.data;
  const on = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) on[i] = d[4 * i] > 127 ? 1 : 0;
  const [r, g, b] = rgb(colour);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      let show = on[i];
      if (show && outline) {
        show = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !on[i - 1] || !on[i + 1] || !on[i - w] || !on[i + w];
      }
      d[4 * i] = r; d[4 * i + 1] = g; d[4 * i + 2] = b; d[4 * i + 3] = show ? 255 : 0;
    }
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

export function rgb(colour) {
  const n = parseInt(colour.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

async function maskImage(url) {
  try { return await loadImage(url); } catch { return null; }
}

export async function openImage(id, info) {
  view.id = id;
  view.attributes = info.attributes;
  view.colours = info.colours;
  let detail = await get(`/api/images/${encodeURIComponent(id)}`);
  if (!detail.prediction) {
    await post(`/api/images/${encodeURIComponent(id)}/predict`);
    detail = await get(`/api/images/${encodeURIComponent(id)}`);
  }
  view.detail = detail;
  view.size = detail.display;
  view.editing = view.editing && view.attributes.includes(view.editing) ? view.editing : view.attributes[0];
  const base = `/api/images/${encodeURIComponent(id)}`;
  const picture = await loadImage(`${base}/image?size=display`);
  const predicted = {};
  for (const layer of ["lesion", "abnormal", ...view.attributes]) {
    predicted[layer] = await maskImage(`${base}/predictions/${layer}.png?display=1&model=${detail.model}`);
  }
  const draft = detail.has_draft ? await get(`${base}/draft`) : null;
  view.correction = {};
  for (const name of view.attributes) {
    const source = draft && draft.masks && draft.masks[name] ? await maskImage(draft.masks[name])
      : detail.corrected.includes(name) ? await maskImage(`${base}/masks/${name}.png?display=1`) : predicted[name];
    view.correction[name] = canvasOf(source, view.colours[name]);
  }
  buildStage("stage-prediction", picture, predicted, null);
  buildStage("stage-correction", picture, predicted, view.correction);
  renderSidebar(detail);
  applyLayers();
  fit();
  return draft;
}

function buildStage(stageId, picture, predicted, correction) {
  const world = document.querySelector(`#${stageId} .world`);
  const image = picture.cloneNode();
  image.width = view.size[0]; image.height = view.size[1];
  const children = [image];
  const add = (canvas, layer) => { canvas.dataset.layer = layer; canvas.classList.add("layer-canvas"); children.push(canvas); };
  if (predicted.abnormal) add(canvasOf(predicted.abnormal, ABNORMAL_COLOUR), "abnormal");
  for (const name of view.attributes) add(correction ? correction[name] : canvasOf(predicted[name], view.colours[name]), name);
  if (predicted.lesion) add(canvasOf(predicted.lesion, LESION_COLOUR, true), "lesion");
  if (correction) {
    const sketch = document.createElement("canvas");
    sketch.width = view.size[0]; sketch.height = view.size[1];
    sketch.id = "sketch";
    children.push(sketch);
  }
  world.style.width = `${view.size[0]}px`;
  world.style.height = `${view.size[1]}px`;
  world.replaceChildren(...children);
}

function renderSidebar(detail) {
  document.getElementById("image-title").textContent = view.id;
  const state = detail.state.approved ? "approved" : detail.corrected.length ? "corrected" : "predicted";
  document.getElementById("image-state").textContent =
    `${detail.width}x${detail.height} · ${state} · correction version ${detail.state.version} · model ${detail.model}`;
  const layers = document.getElementById("layers");
  const rows = [["lesion", "lesion outline", LESION_COLOUR], ["abnormal", "abnormal region", ABNORMAL_COLOUR],
    ...view.attributes.map((a) => [a, a.replaceAll("_", " "), view.colours[a]])];
  layers.replaceChildren(...rows.map(([layer, label, colour]) => layerRow(layer, label, colour)));
  const record = detail.prediction || {};
  const body = document.querySelector("#scores tbody");
  body.replaceChildren(...view.attributes.map((name) => {
    const a = (record.attributes || {})[name] || {};
    const tr = document.createElement("tr");
    const cells = [name.replaceAll("_", " "), a.area_fraction != null ? `${(100 * a.area_fraction).toFixed(1)} %` : "-",
      a.max_probability != null ? a.max_probability.toFixed(3) : "-"];
    for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
    return tr;
  }));
}

function layerRow(layer, label, colour) {
  const row = document.createElement("label");
  row.className = "layer";
  row.dataset.layer = layer;
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = !view.hiddenLayers.has(layer);
  box.addEventListener("change", () => {
    if (box.checked) view.hiddenLayers.delete(layer); else view.hiddenLayers.add(layer);
    applyLayers();
  });
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = colour;
  row.append(box, swatch, document.createTextNode(label));
  if (view.attributes.includes(layer)) {
    const edit = document.createElement("button");
    edit.textContent = "edit";
    edit.type = "button";
    edit.addEventListener("click", (e) => { e.preventDefault(); chooseAttribute(layer); });
    row.append(edit);
  }
  return row;
}

export function chooseAttribute(name) {
  view.editing = name;
  applyLayers();
}

export function applyLayers() {
  const opacity = document.getElementById("opacity").value / 100;
  for (const canvas of document.querySelectorAll(".layer-canvas")) {
    canvas.hidden = view.hiddenLayers.has(canvas.dataset.layer) && canvas.dataset.layer !== view.editing;
    canvas.style.opacity = opacity;
  }
  for (const row of document.querySelectorAll("#layers .layer")) {
    row.classList.toggle("editing", row.dataset.layer === view.editing);
  }
  document.getElementById("edit-attribute").textContent = view.editing ? view.editing.replaceAll("_", " ") : "";
  document.getElementById("stage-correction").hidden = view.mode === "prediction";
  document.getElementById("stage-prediction").hidden = view.mode === "correction";
  applyTransform();
}

export function fit() {
  const stage = document.querySelector(".stage:not([hidden])");
  const box = stage.getBoundingClientRect();
  view.scale = Math.min(box.width / view.size[0], box.height / view.size[1]) * 0.98;
  view.tx = (box.width - view.size[0] * view.scale) / 2;
  view.ty = (box.height - view.size[1] * view.scale) / 2;
  applyTransform();
}

export function applyTransform() {
  for (const world of document.querySelectorAll(".world")) {
    world.style.transform = `translate(${view.tx}px, ${view.ty}px) scale(${view.scale})`;
  }
}

export function zoomAt(factor, clientX, clientY, stage) {
  const box = stage.getBoundingClientRect();
  const x = clientX - box.left, y = clientY - box.top;
  const scale = Math.min(64, Math.max(0.05, view.scale * factor));
  view.tx = x - (x - view.tx) * (scale / view.scale);
  view.ty = y - (y - view.ty) * (scale / view.scale);
  view.scale = scale;
  applyTransform();
}

export function pan(dx, dy) {
  view.tx += dx; view.ty += dy;
  applyTransform();
}
