// Times onnxruntime-web session.run of SAM decoders in the browser: official-signature graphs
// and segany's per-click graph (inputs: the per-image cache, which ?cache=decoder_cache.onnx
// computes once from the same embedding; its time lands in results[cache]).
// Query: ?models=a.onnx,b.onnx&clicks=60&threads=1[&feedback=0][&cache=c.onnx] ; results land
// in window.results. feedback=0: no click feeds the previous mask back.
"use strict";
(async () => {
  const q = new URLSearchParams(location.search);
  const models = (q.get("models") || "").split(",").filter(Boolean);
  const clicks = Number(q.get("clicks") || 60);
  const feedback = q.get("feedback") !== "0";
  ort.env.wasm.wasmPaths = "/vendor/ort/";
  ort.env.wasm.numThreads = Number(q.get("threads") || 1);
  // deterministic pseudo-random embedding and click positions (same for every model)
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  const emb = new Float32Array(256 * 64 * 64);
  for (let i = 0; i < emb.length; i++) emb[i] = (rnd() - 0.5) * 2;
  const H = 321, W = 481, inputSide = Number(q.get("input") || 512);
  // All sessions first, then the models take turns on every click (same prompts), so
  // machine load and warm-up affect them alike.
  const sessions = {}, results = {}, state = {};
  for (const name of models) {
    const buf = await (await fetch("/models/" + name)).arrayBuffer();
    sessions[name] = await ort.InferenceSession.create(buf, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    results[name] = []; state[name] = { mask: new Float32Array(256 * 256), hasMask: 0 };
  }
  let cache = null;
  if (q.get("cache")) {
    const buf = await (await fetch("/models/" + q.get("cache"))).arrayBuffer();
    const s = await ort.InferenceSession.create(buf, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    const t0 = performance.now();
    cache = await s.run({ image_embeddings: new ort.Tensor("float32", emb, [1, 256, 64, 64]) });
    results[q.get("cache")] = [performance.now() - t0];
  }
  const isClick = (name) => sessions[name].inputNames.includes("keys");
  const feedsFor = (name, coords, labels, n, st) => {
    const prompts = {
      point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
      point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
      orig_im_size: new ort.Tensor("float32", Float32Array.from([H, W]), [2]),
    };
    Object.assign(prompts, {
      mask_input: new ort.Tensor("float32", st.mask, [1, 1, 256, 256]),
      has_mask_input: new ort.Tensor("float32", Float32Array.from([st.hasMask]), [1]),
    });
    if (isClick(name)) return Object.assign({}, cache, prompts);
    return Object.assign(prompts, { image_embeddings: new ort.Tensor("float32", emb, [1, 256, 64, 64]) });
  };
  for (let k = 0; k < clicks + 3; k++) {
    const n = 1 + (k % 3); // 1 to 3 clicks per object, as an annotator refines
    const coords = [], labels = [];
    for (let j = 0; j < n; j++) { coords.push(rnd() * inputSide, rnd() * inputSide * H / W); labels.push(j === 0 ? 1 : (rnd() < 0.5 ? 0 : 1)); }
    coords.push(0, 0); labels.push(-1);
    for (const name of (k % 2 ? models.slice().reverse() : models)) {
      const st = state[name];
      const feeds = feedsFor(name, coords, labels, n + 1, st);
      const t0 = performance.now();
      const out = await sessions[name].run(feeds);
      const dt = performance.now() - t0;
      if (k >= 3) results[name].push(dt); // 3 warm-up runs
      st.mask = out.low_res_masks.data.slice(0, 65536); st.hasMask = n === 3 || !feedback ? 0 : 1;
    }
  }
  document.getElementById("log").textContent = JSON.stringify(Object.keys(results));
  // n more runs of one model, for the caller to read the renderer's CPU time around them
  window.runBatch = async (name, n) => {
    const st = Object.assign({}, state[name], { hasMask: feedback ? 1 : 0 });
    const feeds = feedsFor(name, [100, 80, 0, 0], [1, -1], 2, st);
    for (let i = 0; i < n; i++) await sessions[name].run(feeds);
    return n;
  };
  window.results = results;
  document.body.dataset.state = "done";
})().catch((e) => { window.benchError = String(e); document.body.dataset.state = "error"; });
