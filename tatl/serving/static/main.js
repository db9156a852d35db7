// The page's router: #/ is the gallery, #/image/<id> the viewer and editor.
import { get, say } from "./api.js";
import { isDirty, startEditing, wireEditor } from "./editor.js";
import { nextToReview, setColours, showGallery, wireGallery } from "./gallery.js";
import { wireTeach } from "./teach.js";
import { openImage, restoreSettings, view } from "./viewer.js";

let info = null;
let shown = location.hash;

async function loadInfo() {
  info = await get("/api/info");
  setColours(info.colours);
  const label = document.getElementById("model-label");
  label.textContent = `model ${info.model}: ${info.model_path} · images ${info.folder}`;
}

async function route() {
  if (isDirty() && shown !== location.hash && shown.startsWith("#/image/")) {
    if (!confirm("This image has unsaved changes (kept as a draft). Leave it?")) { history.replaceState(null, "", shown); return; }
  }
  shown = location.hash;
  document.body.dataset.ready = "";
  const match = location.hash.match(/^#\/image\/(.+)$/);
  document.getElementById("gallery-view").hidden = Boolean(match);
  document.getElementById("viewer-view").hidden = !match;
  try {
    if (match) {
      await openAndEdit(decodeURIComponent(match[1]));
    } else {
      await showGallery();
    }
    document.body.dataset.ready = match ? "viewer" : "gallery";
  } catch (error) {
    say(error.message);
  }
}

async function openAndEdit(id) {
  const draft = await openImage(id, info);
  await startEditing(draft);
}

async function modelChanged() {
  await loadInfo();
  if (document.getElementById("viewer-view").hidden) await showGallery();
  else if (!isDirty()) await route();  // the new model's prediction (unsaved edits are never thrown away)
}

async function start() {
  await loadInfo();
  wireGallery();
  restoreSettings();
  wireEditor(() => nextToReview(view.id), () => openAndEdit(view.id));
  wireTeach(modelChanged);
  window.addEventListener("hashchange", route);
  await route();
}

start().catch((error) => say(error.message));
