// The viewer: the display copy with its layers (lesion outline, abnormal region, attributes) in two stages, the
// correction (editable) and the prediction, sharing one zoom and pan. Past 100% zoom the image is swapped for the
// original, so a 4000 px photo stays sharp. The chosen attribute, hidden layers, opacity, layer style and mode are
// remembered in this browser (localStorage).
import { get, loadImage, post } from "./api.js";

export const view = {
  id: null, detail: null, attributes: [], colours: {}, size: [1, 1], scale: 1, tx: 0, ty: 0,
  hiddenLayers: new Set(["abnormal"]), correction: {}, touched: {}, predicted: {}, editing: null, mode: "correction",
  style: "filled", only: false, picture: null, sharp: false,
};

const LESION_COLOUR = "#ffffff";
const ABNORMAL_COLOUR = "#ffd400";
const SETTINGS_KEY = "tatl-serve-view";

export function rememberSettings() {
  const settings = { editing: view.editing, hidden: [...view.hiddenLayers], mode: view.mode, style: view.style,
    only: view.only, opacity: document.getElementById("opacity").value };
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings)); } catch { /* storage off: nothing kept */ }
}

export function restoreSettings() {
  let settings = null;
  try { settings = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "null"); } catch { settings = null; }
  if (!settings) return;
  view.editing = settings.editing || null;
  view.hiddenLayers = new Set(settings.hidden || []);
  view.mode = ["correction", "prediction", "both"].includes(settings.mode) ? settings.mode : "correction";
  view.style = settings.style === "outline" ? "outline" : "filled";
  view.only = Boolean(settings.only);
  if (settings.opacity != null) document.getElementById("opacity").value = settings.opacity;
  document.querySelector(`input[name=mode][value=${view.mode}]`).checked = true;
  document.getElementById("layer-style").value = view.style;
  document.getElementById("only-editing").checked = view.only;
}

export function blankCanvas() {
  const [w, h] = view.size;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  canvas.getContext("2d", { willReadFrequently: true });
  return canvas;
}

export function canvasOf(image, colour, outline = false) {
  // A canvas at the display size: `colour` where the mask image is white (or only its outline), transparent elsewhere.
  const canvas = blankCanvas();
  if (!image) return canvas;
  const [w, h] = view.size;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, w, h);
  const pixels = context.getImageData(0, 0, w, h);
  const on = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) on[i] = pixels.data[4 * i] > 127 ? 1 : 0;
  paintMask(pixels, on, colour, outline);
  context.putImageData(pixels, 0, 0);
  return canvas;
}

function paintMask(pixels, on, colour, outline) {
  const { width: w, height: h, data: d } = pixels;
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
}

export function outlineOf(canvas, colour) {
  // The outline of a coloured mask canvas (alpha above half is the mask), as a new canvas.
  const out = blankCanvas();
  const source = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const on = new Uint8Array(canvas.width * canvas.height);
  for (let i = 0; i < on.length; i++) on[i] = source.data[4 * i + 3] > 127 ? 1 : 0;
  const pixels = out.getContext("2d").createImageData(canvas.width, canvas.height);
  paintMask(pixels, on, colour, true);
  out.getContext("2d").putImageData(pixels, 0, 0);
  return out;
}

