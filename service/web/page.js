// The segserve page: one image at a time through GET /models and POST /segment, as any client.
// No framework and no build step. The API key lives in this script's memory only: it is never
// written to storage, cookies or the URL.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: null, image: null, imageName: "", urls: [] };
let apiKey = "";

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function describeFailure(what, response) {
  try {
    const problem = await response.json();
    return `${what}: ${response.status} ${problem.code}: ${problem.detail}`;
  } catch {
    return `${what}: ${response.status} ${response.statusText}`;
  }
}

// -- models and versions, from GET /models ------------------------------------------------------
async function loadModels() {
  const response = await fetch("/models", { headers: authHeaders() });
  if (!response.ok) {
    state.models = null;
    $("model").replaceChildren();
    $("version").replaceChildren();
    const hint = response.status === 401 ? " (type the API key above)" : "";
    setStatus((await describeFailure("GET /models", response)) + hint, true);
    updateButton();
    return;
  }
  state.models = await response.json();
  $("model").replaceChildren(
    ...state.models.models.map((m) => new Option(m.name, m.name, m.default, m.default)),
  );
  fillVersions();
  setStatus("");
  updateButton();
  if (state.image) await segment();
}

function currentModel() {
  return state.models?.models.find((m) => m.name === $("model").value);
}

function currentVersion() {
  const model = currentModel();
  return model?.versions.find((v) => String(v.version) === $("version").value);
}

function fillVersions() {
  const model = currentModel();
  if (!model) return;
  $("version").replaceChildren(
    ...model.versions.map((v) => {
      const latest = v.version === model.latest_version;
      return new Option(latest ? `${v.version} (latest)` : String(v.version), v.version, latest, latest);
    }),
  );
}

// -- the image: a file, a drop, or a bundled example ---------------------------------------------
async function loadExamples() {
  const response = await fetch("/page/examples");
  if (!response.ok) return;
  const names = await response.json();
  $("example").append(...names.map((name) => new Option(name, name)));
}

function keepUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return url;
}

async function useImage(blob, name) {
  state.urls.forEach((url) => URL.revokeObjectURL(url));
  state.urls = [];
  state.image = blob;
  state.imageName = name || "image";
  const url = keepUrl(blob);
  $("input").src = url;
  $("under").src = url;
  updateButton();
  if (state.models) await segment();
}

function updateButton() {
  $("segment").disabled = !(state.image && state.models);
}

// -- one request, its overlay, legend, timings and downloads -------------------------------------
async function post(format) {
  const body = new FormData();
  body.append("image", state.image, state.imageName);
  const query = new URLSearchParams({ model: $("model").value, version: $("version").value, format });
  if ($("resize").value) query.set("resize", $("resize").value); // empty: the card's policy
  return fetch(`/segment?${query}`, { method: "POST", body, headers: authHeaders() });
}

async function segment() {
  const version = currentVersion();
  if (!state.image || !version) return;
  $("results").hidden = true;
  $("overlay").dataset.ready = "false";
  setStatus("segmenting…");
  const started = performance.now();
  const png = await post("png");
  if (!png.ok) {
    setStatus(await describeFailure("POST /segment", png), true);
    return;
  }
  const timing = png.headers.get("Server-Timing") || "";
  const answeredBy = `${png.headers.get("X-Model")} v${png.headers.get("X-Model-Version")}`;
  const mask = await png.blob();
  const counts = await drawOverlay(mask, version.classes);
  showLegend(counts, version.classes);
  showTiming(timing, performance.now() - started, answeredBy);
  $("download-png").href = keepUrl(mask);
  $("download-rle").hidden = true;
  if ($("want-rle").checked) {
    const rle = await post("rle");
    if (rle.ok) {
      $("download-rle").href = keepUrl(await rle.blob());
      $("download-rle").hidden = false;
    } else {
      setStatus(await describeFailure("POST /segment?format=rle", rle), true);
    }
  }
  $("results").hidden = false;
  $("overlay").dataset.ready = "true";
  if (!$("status").classList.contains("error")) setStatus("");
}

function colorKey(r, g, b) {
  return (r << 16) | (g << 8) | b;
}

// Draw the palette PNG on the canvas with the background class transparent; count each class.
async function drawOverlay(maskBlob, classes) {
  const bitmap = await createImageBitmap(maskBlob);
  const canvas = $("overlay");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const pixels = context.getImageData(0, 0, bitmap.width, bitmap.height);
  const idOf = new Map(classes.map((c) => [colorKey(...c.color), c.id]));
  const counts = new Map();
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const id = idOf.get(colorKey(data[i], data[i + 1], data[i + 2]));
    counts.set(id, (counts.get(id) || 0) + 1);
    if (id === 0) data[i + 3] = 0;
  }
  context.putImageData(pixels, 0, 0);
  canvas.style.opacity = $("opacity").value;
  return counts;
}

function showLegend(counts, classes) {
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const rows = classes
    .filter((c) => counts.get(c.id))
    .map((c) => {
      const row = document.createElement("tr");
      row.dataset.classId = c.id;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `rgb(${c.color.join(",")})`;
      const share = ((100 * counts.get(c.id)) / total).toFixed(1);
      row.append(cell(swatch), cell(String(c.id)), cell(c.label, "label"), cell(`${share} %`, "share"));
      return row;
    });
  $("legend").tBodies[0].replaceChildren(...rows);
}

function cell(content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.append(content);
  return td;
}

function showTiming(header, roundTripMs, answeredBy) {
  const rows = header
    .split(",")
    .map((part) => part.trim().match(/^(\w+);dur=([\d.]+)$/))
    .filter(Boolean)
    .map(([, name, ms]) => {
      const row = document.createElement("tr");
      row.dataset.stage = name;
      row.append(cell(name), cell(Number(ms).toFixed(2)));
      return row;
    });
  const total = document.createElement("tr");
  total.append(cell("round trip (browser)"), cell(roundTripMs.toFixed(1)));
  $("timing").tBodies[0].replaceChildren(...rows, total);
  $("answered").textContent = `answered by ${answeredBy}`;
}

// -- wiring ---------------------------------------------------------------------------------------
$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) useImage(file, file.name);
});
$("example").addEventListener("change", async (event) => {
  const name = event.target.value;
  if (!name) return;
  const response = await fetch(`/page/examples/${encodeURIComponent(name)}`);
  if (response.ok) await useImage(await response.blob(), name);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) useImage(file, file.name);
});
$("model").addEventListener("change", () => {
  fillVersions();
  segment();
});
$("version").addEventListener("change", () => segment());
$("resize").addEventListener("change", () => segment());
$("want-rle").addEventListener("change", () => segment());
$("segment").addEventListener("click", () => segment());
$("opacity").addEventListener("input", (event) => {
  $("overlay").style.opacity = event.target.value;
});
$("key").addEventListener("change", (event) => {
  apiKey = event.target.value.trim();
  loadModels();
});

loadExamples();
loadModels();
