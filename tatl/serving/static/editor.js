// The editor: brush, eraser, polygon fill, "absent" and "confirm" on the chosen attribute's correction canvas (each
// attribute its own binary mask), undo/redo, drafts saved automatically, save with a version check, approve.
//
// What is saved is exactly what the person did: the attributes they edited (each with `touched`, a canvas of where
// the tools went, so the server changes those pixels and only those at the original size) and those they
// confirmed as shown; nothing of any other attribute. A draft remembers the version it started from: when another
// save came first, the page shows that version and offers the draft's edits on top of it, or to discard them.
import { del, post, put, say } from "./api.js";
import {
  applyLayers, blankCanvas, canvasOf, chooseAttribute, fit, loadDetail, maskImage, pan, refreshOutline, renderSidebar,
  renderState, view, zoomAt,
} from "./viewer.js";

const editor = { tool: "brush", undo: [], redo: [], dirty: false, drawing: null, polygon: [], draftTimer: null,
  panning: null, space: false, edited: new Set(), confirmed: new Set(), stale: null, reopen: null };
const UNDO_LIMIT = 40;
const DRAFT_DELAY_MS = 1000;

export function isDirty() { return editor.dirty; }

export async function startEditing(draft) {
  editor.undo = []; editor.redo = []; editor.polygon = []; editor.drawing = null;
  editor.edited = new Set(); editor.confirmed = new Set(); editor.stale = null; editor.dirty = false;
  showConflict(null);
  if (!draft) { status("no unsaved changes"); return; }
  if ((draft.version || 0) === view.detail.state.version) {
    await applyDraft(draft, false);
    status(`unsaved draft restored (autosaved ${draft.time || ""})`);
  } else {
    editor.stale = draft;
    showConflict(draft);
    status(`showing version ${view.detail.state.version}; your unsaved edits wait below`);
  }
}

function status(text) { document.getElementById("edit-status").textContent = text; }

function names(set) { return [...set].map((a) => a.replaceAll("_", " ")).join(", "); }

async function applyDraft(draft, onTop) {
  // The draft's edits: as they were (same version) or on top of the version shown (only its touched pixels).
  for (const [name, url] of Object.entries(draft.masks || {})) {
    if (!view.attributes.includes(name)) continue;
    const mine = canvasOf(await maskImage(url), view.colours[name]);
    const touched = draft.touched && draft.touched[name] ? canvasOf(await maskImage(draft.touched[name]), "#ffffff")
      : null;
    if (onTop && touched) merge(view.correction[name], mine, touched);
    else copyInto(view.correction[name], mine);
    if (touched) copyInto(view.touched[name], touched);
    editor.edited.add(name);
    refreshOutline(name);
  }
  for (const name of draft.confirmed || []) if (view.attributes.includes(name)) editor.confirmed.add(name);
  editor.dirty = editor.edited.size > 0 || editor.confirmed.size > 0;
  applyLayers();
}

function copyInto(target, source) {
  const context = target.getContext("2d");
  context.clearRect(0, 0, target.width, target.height);
  context.drawImage(source, 0, 0);
}

function merge(target, mine, touched) {
  // target := mine where touched, target elsewhere.
  const { width, height } = target;
  const context = target.getContext("2d");
  const out = context.getImageData(0, 0, width, height);
  const m = mine.getContext("2d").getImageData(0, 0, width, height).data;
  const t = touched.getContext("2d").getImageData(0, 0, width, height).data;
  for (let i = 3; i < out.data.length; i += 4) {
    if (t[i] > 127) { out.data[i - 3] = m[i - 3]; out.data[i - 2] = m[i - 2]; out.data[i - 1] = m[i - 1]; out.data[i] = m[i]; }
  }
  context.putImageData(out, 0, 0);
}

function showConflict(draft) {
  const panel = document.getElementById("conflict");
  panel.hidden = !draft;
  if (!draft) return;
  const edited = Object.keys(draft.masks || {}).map((a) => a.replaceAll("_", " ")).join(", ") || "none";
  const confirmed = (draft.confirmed || []).map((a) => a.replaceAll("_", " ")).join(", ");
  document.getElementById("conflict-text").textContent =
    `Your unsaved edits (${edited}${confirmed ? `; confirmed: ${confirmed}` : ""}) started from version ` +
    `${draft.version || 0}, and version ${view.detail.state.version} was saved since (shown now). Nothing is lost ` +
    "until you choose.";
}

async function applyStale() {
  const draft = editor.stale;
  editor.stale = null;
  showConflict(null);
  await applyDraft(draft, true);
  status(`your edits are on top of version ${view.detail.state.version}: check them, then Save`);
  saveDraft();
}

async function discardStale() {
  // The draft is deleted first: the panel goes only once it is gone, so nothing on screen says "discarded" while the
  // draft is still on disk (a reload in between would offer it again).
  clearTimeout(editor.draftTimer);
  await del(`/api/images/${encodeURIComponent(view.id)}/draft`);
  editor.stale = null;
  showConflict(null);
  status(`your edits were discarded; showing version ${view.detail.state.version}`);
}

