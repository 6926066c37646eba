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

// The class id of every pixel, read from the palette PNG's own bytes (8-bit, as segserve
// writes it): the browser's decoder gives colours, and two classes of a card may share one.
async function classIds(maskBlob) {
  const bytes = new Uint8Array(await maskBlob.arrayBuffer());
  const view = new DataView(bytes.buffer);
  const compressed = [];
  let width = 0;
  let height = 0;
  for (let at = 8; at + 8 <= bytes.length; ) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (type === "IHDR") [width, height] = [view.getUint32(at + 8), view.getUint32(at + 12)];
    if (type === "IDAT") compressed.push(bytes.subarray(at + 8, at + 8 + length));
    at += 12 + length;
  }
  const inflated = new Blob(compressed).stream().pipeThrough(new DecompressionStream("deflate"));
  const rows = new Uint8Array(await new Response(inflated).arrayBuffer());
  const ids = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    const filter = rows[y * (width + 1)];
    const line = rows.subarray(y * (width + 1) + 1, (y + 1) * (width + 1));
    const out = ids.subarray(y * width, (y + 1) * width);
    const up = y ? ids.subarray((y - 1) * width, y * width) : new Uint8Array(width);
    for (let x = 0; x < width; x++) {
      const a = x ? out[x - 1] : 0;
      const b = up[x];
      const c = x ? up[x - 1] : 0;
      out[x] = (line[x] + predict(filter, a, b, c)) & 255;
    }
  }
  return { width, height, ids };
}

// PNG's filter predictors (RFC 2083, 6.2): none, left, up, their average, Paeth.
function predict(filter, a, b, c) {
  if (filter === 1) return a;
  if (filter === 2) return b;
  if (filter === 3) return (a + b) >> 1;
  if (filter === 4) {
    const p = a + b - c;
    const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
  }
  return 0;
}

// Paint the class colours on the canvas with the background class transparent; count each class.
async function drawOverlay(maskBlob, classes) {
  const { width, height, ids } = await classIds(maskBlob);
  const canvas = $("overlay");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  const rgba = new Uint32Array(256); // little-endian words: 0xAABBGGRR
  for (const c of classes) {
    const [r, g, b] = c.color;
    rgba[c.id] = ((c.id === 0 ? 0 : 255) << 24) | (b << 16) | (g << 8) | r;
  }
  const painted = new Uint32Array(pixels.data.buffer);
  const perClass = new Uint32Array(256);
  for (let i = 0; i < ids.length; i++) {
    painted[i] = rgba[ids[i]];
    perClass[ids[i]] += 1;
  }
  context.putImageData(pixels, 0, 0);
  canvas.style.opacity = $("opacity").value;
  return new Map([...perClass.entries()].filter(([, n]) => n));
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
// An image the browser cannot show (TIFF in most browsers) is still segmented: the mask then
// stands alone, at its own size, instead of over a picture of no height.
$("under").addEventListener("error", () => $("stack").classList.add("mask-alone"));
$("under").addEventListener("load", () => $("stack").classList.remove("mask-alone"));
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
