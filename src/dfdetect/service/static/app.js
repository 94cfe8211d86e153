// dfdetect upload page: posts the file to /api/v1/detect and draws the answer.
// Plain DOM and SVG, no libraries and no external URLs. Text from the server is set with textContent
// (never innerHTML), so a file name cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const fmt = (p) => (p === null || p === undefined ? "-" : p.toFixed(3));

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// P(fake) per sampled frame: each face as a dot, the frame's top face joined by a line, the threshold dashed.
function drawPlot(doc) {
  const W = 900, H = 240, L = 44, R = 12, T = 12, B = 30;
  const frames = doc.frames;
  const xs = frames.map((f) => f.index);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const sx = (i) => L + (x1 === x0 ? (W - L - R) / 2 : ((i - x0) / (x1 - x0)) * (W - L - R));
  const sy = (p) => T + (1 - p) * (H - T - B);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(el("svg:line", { x1: L, x2: W - R, y1: sy(p), y2: sy(p), class: "grid" }));
    svg.append(el("svg:text", { x: L - 6, y: sy(p) + 4, "text-anchor": "end" }, p.toFixed(2)));
  }
  svg.append(el("svg:line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.append(el("svg:line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  svg.append(el("svg:text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, "frame"));
  const thr = el("svg:line", { x1: L, x2: W - R, y1: sy(doc.threshold), y2: sy(doc.threshold), class: "thr" });
  thr.append(el("svg:title", {}, `threshold ${fmt(doc.threshold)}`));
  svg.append(thr);
  const withFace = frames.filter((f) => f.faces.length);
  if (withFace.length > 1) {
    const d = withFace.map((f, k) => `${k ? "L" : "M"}${sx(f.index).toFixed(1)},${sy(f.p_fake_max).toFixed(1)}`);
    svg.append(el("svg:path", { d: d.join(" "), class: "line" }));
  }
  for (const f of frames) {
    if (!f.faces.length) {  // a frame with no face: a small x on the axis
      const x = sx(f.index), y = H - B;
      svg.append(el("svg:path", { d: `M${x - 4},${y - 4} L${x + 4},${y + 4} M${x - 4},${y + 4} L${x + 4},${y - 4}`,
                                  class: "empty" }));
      continue;
    }
    for (const face of f.faces) {
      const c = el("svg:circle", { cx: sx(f.index), cy: sy(face.p_fake), r: 3, class: "face" });
      c.append(el("svg:title", {}, `frame ${f.index}: P(fake) ${fmt(face.p_fake)}`));
      svg.append(c);
    }
    svg.append(el("svg:circle", { cx: sx(f.index), cy: sy(f.p_fake_max), r: 3.5, class: "top" }));
  }
  $("plot").replaceChildren(svg);
}

function drawFaces(doc) {
  const cards = [];
  for (const f of doc.frames) {
    for (const face of f.faces) {
      const card = el("div", { class: "face-card" });
      const pair = el("div", { class: "pair" });
      if (face.crop_png) pair.append(el("img", { src: `data:image/png;base64,${face.crop_png}`, alt: "face crop" }));
      if (face.gradcam_png) {
        pair.append(el("img", { src: `data:image/png;base64,${face.gradcam_png}`, alt: "Grad-CAM heatmap" }));
      } else {
        pair.append(el("div", { class: "noheat" }, doc.explained ? "heatmaps only for the most likely fake faces"
                                                                  : "no heatmap (see the notes)"));
      }
      const kind = face.p_fake >= doc.threshold ? "fake" : "real";
      card.append(pair, el("div", { class: `label ${kind}` }, `frame ${f.index} \u00b7 P(fake) ${fmt(face.p_fake)}`));
      cards.push([face.gradcam_png ? 1 : 0, face.p_fake, card]);
    }
  }
  // faces with a heatmap (the most likely fake) first, then by score
  cards.sort((a, b) => b[0] - a[0] || b[1] - a[1]);
  $("faces-grid").replaceChildren(...cards.map((c) => c[2]));
}

function show(doc) {
  const verdict = $("verdict");
  verdict.dataset.verdict = doc.verdict;
  verdict.textContent = doc.verdict === "no_face" ? "no face" : doc.verdict;
  $("p-fake").textContent = fmt(doc.p_fake);
  $("p-mean").textContent = fmt(doc.p_fake_mean);
  $("threshold").textContent = fmt(doc.threshold);
  $("frames-used").textContent = `${doc.frames_with_face} / ${doc.frames_sampled}`;
  $("faces").textContent = String(doc.faces);
  $("file-name").textContent = `${doc.file} (${doc.kind}, faces found with ${doc.face_detector}, ` +
    `${doc.elapsed_s} s)`;
  $("notes").replaceChildren(...doc.notes.map((n) => el("li", {}, n)));
  drawPlot(doc);
  drawFaces(doc);
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const body = new FormData();
  body.append("file", file);
  $("submit").disabled = true;
  $("result").hidden = true;
  setStatus(`Uploading and scoring ${file.name}...`);
  try {
    const resp = await fetch("/api/v1/detect", { method: "POST", body });
    const doc = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
    if (!resp.ok) {
      setStatus(`Error ${resp.status}: ${doc.detail}`, true);
      return;
    }
    show(doc);
    setStatus("Done.");
  } catch (err) {
    setStatus(`Error: ${err}`, true);
  } finally {
    $("submit").disabled = !$("file").files.length;
  }
}

function init() {
  $("file").addEventListener("change", () => {
    $("submit").disabled = !$("file").files.length;
    if ($("file").files.length) $("drop-text").textContent = $("file").files[0].name;
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) {
      $("file").files = e.dataTransfer.files;
      $("file").dispatchEvent(new Event("change"));
    }
  });
  $("upload-form").addEventListener("submit", submit);
  fetch("/healthz").then((r) => r.json()).then((h) => {
    $("frames").textContent = String(h.frames);
    $("health").textContent = `service ok: ${h.model}, threshold ${fmt(h.threshold)}, faces by ${h.face_detector}, ` +
      `uploads up to ${(h.max_upload_bytes / 2 ** 20).toFixed(0)} MB`;
  }).catch(() => { $("health").textContent = "service unreachable"; });
}

init();
