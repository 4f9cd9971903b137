// nninv explore: the page's logic. Plain JavaScript, no libraries; talks to /api/*.
"use strict";

const state = { info: null, view: null, member: null, drawing: null, busy: false, pending: null };
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) {
    const d = data.detail;
    const msg = typeof d === "string" ? d : (d || []).map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
    throw new Error(msg || r.statusText);
  }
  return data;
}

function say(text) { $("message").textContent = text || ""; }

// --- drawing images and bars ------------------------------------------------------------

function drawImage(canvas, x) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!x) return;
  const [h, w] = state.info.display_shape;
  const [lo, hi] = state.info.bounds;
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const v = Math.round(255 * Math.min(1, Math.max(0, (x[i] - lo) / (hi - lo))));
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v;
    img.data[4 * i + 3] = 255;
  }
  const tmp = document.createElement("canvas");
  tmp.width = w; tmp.height = h;
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, 0, 0, canvas.width, canvas.height);
}

// Bars by signed value: each starts at the left edge, which stands for min(0, min y), so a
// bar's length grows with the value itself and the winning output is always the longest
// (a logit of -7.97 is short, not longer than a winning +6.78); with outputs >= 0
// (probabilities) the left edge is 0 and a bar's length is proportional to its value.
// Negative values are drawn in another colour; a thin line marks zero.
function barGeometry(y) {
  const lo = Math.min(0, ...y), hi = Math.max(0, ...y);
  const span = Math.max(1e-12, hi - lo);
  return {
    widths: y.map((v) => (100 * (v - lo)) / span),
    zero: (100 * -lo) / span,
  };
}

function drawBars(el, y) {
  el.innerHTML = "";
  if (!y) return;
  const top = y.indexOf(Math.max(...y));
  const { widths, zero } = barGeometry(y);
  y.forEach((v, k) => {
    const lab = document.createElement("span");
    lab.textContent = k;
    const track = document.createElement("div");
    track.className = "track";
    track.style.setProperty("--zero", `${zero}%`);
    const bar = document.createElement("div");
    bar.className = "bar" + (k === top ? " top" : "") + (v < 0 ? " neg" : "");
    bar.style.width = `${widths[k]}%`;
    track.append(bar);
    const val = document.createElement("span");
    val.className = "out-value";
    val.dataset.value = String(v);
    val.textContent = v.toFixed(7);
    el.append(lab, track, val);
  });
}

function range(x) {
  let lo = Infinity, hi = -Infinity;
  for (const v of x) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return `[${lo.toFixed(2)}, ${hi.toFixed(2)}]`;
}

// --- choosing a target ----------------------------------------------------------------------

async function select(body) {
  say("computing…");
  try {
    const v = await api("/api/select", body);
    state.view = v;
    showView(v);
    say(v.note ? `note: ${v.note}` : "");
  } catch (e) { say(e.message); }
}

