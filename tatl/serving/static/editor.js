// The editor: brush, eraser, polygon fill and "absent" on the chosen attribute's correction canvas (each attribute
// its own binary mask), undo/redo, drafts saved automatically, save with a version check, approve.
import { post, put, say } from "./api.js";
import { applyLayers, chooseAttribute, fit, pan, rgb, view, zoomAt } from "./viewer.js";

const editor = { tool: "brush", undo: [], redo: [], dirty: false, drawing: null, polygon: [], draftTimer: null,
  panning: null, space: false };
const UNDO_LIMIT = 40;
const DRAFT_DELAY_MS = 1000;

export function isDirty() { return editor.dirty; }

export function resetEditor(draft) {
  editor.undo = []; editor.redo = []; editor.polygon = []; editor.drawing = null;
  editor.dirty = Boolean(draft);
  status(draft ? `unsaved draft restored (autosaved ${draft.time || ""})` : "no unsaved changes");
}

function status(text) { document.getElementById("edit-status").textContent = text; }

function active() { return view.correction[view.editing]; }

function snapshot() {
  const canvas = active();
  editor.undo.push({ name: view.editing, pixels: canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height) });
  if (editor.undo.length > UNDO_LIMIT) editor.undo.shift();
  editor.redo = [];
}

function changed() {
  editor.dirty = true;
  status("unsaved changes (a draft is autosaved)");
  clearTimeout(editor.draftTimer);
  editor.draftTimer = setTimeout(saveDraft, DRAFT_DELAY_MS);
}

function restore(from, to) {
  const step = from.pop();
  if (!step) return;
  const canvas = view.correction[step.name];
  const context = canvas.getContext("2d");
  to.push({ name: step.name, pixels: context.getImageData(0, 0, canvas.width, canvas.height) });
  context.putImageData(step.pixels, 0, 0);
  chooseAttribute(step.name);
  changed();
}

function point(event) {
  const canvas = active();
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

function paint(from, to) {
  const context = active().getContext("2d");
  const size = Number(document.getElementById("brush-size").value);
  context.save();
  context.globalCompositeOperation = editor.tool === "eraser" ? "destination-out" : "source-over";
  context.strokeStyle = context.fillStyle = view.colours[view.editing];
  context.lineWidth = size;
  context.lineCap = context.lineJoin = "round";
  context.beginPath();
  context.moveTo(from[0], from[1]);
  context.lineTo(to[0], to[1]);
  context.stroke();
  context.restore();
}

function drawSketch() {
  const sketch = document.getElementById("sketch");
  if (!sketch) return;
  const context = sketch.getContext("2d");
  context.clearRect(0, 0, sketch.width, sketch.height);
  if (!editor.polygon.length) return;
  context.strokeStyle = view.colours[view.editing];
  context.lineWidth = 2 / view.scale;
  context.beginPath();
  editor.polygon.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
  context.stroke();
}

function closePolygon() {
  if (editor.polygon.length >= 3) {
    snapshot();
    const context = active().getContext("2d");
    context.fillStyle = view.colours[view.editing];
    context.beginPath();
    editor.polygon.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
    context.closePath();
    context.fill();
    changed();
  }
  editor.polygon = [];
  drawSketch();
}

function absent() {
  snapshot();
  const canvas = active();
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  changed();
}

export function maskDataUrl(canvas) {
  // White where the attribute is (alpha above half), black elsewhere: what the server stores as 0/255.
  const { width, height } = canvas;
  const pixels = canvas.getContext("2d").getImageData(0, 0, width, height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i + 3] > 127 ? 255 : 0;
    d[i] = d[i + 1] = d[i + 2] = v; d[i + 3] = 255;
  }
  const out = document.createElement("canvas");
  out.width = width; out.height = height;
  out.getContext("2d").putImageData(pixels, 0, 0);
  return out.toDataURL("image/png");
}

function allMasks() {
  return Object.fromEntries(view.attributes.map((name) => [name, maskDataUrl(view.correction[name])]));
}

async function saveDraft() {
  if (!editor.dirty || !view.id) return;
  const id = view.id;
  try {
    await put(`/api/images/${encodeURIComponent(id)}/draft`,
      { version: view.detail.state.version, time: new Date().toLocaleTimeString(), masks: allMasks() });
    if (id === view.id && editor.dirty) status("unsaved changes · draft autosaved");
  } catch (error) { say(`draft not saved: ${error.message}`); }
}

export async function save() {
  clearTimeout(editor.draftTimer);
  const id = view.id;
  try {
    const saved = await put(`/api/images/${encodeURIComponent(id)}/masks`,
      { version: view.detail.state.version, masks: allMasks() });
    view.detail.state.version = saved.version;
    editor.dirty = false;
    status(`saved version ${saved.version} (${saved.folder})`);
    say("");
    return true;
  } catch (error) {
    say(`Not saved: ${error.message}`);  // a 409 says another save came first, and what to do
    return false;
  }
}