function active() { return view.correction[view.editing]; }

function stateOf(name) {
  // One attribute as an undo step holds it: its mask, where the tools went, and whether it is edited or confirmed.
  const grab = (canvas) => canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  return { name, pixels: grab(view.correction[name]), touched: grab(view.touched[name]),
    edited: editor.edited.has(name), confirmed: editor.confirmed.has(name) };
}

function snapshot() {
  editor.undo.push(stateOf(view.editing));
  if (editor.undo.length > UNDO_LIMIT) editor.undo.shift();
  editor.redo = [];
}

function restore(from, to) {
  const step = from.pop();
  if (!step) return;
  const { name } = step;
  to.push(stateOf(name));
  view.correction[name].getContext("2d").putImageData(step.pixels, 0, 0);
  view.touched[name].getContext("2d").putImageData(step.touched, 0, 0);
  toggle(editor.edited, name, step.edited);
  toggle(editor.confirmed, name, step.confirmed);
  chooseAttribute(name);
  changed();
}

function toggle(set, name, on) { if (on) set.add(name); else set.delete(name); }

function pending() {
  return [editor.edited.size ? `edited: ${names(editor.edited)}` : "",
    editor.confirmed.size ? `confirmed: ${names(editor.confirmed)}` : ""].filter(Boolean).join("; ");
}

function changed() {
  editor.dirty = editor.edited.size > 0 || editor.confirmed.size > 0;
  refreshOutline(view.editing);
  status(editor.dirty ? `unsaved changes (${pending()}; a draft is autosaved)` : "no unsaved changes");
  clearTimeout(editor.draftTimer);
  editor.draftTimer = setTimeout(saveDraft, DRAFT_DELAY_MS);
}

function edit(draw) {
  // Draw on the chosen attribute's mask and, always opaque, on its touched canvas.
  const name = view.editing;
  draw(view.correction[name].getContext("2d"), editor.tool === "eraser" ? "destination-out" : "source-over");
  draw(view.touched[name].getContext("2d"), "source-over");
  editor.edited.add(name);
  editor.confirmed.delete(name);
}

function point(event) {
  const canvas = active();
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

function paint(from, to) {
  const size = Number(document.getElementById("brush-size").value);
  edit((context, operation) => {
    context.save();
    context.globalCompositeOperation = operation;
    context.strokeStyle = view.colours[view.editing];
    context.lineWidth = size;
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.moveTo(from[0], from[1]);
    context.lineTo(to[0], to[1]);
    context.stroke();
    context.restore();
  });
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
    edit((context, operation) => {
      context.save();
      context.globalCompositeOperation = operation;
      context.fillStyle = view.colours[view.editing];
      context.beginPath();
      editor.polygon.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
      context.closePath();
      context.fill();
      context.restore();
    });
    changed();
  }
  editor.polygon = [];
  drawSketch();
}

function absent() {
  // The attribute is not in this image: its whole mask is cleared, at every resolution.
  snapshot();
  const name = view.editing;
  const canvas = view.correction[name];
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  const touched = view.touched[name].getContext("2d");
  touched.fillStyle = "#ffffff";
  touched.fillRect(0, 0, canvas.width, canvas.height);
  editor.edited.add(name);
  editor.confirmed.delete(name);
  changed();
}

