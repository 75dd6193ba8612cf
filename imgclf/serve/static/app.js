// imgclf serve's page: pick or drop images, POST them to /predict in chunks, show each with its top-k bars.
"use strict";

const body = document.body;
const MAX_FILES = Number(body.dataset.maxFiles);
const MAX_BYTES = Number(body.dataset.maxBytes);
const TOPK = Number(body.dataset.topk);
const results = document.getElementById("results");
const statusLine = document.getElementById("status");

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;  // textContent: class and file names are never HTML
  return e;
}

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

async function showModel() {
  const r = await fetch("/model");
  const m = await r.json();
  const metrics = Object.entries(m.metrics)
    .filter(([k]) => ["accuracy", "valid_loss", "f1_multi", "mae", "rmse"].includes(k))
    .map(([k, v]) => `${k} ${k === "accuracy" ? (100 * v).toFixed(2) + "%" : v.toFixed(4)}`);
  document.getElementById("model").textContent =
    `${m.arch} (${m.backend}), ${m.task}, ${m.size} px, on ${m.device} · classes: ${m.classes.join(", ")}` +
    (metrics.length ? ` · ${metrics.join(", ")}` : "");
}

function card(file) {
  const c = el("div", "card");
  const img = el("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.addEventListener("error", () => img.replaceWith(el("div", "noimg", "no preview")));  // empty, not an image
  const b = el("div", "body");
  b.append(el("div", "name", file.name), el("div", "label", "…"));
  c.append(img, b);
  return c;
}

function fill(c, p) {
  const b = c.querySelector(".body");
  const conf = p.confidence === null ? "" : ` (${(100 * p.confidence).toFixed(1)}%)`;
  b.querySelector(".label").textContent = p.label === "" ? "(no tag)" : p.label + conf;
  for (const t of p.topk || []) {
    const row = el("div", "bar");
    const track = el("div", "track");
    const f = el("div", "fill");
    f.style.width = `${(100 * t.prob).toFixed(1)}%`;
    track.append(f);
    row.append(el("span", "cls", t.label), track, el("span", "pct", `${(100 * t.prob).toFixed(1)}%`));
    b.append(row);
  }
  if (p.value !== undefined) b.append(el("div", "", `value: ${p.value}`));
}

function fail(c, message) {
  const label = c.querySelector(".label");
  label.textContent = message;
  label.classList.add("error");
  c.classList.add("failed");
}

// Sends one chunk; answers how many of its files were refused. The server answers per file: a prediction, or
// {file, error, status} for a bad one (a 200 when any file was predicted, else a 4xx that may list them too).
async function send(files) {
  const cards = files.map(card);
  results.prepend(...cards);  // newest requests on top, each in the order its files were given
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  try {
    const r = await fetch(`/predict?topk=${TOPK}`, { method: "POST", body: form });
    const answer = await r.json();
    if (!Array.isArray(answer.predictions) || answer.predictions.length !== cards.length) {
      cards.forEach((c) => fail(c, answer.error || `HTTP ${r.status}`));
      return cards.length;
    }
    let refused = 0;
    answer.predictions.forEach((p, i) => {
      if (p.error !== undefined) {
        fail(cards[i], p.error);
        refused += 1;
      } else {
        fill(cards[i], p);
      }
    });
    return refused;
  } catch (e) {
    cards.forEach((c) => fail(c, String(e)));
    return cards.length;
  }
}

async function handle(fileList) {
  const files = Array.from(fileList);
  const tooBig = files.filter((f) => f.size > MAX_BYTES);
  const ok = files.filter((f) => f.size <= MAX_BYTES);
  for (const f of tooBig) {
    const c = card(f);
    results.prepend(c);
    fail(c, `${f.name}: over the limit of ${(MAX_BYTES / 2 ** 20).toFixed(0)} MB`);
  }
  let failed = tooBig.length;
  for (let i = 0; i < ok.length; i += MAX_FILES) {
    setStatus(`predicting ${Math.min(i + MAX_FILES, ok.length)} of ${ok.length}…`);
    const chunk = ok.slice(i, i + MAX_FILES);
    failed += await send(chunk);
  }
  setStatus(`${files.length - failed} image(s) predicted` + (failed ? `, ${failed} refused` : ""), failed > 0);
}

const input = document.getElementById("files");
input.addEventListener("change", () => { handle(input.files); input.value = ""; });
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handle(e.dataTransfer.files); });
showModel().catch((e) => setStatus(`cannot read /model: ${e}`, true));