function showView(v) {
  drawImage($("original"), v.image);
  const lab = v.label === null ? "" : `label ${v.label}, `;
  $("target-caption").textContent = v.image ? `${lab}its output y = f(x):` : "the typed output y:";
  drawBars($("target-bars"), v.y);
  const gal = $("inversions");
  gal.innerHTML = "";
  const base = $("base");
  base.innerHTML = "";
  if (v.image) base.append(new Option("the test image", "image"));
  for (const inv of v.inversions) {
    const fig = document.createElement("figure");
    const c = document.createElement("canvas");
    c.width = c.height = 112; c.className = "img"; c.dataset.method = inv.name;
    drawImage(c, inv.x);
    const cap = document.createElement("figcaption");
    cap.className = "caption";
    cap.textContent = inv.x
      ? `${inv.name}: residual ${inv.residual.toExponential(1)}, values ${range(inv.x)}`
      : `${inv.name}: ${inv.error}`;
    fig.append(c, cap);
    gal.append(fig);
    if (inv.x) base.append(new Option(inv.name, inv.name));
  }
  if ([...base.options].some((o) => o.value === "gaussian")) base.value = "gaussian";
  makeSliders(v);
  $("preimage-info").textContent = v.kind
    ? `preimage: ${v.kind}, dimension ${v.dim}${v.bounded ? " (within the bounds)" : " (no bounds)"}`
    : "preimage: the true curved set, by Gauss-Newton projection";
  const cls = $("closest-class");
  cls.innerHTML = "";
  cls.append(new Option("runner-up", ""));
  for (let k = 0; k < state.info.n_outputs; k++) cls.append(new Option(String(k), String(k)));
  $("closest-from").value = v.image ? "image" : "member";
  drawImage($("closest"), null);
  $("closest-info").textContent = "";
  drawBars($("closest-bars"), null);
  // a new target: the canvas starts again from its image (blank for a typed output)
  startDrawing(v.image);
  drawImage($("projected"), null);
  drawBars($("drawn-bars"), null);
  drawBars($("projected-bars"), null);
  $("projected-caption").textContent = "closest member of the preimage";
  slide();
}

// --- sliders ------------------------------------------------------------------------------

function makeSliders(v) {
  const box = $("sliders");
  box.innerHTML = "";
  for (let i = 0; i < v.sliders; i++) {
    const lab = document.createElement("span");
    lab.textContent = `d${i + 1}`;
    const s = document.createElement("input");
    Object.assign(s, { type: "range", min: -3, max: 3, step: 0.05, value: 0, className: "slider" });
    s.dataset.index = i;
    s.title = `prior std along this direction: ${v.spread[i].toFixed(3)}`;
    const val = document.createElement("span");
    val.textContent = "0.00";
    s.addEventListener("input", () => { val.textContent = Number(s.value).toFixed(2); slide(); });
    box.append(lab, s, val);
  }
}

function coefs() { return [...document.querySelectorAll("#sliders .slider")].map((s) => Number(s.value)); }

// one request in flight at a time; the latest slider position wins
async function slide() {
  if (!state.view) return;
  const body = { view: state.view.view, base: $("base").value, coefs: coefs() };
  if (state.busy) { state.pending = body; return; }
  state.busy = true;
  let next = body;
  while (next) {
    state.pending = null;
    try {
      const r = await api("/api/slide", next);
      state.member = r.x;
      drawImage($("member"), r.x);
      $("member").dataset.seq = String(Number($("member").dataset.seq || 0) + 1);
      $("member-caption").textContent =
        `|f(x) - y| = ${r.residual.toExponential(1)} · ${r.seconds * 1000 < 1 ? "<1" : (r.seconds * 1000).toFixed(0)} ms`;
      drawBars($("member-bars"), r.output);
    } catch (e) { say(e.message); }
    next = state.pending;
  }
  state.busy = false;
}

// --- drawing --------------------------------------------------------------------------------

function startDrawing(x) {
  state.drawing = Float64Array.from(x || new Array(state.info.n_inputs).fill(state.info.bounds[0]));
  drawImage($("draw"), state.drawing);
}

function setupCanvas() {
  const c = $("draw");
  let down = false;
  const paint = (ev) => {
    if (!state.drawing) return;
    const [h, w] = state.info.display_shape;
    const [lo, hi] = state.info.bounds;
    const rect = c.getBoundingClientRect();
    const px = Math.floor(((ev.clientX - rect.left) / rect.width) * w);
    const py = Math.floor(((ev.clientY - rect.top) / rect.height) * h);
    const r = Number($("pen-size").value) / 2;
    const ink = document.querySelector("input[name=pen]:checked").value === "1" ? hi : lo;
    for (let yy = Math.floor(py - r); yy <= Math.ceil(py + r); yy++) {
      for (let xx = Math.floor(px - r); xx <= Math.ceil(px + r); xx++) {
        if (xx < 0 || yy < 0 || xx >= w || yy >= h) continue;
        const d2 = (xx - px) ** 2 + (yy - py) ** 2;
        if (d2 > r * r + 0.5) continue;
        state.drawing[yy * w + xx] = ink === hi ? Math.max(state.drawing[yy * w + xx], ink * (d2 <= r * r - 0.5 ? 1 : 0.6)) : lo;
      }
    }
    drawImage(c, state.drawing);
  };
  c.addEventListener("pointerdown", (ev) => { down = true; c.setPointerCapture(ev.pointerId); paint(ev); });
  c.addEventListener("pointermove", (ev) => { if (down) paint(ev); });
  const up = () => { if (down) { down = false; project(); } };
  c.addEventListener("pointerup", up);
  c.addEventListener("pointercancel", up);
}