function confirmShown() {
  // "This mask is right as shown": saved as the person sees it, without an edit.
  const name = view.editing;
  if (editor.edited.has(name)) { status(`${name.replaceAll("_", " ")} is edited: Save keeps the edit`); return; }
  snapshot();
  editor.confirmed.add(name);
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

function edits() {
  const edited = [...editor.edited];
  return {
    masks: Object.fromEntries(edited.map((name) => [name, maskDataUrl(view.correction[name])])),
    touched: Object.fromEntries(edited.map((name) => [name, maskDataUrl(view.touched[name])])),
    confirmed: [...editor.confirmed].filter((name) => !editor.edited.has(name)),
  };
}

async function saveDraft() {
  if (!view.id || editor.stale) return;
  const id = view.id;
  try {
    if (!editor.dirty) { await del(`/api/images/${encodeURIComponent(id)}/draft`); return; }
    await put(`/api/images/${encodeURIComponent(id)}/draft`,
      { version: view.detail.state.version, time: new Date().toLocaleTimeString(), ...edits() });
    if (id === view.id && editor.dirty) status(`unsaved changes (${pending()}) · draft autosaved`);
  } catch (error) { say(`draft not saved: ${error.message}`); }
}

async function refreshDetail() {
  view.detail = await loadDetail(view.id);
  renderSidebar(view.detail);
  applyLayers();
}

export async function save() {
  clearTimeout(editor.draftTimer);
  if (editor.stale) { say("Choose first what to do with your unsaved edits (below the buttons)"); return false; }
  if (!editor.dirty) { status("nothing to save: edit or confirm an attribute first"); return true; }
  const id = view.id;
  try {
    const saved = await put(`/api/images/${encodeURIComponent(id)}/masks`,
      { version: view.detail.state.version, ...edits() });
    editor.dirty = false; editor.edited = new Set(); editor.confirmed = new Set();
    for (const name of view.attributes) view.touched[name] = blankCanvas();
    await refreshDetail();
    status(`saved version ${saved.version}: ${saved.attributes.map((a) => a.replaceAll("_", " ")).join(", ")} (${saved.folder})`);
    say("");
    return true;
  } catch (error) {
    if (error.status !== 409) { say(`Not saved: ${error.message}`); return false; }
    await saveDraft();  // the edits, with the version they started from: shown beside the newer version below
    say(`Not saved: ${error.message}. Your edits are kept: choose below.`);
    await editor.reopen();
    return false;
  }
}

async function approve() {
  if (editor.dirty && !(await save())) return;
  const state = await post(`/api/images/${encodeURIComponent(view.id)}/approve`, { approved: true });
  view.detail.state = state;
  renderState(view.detail);
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

function moveCursor(stage, e) {
  // The brush's size and place under the pointer (in screen pixels: the display size times the zoom).
  const cursor = stage.querySelector(".brush-cursor");
  if (!cursor) return;
  const painting = editor.tool === "brush" || editor.tool === "eraser";
  cursor.hidden = !painting || editor.space;
  if (cursor.hidden) return;
  const box = stage.getBoundingClientRect();
  const diameter = Number(document.getElementById("brush-size").value) * view.scale;
  cursor.style.width = cursor.style.height = `${diameter}px`;
  cursor.style.left = `${e.clientX - box.left - diameter / 2}px`;
  cursor.style.top = `${e.clientY - box.top - diameter / 2}px`;
}

function wireStage(stage, editable) {
  stage.addEventListener("wheel", (e) => { e.preventDefault(); zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX, e.clientY, stage); },
    { passive: false });
  stage.addEventListener("pointerdown", (e) => {
    if (!editable || editor.tool === "pan" || editor.space || e.button === 1) {
      editor.panning = [e.clientX, e.clientY];
    } else if (editor.stale) {
      say("Choose first what to do with your unsaved edits (below the buttons)");
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
    if (editable) moveCursor(stage, e);
    if (editor.panning) {
      pan(e.clientX - editor.panning[0], e.clientY - editor.panning[1]);
      editor.panning = [e.clientX, e.clientY];
    } else if (editor.drawing) {
      const to = point(e);
      paint(editor.drawing, to);
      editor.drawing = to;
    }
  });
  stage.addEventListener("pointerleave", () => { const c = stage.querySelector(".brush-cursor"); if (c) c.hidden = true; });
  const end = () => {
    if (editor.drawing) changed();
    editor.drawing = null; editor.panning = null;
  };
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
  if (editable) stage.addEventListener("dblclick", () => { if (editor.tool === "polygon") closePolygon(); });
}

function guarded(action) {
  return () => { if (editor.stale) say("Choose first what to do with your unsaved edits (below the buttons)"); else action(); };
}

export function wireEditor(goNext, reopen) {
  editor.reopen = reopen;
  for (const button of document.querySelectorAll("[data-tool]")) button.addEventListener("click", () => setTool(button.dataset.tool));
  document.getElementById("brush-size").addEventListener("input", () => resize(0));
  document.getElementById("absent").addEventListener("click", guarded(absent));
  document.getElementById("confirm").addEventListener("click", guarded(confirmShown));
  document.getElementById("undo").addEventListener("click", () => restore(editor.undo, editor.redo));
  document.getElementById("redo").addEventListener("click", () => restore(editor.redo, editor.undo));
  document.getElementById("save").addEventListener("click", save);
  document.getElementById("approve").addEventListener("click", approve);
  document.getElementById("next").addEventListener("click", goNext);
  document.getElementById("conflict-apply").addEventListener("click", applyStale);
  document.getElementById("conflict-discard").addEventListener("click", discardStale);
  document.getElementById("opacity").addEventListener("input", applyLayers);
  document.getElementById("layer-style").addEventListener("change", (e) => { view.style = e.target.value; applyLayers(); });
  document.getElementById("only-editing").addEventListener("change", (e) => { view.only = e.target.checked; applyLayers(); });
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
    x: guarded(absent), c: guarded(confirmShown), a: approve, n: goNext, "[": () => resize(-2), "]": () => resize(2),
    "+": () => zoomCentre(1.25), "=": () => zoomCentre(1.25), "-": () => zoomCentre(0.8), 0: fit, enter: closePolygon,
    escape: () => { editor.polygon = []; drawSketch(); }, v: toggleMode, o: toggleOnly,
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

function toggleOnly() {
  view.only = !view.only;
  document.getElementById("only-editing").checked = view.only;
  applyLayers();
}

