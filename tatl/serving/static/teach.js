// The Teach panel: start, follow and stop the fine-tuning; list the model versions and switch between them.
import { get, post, say } from "./api.js";

let polling = null;
let lastResult = null;  // a model change is announced once per finished fine-tuning

export async function showTeach(onModelChange) {
  const status = await get("/api/training");
  document.getElementById("teach-state").textContent = status.state;
  document.getElementById("teach-state").dataset.state = status.state;
  document.getElementById("teach-log").textContent = (status.log || []).join("\n");
  document.getElementById("teach-stop").hidden = status.state !== "running";
  document.getElementById("teach-start").disabled = status.state === "running";
  const result = status.result;
  document.getElementById("teach-result").textContent = result
    ? `${result.name || status.name || ""} ${result.status}: ${result.reason}` : "";
  await showModels(onModelChange);
  clearTimeout(polling);
  if (status.state === "running") polling = setTimeout(() => showTeach(onModelChange), 1000);
  else if (result && JSON.stringify(result) !== lastResult) {
    lastResult = JSON.stringify(result);
    onModelChange();
  }
}

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