async function approve() {
  if ((editor.dirty || view.detail.state.version === 0) && !(await save())) return;
  const state = await post(`/api/images/${encodeURIComponent(view.id)}/approve`, { approved: true });
  view.detail.state = state;
  status(`approved (version ${state.version})`);
}

function setTool(tool) {
  editor.tool = tool;
  for (const button of document.querySelectorAll("[data-tool]")) button.classList.toggle("active", button.dataset.tool === tool);
  if (tool !== "polygon") { editor.polygon = []; drawSketch(); }
}

function resize(step) {
  const input = document.getElementById("brush-size");
  input.value = Math.max(1, Math.min(120, Number(input.value) + step));
  document.getElementById("brush-size-value").textContent = `${input.value} px`;
}

function wireStage(stage, editable) {
  stage.addEventListener("wheel", (e) => { e.preventDefault(); zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX, e.clientY, stage); },
    { passive: false });
  stage.addEventListener("pointerdown", (e) => {
    if (!editable || editor.tool === "pan" || editor.space || e.button === 1) {
      editor.panning = [e.clientX, e.clientY];
    } else if (e.button === 0 && editor.tool === "polygon") {
      editor.polygon.push(point(e));
      drawSketch();
    } else if (e.button === 0) {
      snapshot();
      editor.drawing = point(e);
      paint(editor.drawing, editor.drawing);
    }
    stage.setPointerCapture(e.pointerId);
  });
  stage.addEventListener("pointermove", (e) => {
    if (editor.panning) {
      pan(e.clientX - editor.panning[0], e.clientY - editor.panning[1]);
      editor.panning = [e.clientX, e.clientY];
    } else if (editor.drawing) {
      const to = point(e);
      paint(editor.drawing, to);
      editor.drawing = to;
    }
  });
  const end = () => {
    if (editor.drawing) changed();
    editor.drawing = null; editor.panning = null;
  };
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
  if (editable) stage.addEventListener("dblclick", () => { if (editor.tool === "polygon") closePolygon(); });
}

export function wireEditor(goNext) {
  for (const button of document.querySelectorAll("[data-tool]")) button.addEventListener("click", () => setTool(button.dataset.tool));
  document.getElementById("brush-size").addEventListener("input", () => resize(0));
  document.getElementById("absent").addEventListener("click", absent);
  document.getElementById("undo").addEventListener("click", () => restore(editor.undo, editor.redo));
  document.getElementById("redo").addEventListener("click", () => restore(editor.redo, editor.undo));
  document.getElementById("save").addEventListener("click", save);
  document.getElementById("approve").addEventListener("click", approve);
  document.getElementById("next").addEventListener("click", goNext);
  document.getElementById("opacity").addEventListener("input", applyLayers);
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => { view.mode = radio.value; applyLayers(); fit(); });
  }
  wireStage(document.getElementById("stage-correction"), true);
  wireStage(document.getElementById("stage-prediction"), false);
  document.addEventListener("keydown", (e) => keys(e, goNext));
  document.addEventListener("keyup", (e) => { if (e.code === "Space") editor.space = false; });
  window.addEventListener("beforeunload", (e) => {
    if (editor.dirty) { e.preventDefault(); e.returnValue = ""; }
  });
  setTool("brush");
  resize(0);
}

function keys(e, goNext) {
  if (document.getElementById("viewer-view").hidden || e.target.matches("input[type=text], select")) return;
  const ctrl = e.ctrlKey || e.metaKey;
  const key = e.key.toLowerCase();
  const actions = {
    b: () => setTool("brush"), e: () => setTool("eraser"), p: () => setTool("polygon"), m: () => setTool("pan"),
    x: absent, a: approve, n: goNext, "[": () => resize(-2), "]": () => resize(2), "+": () => zoomCentre(1.25),
    "=": () => zoomCentre(1.25), "-": () => zoomCentre(0.8), 0: fit, enter: closePolygon,
    escape: () => { editor.polygon = []; drawSketch(); }, v: toggleMode,
  };
  if (ctrl && key === "z") { e.preventDefault(); restore(e.shiftKey ? editor.redo : editor.undo, e.shiftKey ? editor.undo : editor.redo); }
  else if (ctrl && key === "y") { e.preventDefault(); restore(editor.redo, editor.undo); }
  else if (ctrl && key === "s") { e.preventDefault(); save(); }
  else if (e.code === "Space") { e.preventDefault(); editor.space = true; }
  else if (!ctrl && /^[1-9]$/.test(key) && view.attributes[Number(key) - 1]) chooseAttribute(view.attributes[Number(key) - 1]);
  else if (!ctrl && actions[key]) { e.preventDefault(); actions[key](); }
}

function zoomCentre(factor) {
  const stage = document.querySelector(".stage:not([hidden])");
  const box = stage.getBoundingClientRect();
  zoomAt(factor, box.left + box.width / 2, box.top + box.height / 2, stage);
}

function toggleMode() {
  view.mode = view.mode === "prediction" ? "correction" : "prediction";
  document.querySelector(`input[name=mode][value=${view.mode}]`).checked = true;
  applyLayers();
}
