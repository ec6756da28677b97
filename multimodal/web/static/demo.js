// The demo page: forms -> the JSON API of multimodal/web/app.py; every error the server sends is shown as one line.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 150;

// fetch -> parsed JSON; a non-2xx answer throws its {"error"} message
async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("the demo server does not answer: is it still running?");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    throw new Error((data && data.error) || `the server answered ${response.status} ${response.statusText}`);
  }
  return data;
}

function showError(id, message) {
  $(id).textContent = message || "";
}

// the smallest whole multiple of the image side that is at least 128 px (as multimodal.generate's grid shows them)
function cellSize(size) {
  return size * Math.max(1, Math.ceil(128 / size));
}

let info = null;

async function loadInfo() {
  try {
    info = await api("/api/info");
  } catch (e) {
    $("page-error").textContent = `could not load the demo's settings: ${e.message}`;
    $("page-error").hidden = false;
    return;
  }
  const src = info.sources;
  $("sources").textContent =
    `unCLIP: ${src.unclip} · CLIP: ${src.clip}` + (src.index ? ` · index: ${src.index}` : "") +
    ` · ${info.image_size} px images (${info.stages.join(" → ")})`;
  $("templates").textContent = info.templates.map((t) => `“${t}”`).join(", ");
  const limits = info.limits;
  $("n").max = limits.max_images;
  $("n").value = info.defaults.n;
  $("guidance").max = limits.max_guidance;
  $("guidance").value = info.defaults.guidance;
  $("prior-guidance").max = limits.max_guidance;
  $("prior-guidance").value = info.defaults.prior_guidance;
  $("steps").max = limits.max_steps;
  $("steps").value = info.defaults.steps;
  $("seed").max = limits.max_seed;
  $("search-k").max = limits.max_k;
  $("n-limit").textContent = `(1–${limits.max_images})`;
  $("guidance-limit").textContent = `(${limits.min_guidance}–${limits.max_guidance})`;
  $("steps-limit").textContent = `(1–${limits.max_steps})`;
  $("search-panel").hidden = !info.search;
}

// -- text to image ---------------------------------------------------------------------------------------------

async function generate(event) {
  event.preventDefault();
  showError("gen-error", "");
  const body = {
    prompt: $("prompt").value,
    n: $("n").value,
    guidance: $("guidance").value,
    prior_guidance: $("prior-guidance").value,
    steps: $("steps").value,
    seed: $("seed").value,
  };
  $("gen-button").disabled = true;
  try {
    let job = await api("/api/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    $("gen-progress").hidden = false;
    while (job.state === "running") {
      showProgress(job);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      job = await api(`/api/jobs/${job.job}`);
    }
    showProgress(job);
    if (job.state === "failed") throw new Error(job.error);
    showImages(job);
  } catch (e) {
    showError("gen-error", e.message);
  } finally {
    $("gen-button").disabled = false;
  }
}

function showProgress(job) {
  $("gen-bar").value = job.progress;
  const where = job.state === "done" ? `done: ${job.images.length} image(s)` : job.stage ?
    `${job.stage} step ${job.step}/${job.steps}` : "starting";
  $("gen-status").textContent = `${where} · ${job.seconds.toFixed(1)} s`;
}

function showImages(job) {
  const box = $("gen-images");
  box.replaceChildren();
  const cell = cellSize(info ? info.image_size : 128);
  job.images.forEach((url, i) => {
    const figure = document.createElement("figure");
    const link = document.createElement("a");
    link.href = url;
    link.download = `${job.request.prompt.replace(/[^a-z0-9]+/gi, "-")}-seed${job.request.seed}-${i}.png`;
    const img = document.createElement("img");
    img.src = url;
    img.width = cell;
    img.height = cell;
    img.alt = `${job.request.prompt}, image ${i + 1}`;
    link.append(img);
    const caption = document.createElement("figcaption");
    caption.textContent = `#${i + 1}`;
    figure.append(link, caption);
    box.append(figure);
  });
  const title = document.createElement("p");
  title.className = "images-title";
  const r = job.request;
  title.textContent = `“${r.prompt}” · seed ${r.seed} · guidance ${r.guidance} (prior ${r.prior_guidance}) · ` +
    `${r.steps} steps · ${job.seconds.toFixed(1)} s`;
  box.prepend(title);
}

// -- zero-shot ---------------------------------------------------------------------------------------------------

function preview(event) {
  const file = event.target.files[0];
  const img = $("zs-preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.hidden = !file;
  if (file) img.src = URL.createObjectURL(file);
}

async function classify(event) {
  event.preventDefault();
  showError("zs-error", "");
  const form = new FormData();
  const file = $("zs-image").files[0];
  if (file) form.append("image", file);
  form.append("labels", $("zs-labels").value);
  $("zs-button").disabled = true;
  try {
    const result = await api("/api/zeroshot", { method: "POST", body: form });
    const rows = result.labels.map((label, i) => [label, result.probs[i]]).sort((a, b) => b[1] - a[1]);
    const body = $("zs-table").querySelector("tbody");
    body.replaceChildren(...rows.map(([label, p], i) => {
      const tr = document.createElement("tr");
      if (i === 0) tr.className = "top";
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${(100 * p).toFixed(1)}%`;
      tr.append(cell(label), cell(p.toFixed(4), "num"), cell(bar, "bar-cell"));
      return tr;
    }));
    $("zs-table").hidden = false;
  } catch (e) {
    showError("zs-error", e.message);
    $("zs-table").hidden = true;
  } finally {
    $("zs-button").disabled = false;
  }
}

function cell(content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.append(content);
  return td;
}

// -- search ------------------------------------------------------------------------------------------------------

async function search(event) {
  event.preventDefault();
  showError("search-error", "");
  const form = new FormData();
  form.append("text", $("search-text").value);
  form.append("k", $("search-k").value);
  const file = $("search-image").files[0];
  if (file) form.append("image", file);
  $("search-button").disabled = true;
  try {
    const result = await api("/api/search", { method: "POST", body: form });
    const body = $("search-table").querySelector("tbody");
    body.replaceChildren(...result.hits.map((hit) => {
      const tr = document.createElement("tr");
      const text = [hit.caption, hit.label].filter((v) => v !== null && v !== undefined && v !== "").join(" · ");
      const thumb = document.createElement("img");
      if (hit.image) {
        thumb.src = hit.image;
        thumb.alt = hit.key;
        thumb.className = "thumb";
      }
      tr.append(cell(String(hit.rank), "num"), cell(Number(hit.score).toFixed(4), "num"),
        cell(hit.image ? thumb : ""), cell(String(hit.key)), cell(text || hit.path || ""));
      return tr;
    }));
    $("search-table").hidden = false;
  } catch (e) {
    showError("search-error", e.message);
    $("search-table").hidden = true;
  } finally {
    $("search-button").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("gen-form").addEventListener("submit", generate);
  $("seed-button").addEventListener("click", () => {
    $("seed").value = Math.floor(Math.random() * 1000000);
  });
  $("zs-image").addEventListener("change", preview);
  $("zs-form").addEventListener("submit", classify);
  $("search-form").addEventListener("submit", search);
  loadInfo();
});
