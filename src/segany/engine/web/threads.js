// segany annotation page: how many wasm threads the decoder should use on this machine, now.
//
// Why a probe and not the core count: onnxruntime-web's thread pool meets at a barrier after
// every parallel op (hundreds per click). On an idle 2-core machine two threads make a click
// 1.5-1.7x faster (benchmarks/bench_browser_decoder.py: 149 -> 90-100 ms press -> mask); when
// another process keeps one of the two cores busy, every barrier waits for a time slice and
// two threads are 1.5x *slower* (158 -> 240 ms). navigator.hardwareConcurrency cannot tell the
// two apart, and the thread count is fixed once the wasm module starts. So the page measures
// the very pattern that matters, before it loads onnxruntime: two workers doing small rounds of
// arithmetic that meet at a SharedArrayBuffer barrier after each round, against one worker
// doing all of it alone. If the pair is clearly faster, a second core is free.
//
// window.seganyThreads.choose(cores, requested) -> Promise<{threads, probe}>:
//   requested: the page's ?threads= value (a number wins, no probe) or 0 (probe);
//   probe: {one_ms, two_ms} or null (no probe ran: one core, no cross-origin isolation, a
//   browser without Atomics.wait in workers, or an explicit request).
(() => {
  "use strict";

  const ROUNDS = 60;
  const WORK = 60000; // loop iterations per worker per round for the pair, 2x for the single worker (~1-2 ms a round here)
  const SPEEDUP = 0.7; // the pair must take < 0.7x the single worker's time

  const WORKER_SRC = `
    onmessage = (e) => {
      const { sab, n, rounds, work } = e.data;
      const f = new Int32Array(sab); // f[0]: generation, f[1]: arrivals this generation
      const barrier = () => {
        const gen = Atomics.load(f, 0);
        if (Atomics.add(f, 1, 1) === n - 1) { Atomics.store(f, 1, 0); Atomics.add(f, 0, 1); Atomics.notify(f, 0); }
        else while (Atomics.load(f, 0) === gen) Atomics.wait(f, 0, gen);
      };
      let x = 1;
      barrier(); // start together
      const t0 = performance.now();
      for (let r = 0; r < rounds; r++) {
        for (let i = 0; i < work; i++) x = (x * 1.000001 + i) % 65536;
        barrier();
      }
      postMessage({ ms: performance.now() - t0, x });
    };`;

  const live = new Set(); // probe workers still running (all stopped when the probe gives up)
  const stop = (w) => { w.terminate(); live.delete(w); };

  // n workers share rounds of `work` iterations each (the total work is the same for any n);
  // resolves to the slowest worker's time.
  function timed(url, n, rounds, work) {
    const sab = new SharedArrayBuffer(8);
    const workers = Array.from({ length: n }, () => new Worker(url));
    workers.forEach((w) => live.add(w));
    const done = workers.map((w) => new Promise((resolve, reject) => {
      w.onmessage = (e) => resolve(e.data.ms);
      w.onerror = (e) => reject(new Error(e.message || "probe worker failed"));
    }));
    workers.forEach((w) => w.postMessage({ sab, n, rounds, work: Math.round(work / n) }));
    return Promise.all(done).then((t) => Math.max(...t)).finally(() => workers.forEach(stop));
  }

  async function probe() {
    const url = URL.createObjectURL(new Blob([WORKER_SRC], { type: "text/javascript" }));
    try {
      await timed(url, 1, 10, 2 * WORK); // warm-up: worker start and JIT
      const one = await timed(url, 1, ROUNDS, 2 * WORK);
      const two = await timed(url, 2, ROUNDS, 2 * WORK);
      return { one_ms: one, two_ms: two };
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  const TIMEOUT_MS = 3000; // a probe that has not answered by then (a stuck worker) means 1 thread

  async function choose(cores, requested) {
    const isolated = self.crossOriginIsolated === true && typeof SharedArrayBuffer !== "undefined";
    if (!isolated || cores < 2) return { threads: 1, probe: null }; // wasm threads need both
    if (requested > 0) return { threads: Math.min(Math.floor(requested), cores), probe: null };
    let timer = null;
    try {
      const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error("probe timed out")), TIMEOUT_MS); });
      const p = await Promise.race([probe(), late]);
      return { threads: p.two_ms < SPEEDUP * p.one_ms ? 2 : 1, probe: p };
    } catch (err) {
      console.warn("thread probe failed, using 1 wasm thread:", err);
      live.forEach(stop);
      return { threads: 1, probe: null };
    } finally {
      clearTimeout(timer);
    }
  }

  window.seganyThreads = { choose, SPEEDUP };
})();