export function rgb(colour) {
  const n = parseInt(colour.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

export async function maskImage(url) {
  try { return await loadImage(url); } catch { return null; }
}

export async function loadDetail(id) {
  let detail = await get(`/api/images/${encodeURIComponent(id)}`);
  if (!detail.prediction) {
    await post(`/api/images/${encodeURIComponent(id)}/predict`);
    detail = await get(`/api/images/${encodeURIComponent(id)}`);
  }
  return detail;
}

export async function shownMask(name) {
  // What the person sees of an attribute before any edit: the saved correction, else the prediction.
  const base = `/api/images/${encodeURIComponent(view.id)}`;
  return view.detail.corrected.includes(name) ? maskImage(`${base}/masks/${name}.png?display=1`) : view.predicted[name];
}

export async function openImage(id, info) {
  view.id = id;
  view.attributes = info.attributes;
  view.colours = info.colours;
  const detail = await loadDetail(id);
  view.detail = detail;
  view.size = detail.display;
  view.sharp = false;
  view.editing = view.editing && view.attributes.includes(view.editing) ? view.editing : view.attributes[0];
  const base = `/api/images/${encodeURIComponent(id)}`;
  view.picture = await loadImage(`${base}/image?size=display`);
  view.predicted = {};
  for (const layer of ["lesion", "abnormal", ...view.attributes]) {
    view.predicted[layer] = await maskImage(`${base}/predictions/${layer}.png?display=1&model=${detail.model}`);
  }
  view.correction = {};
  view.touched = {};
  for (const name of view.attributes) {
    view.correction[name] = canvasOf(await shownMask(name), view.colours[name]);
    view.touched[name] = blankCanvas();
  }
  const draft = detail.has_draft ? await get(`${base}/draft`) : null;
  buildStages();
  renderSidebar(detail);
  return draft;
}

export function buildStages() {
  buildStage("stage-prediction", null);
  buildStage("stage-correction", view.correction);
  applyLayers();
  fit();
}

function buildStage(stageId, correction) {
  const world = document.querySelector(`#${stageId} .world`);
  const image = view.picture.cloneNode();
  image.width = view.size[0]; image.height = view.size[1];
  image.classList.add("picture");
  const children = [image];
  const add = (canvas, layer) => { canvas.dataset.layer = layer; canvas.classList.add("layer-canvas"); children.push(canvas); };
  if (view.predicted.abnormal) add(canvasOf(view.predicted.abnormal, ABNORMAL_COLOUR), "abnormal");
  for (const name of view.attributes) {
    const filled = correction ? correction[name] : canvasOf(view.predicted[name], view.colours[name]);
    add(filled, name);
    const outline = outlineOf(filled, view.colours[name]);  // data-outline, not data-layer: one canvas per layer name
    outline.dataset.outline = name;
    outline.classList.add("layer-canvas");
    children.push(outline);
  }
  if (view.predicted.lesion) add(canvasOf(view.predicted.lesion, LESION_COLOUR, true), "lesion");
  if (correction) {
    const sketch = blankCanvas();
    sketch.id = "sketch";
    children.push(sketch);
  }
  world.style.width = `${view.size[0]}px`;
  world.style.height = `${view.size[1]}px`;
  world.replaceChildren(...children);
}

export function refreshOutline(name) {
  // The correction's outline canvas of `name`, redrawn after an edit.
  const old = document.querySelector(`#stage-correction canvas[data-outline=${name}]`);
  if (!old) return;
  const fresh = outlineOf(view.correction[name], view.colours[name]);
  fresh.dataset.outline = name; fresh.className = old.className;
  old.replaceWith(fresh);
  applyLayers();
}

export function renderSidebar(detail) {
  document.getElementById("image-title").textContent = view.id;
  renderState(detail);
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
      a.max_probability != null ? a.max_probability.toFixed(3) : "-",
      detail.corrected.includes(name) ? "saved" : "-"];
    for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
    return tr;
  }));
}

export function renderState(detail) {
  const state = detail.state.approved ? "approved" : detail.corrected.length ? "corrected" : "predicted";
  const saved = detail.corrected.length ? ` (${detail.corrected.map((a) => a.replaceAll("_", " ")).join(", ")})` : "";
  document.getElementById("image-state").textContent =
    `${detail.width}x${detail.height} · ${state} · correction version ${detail.state.version}${saved} · model ${detail.model}`;
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

function layerShown(canvas) {
  // The edited attribute is filled and on top; the others follow the style (filled or outline) unless hidden, or
  // unless only the edited attribute is shown. A hidden layer is hidden, the edited one too.
  const layer = canvas.dataset.layer || canvas.dataset.outline;
  if (view.hiddenLayers.has(layer)) return false;
  const attribute = view.attributes.includes(layer);
  if (view.only && attribute && layer !== view.editing) return false;
  if (!attribute) return !canvas.dataset.outline;
  const wantOutline = layer !== view.editing && view.style === "outline";
  return Boolean(canvas.dataset.outline) === wantOutline;
}

export function applyLayers() {
  const opacity = document.getElementById("opacity").value / 100;
  for (const canvas of document.querySelectorAll(".layer-canvas")) {
    canvas.hidden = !layerShown(canvas);
    const layer = canvas.dataset.layer || canvas.dataset.outline;
    const editing = layer === view.editing;
    canvas.style.zIndex = layer === "lesion" ? 4 : editing ? 3 : layer === "abnormal" ? 1 : 2;
    canvas.style.opacity = canvas.dataset.outline ? 1 : editing ? Math.max(opacity, 0.2) : opacity;
  }
  for (const row of document.querySelectorAll("#layers .layer")) {
    row.classList.toggle("editing", row.dataset.layer === view.editing);
  }
  document.getElementById("edit-attribute").textContent = view.editing ? view.editing.replaceAll("_", " ") : "";
  document.getElementById("stage-correction").hidden = view.mode === "prediction";
  document.getElementById("stage-prediction").hidden = view.mode === "correction";
  rememberSettings();
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
  sharpen();
}

function sharpen() {
  // Past 100% of the display copy of a larger photo, show the original's pixels (loaded once per image).
  if (view.sharp || !view.detail || view.scale <= 1 || view.detail.width <= view.size[0]) return;
  view.sharp = true;
  const url = `/api/images/${encodeURIComponent(view.id)}/image?size=original`;
  for (const image of document.querySelectorAll(".world img.picture")) image.src = url;
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
