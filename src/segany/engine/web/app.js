// segany annotation page: the prompt encoder + mask decoder run here (onnxruntime-web) on the
// image embedding the server computed once, so each click answers without a round trip
// (paper section 4, assisted-manual stage). The server only stores accepted masks.
//
// Frames: every mask and prompt here is in the ORIGINAL image frame (H x W pixels); prompts
// are scaled to the model's input frame (longest side = img_size) only when fed to the
// decoder, exactly like ResizeLongestSide.apply_coords in Python.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || sessionStorage.getItem("segany-token") || "";
  if (params.get("token")) {
    sessionStorage.setItem("segany-token", token);
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
  }
  // Opaque pixels; the layer's CSS opacity makes them an overlay, so the canvas holds exact
  // colours (semi-transparent pixels would be premultiplied and read back rounded).
  const CURRENT_RGBA = [30, 144, 255, 255];
  const PALETTE = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [245, 130, 48], [145, 30, 180],
    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
    [170, 110, 40], [128, 0, 0], [170, 255, 195], [128, 128, 0], [0, 0, 128]];

  // Decoder graphs: "session" is the official contract (embedding + prompts + optional mask
  // prompt); "cacheSession" turns each embedding into the decoder's per-image cache once and
  // "clickSession" decodes every click from that cache (the same numbers, less work per
  // click; a fed-back mask is a rank-16 update of the cache). ?fast=0 uses the official
  // graph only (A/B measurements); ?feedback=0 never feeds the previous mask back (as the
  // official demo does), which costs accuracy (docs/engine.md).
  const FAST = params.get("fast") !== "0";
  const FEEDBACK = params.get("feedback") !== "0";
  const S = {
    model: null, session: null, cacheSession: null, clickSession: null, images: [], index: 0,
    H: 0, W: 0, inH: 0, inW: 0, embedding: null, cache: null, bitmap: null,
    accepted: [], selected: null, mode: "point", brush: 8,
    cur: null, undo: [], redo: [], latencies: [], clickLatencies: [], decodes: 0,
    threads: 1, threadProbe: null, // wasm threads in use, and the probe that chose them (threads.js)
  };
  window.segany = S; // for tests and benchmarks

  const setState = (s, msg) => { document.body.dataset.state = s; if (msg !== undefined) $("status").textContent = msg; };
  const annotator = () => $("annotator").value.trim() || "annotator";

  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {}, { Authorization: "Bearer " + token, "X-Annotator": annotator() });
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not json */ }
      throw new Error(`${path}: ${r.status} ${detail}`);
    }
    return r;
  }

  // ------------------------------------------------------------------ current mask state

  function emptyCurrent() {
    return {
      points: [], box: null, choice: null, maskInput: null, // prompts + the low-res logits fed in
      logits: null, iou: null, lowRes: null, nMasks: 0, // last decoder outputs
      edits: null, // Int8Array H*W: +1 painted, -1 erased
      replaces: null, source: "manual", startedAt: performance.now(),
      clicks: 0, // prompts placed (clicks and boxes, undone ones too): the effort the report counts
    };
  }

  function snapshot() {
    const c = S.cur;
    return {
      points: c.points.map((p) => Object.assign({}, p)), box: c.box && Object.assign({}, c.box), choice: c.choice,
      maskInput: c.maskInput, edits: c.edits && c.edits.slice(), replaces: c.replaces, source: c.source,
    };
  }

  function pushUndo() { S.undo.push(snapshot()); S.redo = []; }

  async function restore(snap) {
    Object.assign(S.cur, snap, { logits: null, iou: null, lowRes: null, nMasks: 0 });
    await decode(false);
  }

  async function undo() { if (!S.undo.length) return; S.redo.push(snapshot()); await restore(S.undo.pop()); }
  async function redo() { if (!S.redo.length) return; S.undo.push(snapshot()); await restore(S.redo.pop()); }

  // ------------------------------------------------------------------ decoder

  async function decode(feedBack = true) {
    const c = S.cur;
    if (!c.points.length && !c.box) {
      c.logits = null; c.iou = null; c.lowRes = null; c.nMasks = 0;
      render(); return;
    }
    const sx = S.inW / S.W, sy = S.inH / S.H;
    const coords = [], labels = [];
    for (const p of c.points) { coords.push(p.x * sx, p.y * sy); labels.push(p.label); }
    if (c.box) { coords.push(c.box.x0 * sx, c.box.y0 * sy, c.box.x1 * sx, c.box.y1 * sy); labels.push(2, 3); }
    else { coords.push(0, 0); labels.push(-1); } // padding point, as the model was trained
    const n = labels.length;
    const hasMask = c.maskInput !== null;
    const prompts = {
      point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
      point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
      orig_im_size: new ort.Tensor("float32", Float32Array.from([S.H, S.W]), [2]),
    };
    Object.assign(prompts, {
      mask_input: new ort.Tensor("float32", hasMask ? c.maskInput : new Float32Array(256 * 256), [1, 1, 256, 256]),
      has_mask_input: new ort.Tensor("float32", Float32Array.from([hasMask ? 1 : 0]), [1]),
    });
    const fast = S.cache !== null;
    const feeds = Object.assign(fast ? { ...S.cache } : { image_embeddings: S.embedding }, prompts);
    setState("decoding");
    const t0 = performance.now();
    const out = await (fast ? S.clickSession : S.session).run(feeds);
    const dt = performance.now() - t0;
    S.latencies.push(dt);
    S.decodes += 1;
    S.latestFast = fast;
    c.logits = out.masks.data; c.iou = out.iou_predictions.data; c.lowRes = out.low_res_masks.data;
    c.nMasks = out.iou_predictions.dims[1];
    if (!singleClick()) c.choice = 0; // several prompts: the single-output mask
    else if (c.choice === null || c.choice === 0) c.choice = bestMultimask();
    showLatency(dt);
    setState("ready", statusText());
    render();
    return dt;
  }

  const singleClick = () => S.cur.points.length === 1 && !S.cur.box;

  function bestMultimask() {
    let best = 1;
    for (let i = 2; i < S.cur.nMasks; i++) if (S.cur.iou[i] > S.cur.iou[best]) best = i;
    return best;
  }

  function lowResOf(choice) { return S.cur.lowRes.slice(choice * 65536, (choice + 1) * 65536); }

  function showLatency(dt) {
    const sorted = S.latencies.slice().sort((a, b) => a - b);
    const med = sorted[Math.floor(sorted.length / 2)];
    const path = S.decodes && S.latestFast ? "cached" : "full";
    const threads = `${S.threads} wasm thread${S.threads === 1 ? "" : "s"}`;
    $("latency").textContent = `decoder ${dt.toFixed(1)} ms, ${path} graph, ${threads} (median ${med.toFixed(1)} ms over ${sorted.length})`;
  }

  // The mask the annotator sees: decoder output, plus brush, minus eraser (Uint8Array H*W).
  function currentMask() {
    const c = S.cur, N = S.H * S.W;
    if (!c.logits && !c.edits) return null;
    const m = new Uint8Array(N);
    if (c.logits) {
      const off = c.choice * N;
      for (let i = 0; i < N; i++) m[i] = c.logits[off + i] > 0 ? 1 : 0;
    }
    if (c.edits) for (let i = 0; i < N; i++) { if (c.edits[i] > 0) m[i] = 1; else if (c.edits[i] < 0) m[i] = 0; }
    return m;
  }

  // ------------------------------------------------------------------ drawing

  function render() {
    const N = S.H * S.W;
    const ctx = $("mask-layer").getContext("2d");
    const img = ctx.createImageData(S.W, S.H);
    const d = img.data;
    S.accepted.forEach((a, k) => {
      if (S.cur.replaces === a.id) return; // being edited: shown as the current mask
      const col = PALETTE[k % PALETTE.length];
      const f = a.id === S.selected ? 0.6 : 1.0; // the selected mask is drawn darker
      for (let i = 0; i < N; i++) if (a.mask[i]) { const o = 4 * i; d[o] = col[0] * f; d[o + 1] = col[1] * f; d[o + 2] = col[2] * f; d[o + 3] = 255; }
    });
    const m = currentMask();
    if (m) for (let i = 0; i < N; i++) if (m[i]) { const o = 4 * i; d[o] = CURRENT_RGBA[0]; d[o + 1] = CURRENT_RGBA[1]; d[o + 2] = CURRENT_RGBA[2]; d[o + 3] = CURRENT_RGBA[3]; }
    ctx.putImageData(img, 0, 0);
    drawPrompts();
    for (let k = 1; k <= 3; k++) {
      const b = $("choice-" + k);
      b.disabled = !(singleClick() && S.cur.nMasks === 4);
      b.classList.toggle("active", !b.disabled && S.cur.choice === k);
    }
    renderList();
  }

  function drawPrompts(dragBox) {
    const cv = $("prompt-layer"), ctx = cv.getContext("2d");
    ctx.clearRect(0, 0, cv.width, cv.height);
    const r = Math.max(3, Math.round(Math.max(S.W, S.H) / 120));
    for (const p of S.cur.points) {
      ctx.beginPath(); ctx.arc(p.x + 0.5, p.y + 0.5, r, 0, 2 * Math.PI);
      ctx.fillStyle = p.label === 1 ? "#00e000" : "#ff2020"; ctx.fill();
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff"; ctx.stroke();
    }
    const b = dragBox || S.cur.box;
    if (b) { ctx.lineWidth = 2; ctx.strokeStyle = "#ffd700"; ctx.strokeRect(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0); }
  }

  function renderList() {
    const ol = $("mask-list");
    ol.innerHTML = "";
    S.accepted.forEach((a, k) => {
      const li = document.createElement("li");
      const col = PALETTE[k % PALETTE.length];
      li.innerHTML = `<span class="swatch" style="background: rgb(${col})"></span>#${a.id} ${a.source} ` +
        `${a.area} px · ${a.seconds.toFixed(1)} s` + (a.clicks === null || a.clicks === undefined ? "" : ` · ${a.clicks} clicks`);
      if (a.id === S.selected) li.classList.add("selected");
      li.onclick = () => { S.selected = a.id; render(); };
      const edit = document.createElement("button"); edit.textContent = "edit";
      edit.onclick = (e) => { e.stopPropagation(); editAccepted(a); };
      const del = document.createElement("button"); del.textContent = "delete";
      del.onclick = (e) => { e.stopPropagation(); deleteMask(a.id); };
      li.append(edit, del);
      ol.appendChild(li);
    });
  }

  const statusText = () => `${S.images.length ? S.index + 1 : 0}/${S.images.length} · ${S.accepted.length} masks · model ${S.model ? S.model.model_version : "?"}`;

  // ------------------------------------------------------------------ pointer input

  function toImage(e) {
    const rect = $("prompt-layer").getBoundingClientRect();
    const x = Math.floor((e.clientX - rect.left) * S.W / rect.width);
    const y = Math.floor((e.clientY - rect.top) * S.H / rect.height);
    return { x: Math.min(S.W - 1, Math.max(0, x)), y: Math.min(S.H - 1, Math.max(0, y)) };
  }

  let drag = null;

  function paint(p) {
    const c = S.cur;
    if (!c.edits) c.edits = new Int8Array(S.H * S.W);
    const v = S.mode === "brush" ? 1 : -1, r = S.brush;
    for (let y = Math.max(0, p.y - r); y <= Math.min(S.H - 1, p.y + r); y++) {
      for (let x = Math.max(0, p.x - r); x <= Math.min(S.W - 1, p.x + r); x++) {
        if ((x - p.x) ** 2 + (y - p.y) ** 2 <= r * r) c.edits[y * S.W + x] = v;
      }
    }
  }

  function onDown(e) {
    if (!S.session || !S.embedding) return;
    e.preventDefault();
    const p = toImage(e);
    drag = { start: p, button: e.button, moved: false, t0: performance.now() };
    if (S.mode !== "point") { pushUndo(); paint(p); render(); }
  }

  function onMove(e) {
    if (!drag) return;
    const p = toImage(e);
    if (S.mode !== "point") { paint(p); render(); return; }
    const scale = S.W / $("prompt-layer").getBoundingClientRect().width;
    if (Math.abs(p.x - drag.start.x) + Math.abs(p.y - drag.start.y) > 6 * scale) drag.moved = true;
    if (drag.moved) drawPrompts(boxFrom(drag.start, p));
  }

  const boxFrom = (a, b) => ({ x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y), x1: Math.max(a.x, b.x), y1: Math.max(a.y, b.y) });

  async function onUp(e) {
    if (!drag) return;
    const d = drag; drag = null;
    if (S.mode !== "point") return;
    const p = toImage(e);
    pushUndo();
    const c = S.cur;
    if (c.lowRes && FEEDBACK) c.maskInput = lowResOf(c.choice); // previous logits refine the next prediction
    if (d.moved) c.box = boxFrom(d.start, p);
    else c.points.push({ x: d.start.x, y: d.start.y, label: d.button === 2 ? 0 : 1 });
    c.clicks += 1;
    await decode();
    S.clickLatencies.push(performance.now() - d.t0); // press -> mask drawn
  }

  // ------------------------------------------------------------------ accept / delete / edit

  function encodeRuns(mask) {
    // uncompressed COCO RLE: column-major runs starting with a run of zeros
    const counts = [];
    let prev = 0, run = 0;
    for (let x = 0; x < S.W; x++) {
      for (let y = 0; y < S.H; y++) {
        const v = mask[y * S.W + x];
        if (v !== prev) { counts.push(run); run = 0; prev = v; }
        run++;
      }
    }
    counts.push(run);
    return counts;
  }

  function decodeRuns(counts) {
    const m = new Uint8Array(S.H * S.W);
    let pos = 0, v = 0;
    for (const n of counts) {
      if (v) for (let k = pos; k < pos + n; k++) { const x = Math.floor(k / S.H), y = k % S.H; m[y * S.W + x] = 1; }
      pos += n; v ^= 1;
    }
    return m;
  }

  const uuid = () => (crypto.randomUUID ? crypto.randomUUID() : Date.now() + "-" + Math.random().toString(16).slice(2));

  async function accept() {
    const m = currentMask();
    if (!m || !m.some((v) => v)) { $("status").textContent = "nothing to accept"; return; }
    const c = S.cur;
    const body = {
      size: [S.H, S.W], counts: encodeRuns(m), source: c.source,
      seconds: (performance.now() - c.startedAt) / 1000,
      score: c.iou ? c.iou[c.choice] : null, client_id: uuid(), replaces: c.replaces, clicks: c.clicks,
    };
    setState("saving", "saving…");
    let r;
    for (let attempt = 0; ; attempt++) { // the client_id makes a retried save idempotent
      try { r = await api(`/api/images/${S.images[S.index].id}/masks`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }); break; }
      catch (err) { if (attempt >= 2) { setState("error", "save failed: " + err.message); return; } }
    }
    const saved = await r.json();
    S.cur = emptyCurrent(); S.undo = []; S.redo = [];
    await loadMasks();
    S.selected = saved.id;
    setState("ready", statusText());
    render();
    document.body.dataset.lastSaved = saved.id;
  }

  async function deleteMask(id) {
    if (id === null || id === undefined) return;
    await api(`/api/masks/${id}`, { method: "DELETE" });
    if (S.selected === id) S.selected = null;
    await loadMasks();
    render();
  }

  function editAccepted(a) {
    S.cur = emptyCurrent(); S.undo = []; S.redo = [];
    S.cur.edits = new Int8Array(S.H * S.W);
    for (let i = 0; i < a.mask.length; i++) if (a.mask[i]) S.cur.edits[i] = 1;
    S.cur.replaces = a.id; S.cur.source = a.source;
    setMode("brush");
    render();
  }

  function clearCurrent() {
    // a fresh start on the same mask: its time and the prompts spent so far still count
    pushUndo(); const keep = S.cur.startedAt, clicks = S.cur.clicks;
    S.cur = emptyCurrent(); S.cur.startedAt = keep; S.cur.clicks = clicks; render();
  }

  // ------------------------------------------------------------------ images

  async function loadMasks() {
    const rows = await (await api(`/api/images/${S.images[S.index].id}/masks?runs=1`)).json();
    S.accepted = rows.map((r) => Object.assign(r, { mask: decodeRuns(r.runs) }));
  }

  async function showImage(i) {
    if (!S.images.length) { setState("ready", "no images"); return; }
    S.index = (i + S.images.length) % S.images.length;
    const info = S.images[S.index];
    setState("loading", `loading ${info.name}…`);
    $("image-name").textContent = info.name;
    const [imgResp, embResp] = await Promise.all([api(`/api/images/${info.id}/file`), api(`/api/images/${info.id}/embedding`)]);
    S.bitmap = await createImageBitmap(await imgResp.blob());
    const [h, w] = embResp.headers.get("X-Original-Size").split(",").map(Number);
    const [ih, iw] = embResp.headers.get("X-Input-Size").split(",").map(Number);
    const shape = embResp.headers.get("X-Embedding-Shape").split(",").map(Number);
    S.embedding = new ort.Tensor("float32", new Float32Array(await embResp.arrayBuffer()), shape);
    S.cache = null;
    if (S.cacheSession) { // the per-image half of the decoder, once (outputs by name = the click graph's inputs)
      const t0 = performance.now();
      S.cache = await S.cacheSession.run({ image_embeddings: S.embedding });
      S.cacheMs = performance.now() - t0;
    }
    S.H = h; S.W = w; S.inH = ih; S.inW = iw;
    for (const id of ["image-layer", "mask-layer", "prompt-layer"]) {
      const cv = $(id); cv.width = w; cv.height = h;
      const maxW = Math.max(300, window.innerWidth - 320);
      const scale = Math.min(1.6, maxW / w);
      cv.style.width = Math.round(w * scale) + "px"; cv.style.height = Math.round(h * scale) + "px";
    }
    $("image-layer").getContext("2d").drawImage(S.bitmap, 0, 0);
    S.cur = emptyCurrent(); S.undo = []; S.redo = []; S.selected = null;
    await loadMasks();
    setState("ready", statusText());
    render();
  }

  async function prefill() {
    setState("loading", "pre-filling (automatic masks)…");
    try { await api(`/api/images/${S.images[S.index].id}/prefill`, { method: "POST" }); }
    catch (err) { setState("ready", "pre-fill unavailable: " + err.message); return; }
    await loadMasks();
    setState("ready", statusText());
    render();
  }

  // ------------------------------------------------------------------ controls

  function setMode(m) {
    S.mode = m;
    for (const k of ["point", "brush", "eraser"]) $("mode-" + k).classList.toggle("active", k === m);
  }

  function choose(k) {
    if (!singleClick() || S.cur.nMasks !== 4) return;
    pushUndo(); S.cur.choice = k; render();
  }

  function bind() {
    const layer = $("prompt-layer");
    layer.addEventListener("mousedown", onDown);
    window.addEventListener("mousemove", onMove);
    window.addEventListener("mouseup", (e) => { onUp(e).catch(fail); });
    layer.addEventListener("contextmenu", (e) => e.preventDefault());
    $("mode-point").onclick = () => setMode("point");
    $("mode-brush").onclick = () => setMode("brush");
    $("mode-eraser").onclick = () => setMode("eraser");
    $("brush-size").oninput = (e) => { S.brush = Number(e.target.value); };
    for (let k = 1; k <= 3; k++) $("choice-" + k).onclick = () => choose(k);
    $("undo").onclick = () => undo().catch(fail);
    $("redo").onclick = () => redo().catch(fail);
    $("clear").onclick = clearCurrent;
    $("accept").onclick = () => accept().catch(fail);
    $("prefill").onclick = () => prefill().catch(fail);
    $("prev").onclick = () => showImage(S.index - 1).catch(fail);
    $("next").onclick = () => showImage(S.index + 1).catch(fail);
    $("annotator").value = localStorage.getItem("segany-annotator") || "";
    $("annotator").onchange = (e) => localStorage.setItem("segany-annotator", e.target.value);
    window.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT") return;
      const k = e.key, ctrl = e.ctrlKey || e.metaKey;
      const act = {
        Enter: accept, a: accept, Escape: clearCurrent, ArrowRight: () => showImage(S.index + 1),
        ArrowLeft: () => showImage(S.index - 1), b: () => setMode("brush"), e: () => setMode("eraser"),
        p: () => setMode("point"), f: prefill, 1: () => choose(1), 2: () => choose(2), 3: () => choose(3),
        Delete: () => deleteMask(S.selected), d: () => deleteMask(S.selected),
        "[": () => { S.brush = Math.max(1, S.brush - 2); $("brush-size").value = S.brush; },
        "]": () => { S.brush = Math.min(60, S.brush + 2); $("brush-size").value = S.brush; },
      };
      let f = null;
      if (ctrl && (k === "z" || k === "Z")) f = e.shiftKey ? redo : undo;
      else if (ctrl && k === "y") f = redo;
      else if (!ctrl && act[k]) f = act[k];
      if (f) { e.preventDefault(); Promise.resolve(f()).catch(fail); }
    });
  }

  function fail(err) { console.error(err); setState("error", "error: " + err.message); }

  async function main() {
    bind();
    if (!token) { setState("error", "missing access token: open the address printed by `segany serve`"); return; }
    if (typeof ort === "undefined") { setState("error", "onnxruntime-web is not installed on the server (npm install in src/segany/engine/web)"); return; }
    ort.env.wasm.wasmPaths = "/vendor/ort/";
    S.model = await (await api("/api/model")).json();
    if (!S.model.is_trained) $("status").title = "the server runs an untrained model: masks are meaningless";
    const urls = ["/api/decoder.onnx", ...(FAST ? ["/api/decoder_cache.onnx", "/api/decoder_click.onnx"] : [])];
    const [onnx, cacheOnnx, clickOnnx] = await Promise.all(urls.map(async (u) => (await api(u)).arrayBuffer()));
    // Two wasm threads when a second core is free (threads.js says why a probe decides, not
    // the core count); ?threads=N overrides it. Probed here, after the server has exported
    // the graphs and before it embeds any image, and fixed once wasm starts.
    const chosen = await window.seganyThreads.choose(navigator.hardwareConcurrency || 1, Number(params.get("threads")) || 0);
    S.threads = chosen.threads; S.threadProbe = chosen.probe;
    ort.env.wasm.numThreads = S.threads;
    const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
    S.session = await ort.InferenceSession.create(onnx, options);
    if (FAST) {
      S.cacheSession = await ort.InferenceSession.create(cacheOnnx, options);
      S.clickSession = await ort.InferenceSession.create(clickOnnx, options);
    }
    S.images = await (await api("/api/images")).json();
    S.cur = emptyCurrent();
    await showImage(0);
  }

  S.ready = main().catch(fail);
  S.decode = decode; S.accept = accept; S.currentMask = currentMask;
})();