async function project() {
  if (!state.view || !state.drawing) return;
  try {
    const r = await api("/api/project", { view: state.view.view, x: Array.from(state.drawing) });
    drawImage($("projected"), r.x);
    $("projected").dataset.seq = String(Number($("projected").dataset.seq || 0) + 1);
    drawBars($("drawn-bars"), r.output_drawn);
    drawBars($("projected-bars"), r.output);
    $("projected-caption").textContent =
      `closest member: moved ${r.distance.toFixed(2)} (L2) · |f(x) - y| = ${r.residual.toExponential(1)} ` +
      `(the drawing itself: ${r.residual_drawn.toExponential(1)}) · ${(r.seconds * 1000).toFixed(0)} ms`;
  } catch (e) { say(e.message); }
}

// --- closest other class ----------------------------------------------------------------

async function findClosest() {
  if (!state.view) return;
  const body = { view: state.view.view, norm: $("closest-norm").value };
  const lab = $("closest-class").value;
  if (lab !== "") body.label = Number(lab);
  if ($("closest-from").value === "member" || !state.view.image) body.x = state.member;
  $("closest-info").textContent = "solving…";
  try {
    const r = await api("/api/closest", body);
    drawImage($("closest"), r.x);
    $("closest-info").textContent = r.x
      ? `class ${r.label}: distance ${r.distance.toFixed(4)} (${r.norm}), proven lower bound ` +
        `${r.bound.toFixed(4)}, status ${r.status}, ${r.seconds.toFixed(2)} s`
      : `class ${r.label}: ${r.status}, no input found (bound ${r.bound})`;
    drawBars($("closest-bars"), r.output);
  } catch (e) { $("closest-info").textContent = e.message; }
}

// --- wiring -----------------------------------------------------------------------------------

async function main() {
  state.info = await api("/api/info");
  const i = state.info;
  $("model-info").textContent =
    `${i.model}: ${i.n_inputs} inputs -> ${i.n_outputs} outputs · ${i.n_images} test images · ` +
    `inversions: ${i.inversions.join(", ")}`;
  $("image-index").max = i.n_images - 1;
  $("pick").onclick = () => select({ image: Number($("image-index").value) });
  $("prev").onclick = () => { $("image-index").value = Math.max(0, Number($("image-index").value) - 1); $("pick").onclick(); };
  $("next").onclick = () => { $("image-index").value = Math.min(i.n_images - 1, Number($("image-index").value) + 1); $("pick").onclick(); };
  $("use-output").onclick = () => {
    const y = $("output-text").value.split(/[\s,]+/).filter((s) => s.length).map(Number);
    select({ output: y });
  };
  $("base").onchange = slide;
  $("reset-sliders").onclick = () => { document.querySelectorAll("#sliders .slider").forEach((s) => { s.value = 0; s.dispatchEvent(new Event("input")); }); };
  $("draw-from-member").onclick = () => startDrawing(state.member);
  $("closest-btn").onclick = findClosest;
  setupCanvas();
  await select({ image: 0 });
  document.body.dataset.ready = "1";
}

main().catch((e) => say(e.message));
