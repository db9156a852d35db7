// The Teach panel: start, follow and stop the fine-tuning; list the model versions and switch between them.
import { get, post, say } from "./api.js";

let polling = null;
let lastResult = null;  // a model change is announced once per finished fine-tuning

export async function showTeach(onModelChange) {
  const status = await get("/api/training");
  document.getElementById("teach-state").textContent = status.state;
  document.getElementById("teach-state").dataset.state = status.state;
  const log = document.getElementById("teach-log");
  const step = status.steps > 1 ? `step ${status.step} of ${status.steps}: ` : "";
  log.textContent = (status.step_label ? `${step}${status.step_label}\n` : "") + (status.log || []).join("\n");
  log.scrollTop = log.scrollHeight;  // the newest line in view
  document.getElementById("teach-stop").hidden = status.state !== "running";
  document.getElementById("teach-start").disabled = status.state === "running";
  const result = status.result;
  document.getElementById("teach-result").textContent = result
    ? `${result.name || status.name || ""} ${result.status}: ${result.reason}` : "";
  showScores(result && result.scores);
  await showModels(onModelChange);
  clearTimeout(polling);
  if (status.state === "running") polling = setTimeout(() => showTeach(onModelChange), 1000);
  else if (result && JSON.stringify(result) !== lastResult) {
    lastResult = JSON.stringify(result);
    onModelChange();
  }
}

function showScores(scores) {
  // Before and after, per attribute, on the validation split the fine-tuning was scored on.
  const table = document.getElementById("teach-scores");
  table.hidden = !scores || !scores.per_attribute;
  if (table.hidden) return;
  const trained = new Set(scores.trained || []);
  const rows = Object.entries(scores.per_attribute).map(([name, s]) => {
    const tr = document.createElement("tr");
    const cells = [name.replaceAll("_", " "), fixed(s.before), fixed(s.after), trained.has(name) ? "fine-tuned" : "copied"];
    for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
    return tr;
  });
  const split = scores.images ? ` (validation split: ${scores.images.val} images, ${scores.validation}'s)` : "";
  const caption = document.createElement("caption");
  caption.textContent = `macro Jaccard ${fixed(scores.before)} -> ${fixed(scores.after)}${split}`;
  table.querySelector("caption")?.remove();
  table.prepend(caption);
  table.querySelector("tbody").replaceChildren(...rows);
}

function fixed(value) { return value == null ? "-" : Number(value).toFixed(4); }

async function showModels(onModelChange) {
  const listing = await get("/api/models");
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...listing.versions.map((version) => {
    const tr = document.createElement("tr");
    tr.dataset.name = version.name;
    const active = version.name === listing.active;
    for (const text of [version.name + (active ? " (active)" : ""), version.status, version.created, version.reason]) {
      const td = document.createElement("td");
      td.textContent = text || "";
      tr.append(td);
    }
    const td = document.createElement("td");
    if (!active && version.status === "ready") {
      const button = document.createElement("button");
      button.textContent = "use this version";
      button.addEventListener("click", async () => {
        try { await post(`/api/models/${version.name}/activate`); } catch (error) { say(error.message); }
        await showModels(onModelChange);
        onModelChange();
      });
      td.append(button);
    }
    tr.append(td);
    return tr;
  }));
}

export function wireTeach(onModelChange) {
  const panel = document.getElementById("teach");
  document.getElementById("teach-toggle").addEventListener("click", () => {
    panel.hidden = !panel.hidden;
    if (!panel.hidden) showTeach(onModelChange);
  });
  document.getElementById("teach-start").addEventListener("click", async () => {
    try { await post("/api/training"); say(""); } catch (error) { say(`Fine-tuning not started: ${error.message}`); }
    showTeach(onModelChange);
  });
  document.getElementById("teach-stop").addEventListener("click", async () => {
    try { await post("/api/training/stop"); } catch (error) { say(error.message); }
    showTeach(onModelChange);
  });
}
