// segany mask-quality rating page (paper appendix E/G): one mask at a time over its image, rated
// 1-10, blind to where it came from. The server sends only an opaque item id, the image and the
// mask (uncompressed column-major runs), in this rater's own random order; the page keeps no
// state of its own beyond the rater's name, so a reload continues where it was.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || sessionStorage.getItem("segany-token") || "";
  if (params.get("token")) {
    sessionStorage.setItem("segany-token", token);
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
  }
  const FILL = [30, 144, 255, 110]; // the mask, see-through
  const EDGE = [255, 215, 0, 255]; // its outline, opaque

  const S = { item: null, W: 0, H: 0, mask: null, rated: 0, remaining: 0, saved: 0, shownAt: 0, outlineOnly: false };
  window.segrate = S; // for tests

  const setState = (s, msg) => { document.body.dataset.state = s; if (msg !== undefined) $("status").textContent = msg; };
  const rater = () => $("annotator").value.trim();

  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {}, { Authorization: "Bearer " + token });
    if (rater()) headers["X-Annotator"] = rater();
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not json */ }
      const err = new Error(detail);
      err.status = r.status;
      throw err;
    }
    return r;
  }

  // Uncompressed column-major runs (first run = background) -> row-major Uint8Array H*W.
  function decodeRuns(runs, H, W) {
    const m = new Uint8Array(H * W);
    let k = 0;
    for (let i = 0; i < runs.length; i++) {
      const end = k + runs[i];
      if (i % 2 === 1) for (let j = k; j < end; j++) m[(j % H) * W + Math.floor(j / H)] = 1;
      k = end;
    }
    return m;
  }

  function fitCanvases() {
    const maxW = Math.max(200, window.innerWidth - 500), maxH = Math.max(200, window.innerHeight - 90);
    const scale = Math.min(maxW / S.W, maxH / S.H, 4);
    for (const c of [$("image-layer"), $("mask-layer")]) {
      c.style.width = `${Math.round(S.W * scale)}px`;
      c.style.height = `${Math.round(S.H * scale)}px`;
    }
  }

  function drawMask() {
    const c = $("mask-layer"), ctx = c.getContext("2d");
    const img = ctx.createImageData(S.W, S.H), d = img.data, m = S.mask, W = S.W, H = S.H;
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const i = y * W + x;
        if (!m[i]) continue;
        const edge = x === 0 || y === 0 || x === W - 1 || y === H - 1 || !m[i - 1] || !m[i + 1] || !m[i - W] || !m[i + W];
        const rgba = edge ? EDGE : S.outlineOnly ? null : FILL;
        if (rgba) d.set(rgba, 4 * i);
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  function showProgress() {
    $("progress").textContent = `${S.rated} rated · ${S.remaining} to go`;
  }

  async function loadNext() {
    setState("loading", "loading the next mask…");
    S.item = null;
    let d;
    try {
      d = await (await api("/api/rate/next")).json();
    } catch (e) {
      setState("error", e.message);
      return;
    }
    $("annotator").placeholder = d.annotator;
    S.rated = d.rated;
    S.remaining = d.remaining;
    showProgress();
    if (d.item === null) {
      for (const c of [$("image-layer"), $("mask-layer")]) c.getContext("2d").clearRect(0, 0, c.width, c.height);
      setState("done", `All done: you rated ${d.rated} masks. Thank you!`);
      return;
    }
    try {
      const bitmap = await createImageBitmap(await (await api(`/api/rate/items/${d.item}/image`)).blob());
      if (bitmap.width !== d.width || bitmap.height !== d.height) throw new Error("the image does not match its mask");
      S.W = d.width;
      S.H = d.height;
      S.mask = decodeRuns(d.runs, d.height, d.width);
      for (const c of [$("image-layer"), $("mask-layer")]) { c.width = S.W; c.height = S.H; }
      $("image-layer").getContext("2d").drawImage(bitmap, 0, 0);
      drawMask();
      fitCanvases();
    } catch (e) {
      setState("error", `cannot show this mask: ${e.message}`);
      return;
    }
    S.item = d.item;
    S.shownAt = performance.now();
    setState("ready", "How well does the mask outline one object? 1 (poor) … 10 (perfect)");
  }

  async function rate(value) {
    if (document.body.dataset.state !== "ready" || S.item === null) return;
    const item = S.item, seconds = (performance.now() - S.shownAt) / 1000;
    setState("saving", `saving ${value}…`);
    try {
      await api(`/api/rate/items/${item}/rating`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ rating: value, seconds: Math.min(seconds, 1e7) }),
      });
      S.saved += 1;
      document.body.dataset.lastRated = item;
    } catch (e) {
      if (e.status !== 409) { // 409: rated already (another tab): that rating stands, go on
        S.item = item;
        setState("ready", `not saved (${e.message}): rate it again`);
        return;
      }
    }
    await loadNext();
  }

  for (const b of document.querySelectorAll("#scale button")) b.onclick = () => rate(Number(b.dataset.rating));
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey) return;
    if (/^[0-9]$/.test(e.key)) { e.preventDefault(); rate(e.key === "0" ? 10 : Number(e.key)); }
    else if (e.key === " ") { e.preventDefault(); $("mask-layer").style.visibility = "hidden"; }
    else if (e.key === "o" || e.key === "O") { S.outlineOnly = !S.outlineOnly; if (S.mask) drawMask(); }
  });
  document.addEventListener("keyup", (e) => { if (e.key === " ") $("mask-layer").style.visibility = "visible"; });
  window.addEventListener("resize", () => { if (S.mask) fitCanvases(); });
  $("annotator").value = localStorage.getItem("segany-annotator") || "";
  $("annotator").onchange = (e) => { localStorage.setItem("segany-annotator", e.target.value.trim()); loadNext(); };
  loadNext();
})();
