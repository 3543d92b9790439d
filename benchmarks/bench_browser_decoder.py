"""Decoder latency per click: in headless Chromium (onnxruntime-web) and in Python onnxruntime.

Measures, in one run, with the same decoder weights:
1. the annotation page itself: >= 50 real mouse clicks on a real image (``segany serve``),
   the median of onnxruntime-web ``session.run`` and of press -> mask drawn on the canvas,
   in three settings: the page as shipped (the per-click graph on the per-image cache),
   ``?fast=0`` (the official-contract graph: the page before the per-click graph) and
   ``?feedback=0`` (no mask fed back, as the official demo);
2. a bare benchmark page: segany's official-contract export, the official package's
   ``SamOnnxModel`` export (the reference) and segany's per-click graph
   (:mod:`segany.export.onnx_click`), same weights, same prompts, ``session.run`` median,
   with the previous mask fed back on 2 of 3 clicks, then without;
3. Python onnxruntime (1 thread) for the three files, and segany's PyTorch ``SamPredictor.predict``.

    python benchmarks/bench_browser_decoder.py               # 60 clicks each
    python benchmarks/bench_browser_decoder.py --clicks 100 --threads 2

Needs /usr/bin/chromium, the playwright Python package and onnxruntime-web (installed by
.ci/setup-extra.sh). The paper's figure is ~50 ms per click in the browser.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from segany import SamPredictor, load_default_model  # noqa: E402
from segany.engine.server import ort_dist_dir  # noqa: E402
from segany.export.onnx import decoder_feeds, export_decoder  # noqa: E402
from segany.export.onnx_click import click_feeds, export_click_decoder, export_decoder_cache  # noqa: E402
from segany.modeling.decoder_cache import IMAGE_FIELDS  # noqa: E402

IMAGE = ROOT.parent / "shared" / "data" / "bsds500" / "images" / "train" / "100075.jpg"
CHROMIUM = os.environ.get("SEGANY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BENCH_WEB = Path(__file__).parent / "browser"


def export_official(model, path: Path) -> Path:
    """The official package's ONNX export of a reference Sam carrying segany's decoder weights."""
    from reference import reference_sam

    ref_model, _ = reference_sam(depth=1, global_attn=(0,))
    from segment_anything.utils.onnx import SamOnnxModel

    state = {k: v for k, v in model.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    missing = ref_model.load_state_dict(state, strict=False)
    assert not [k for k in missing.missing_keys if k.startswith(("prompt_encoder.", "mask_decoder."))]
    onnx_model = SamOnnxModel(ref_model, return_single_mask=False)
    dummy = {
        "image_embeddings": torch.randn(1, 256, 64, 64),
        "point_coords": torch.randint(0, 1024, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 256, 256),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            onnx_model, tuple(dummy.values()), str(path), export_params=True, opset_version=17,
            do_constant_folding=True, input_names=list(dummy), dynamo=False,
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    return path


def python_ort_ms(path: Path, feeds: dict, repeats: int, threads: int = 1) -> tuple[float, float]:
    """(median wall ms, median CPU ms of the calling thread) per run; with one intra-op
    thread onnxruntime computes on the calling thread, so the CPU time is what the run would
    take on an otherwise idle core."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feeds)
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.thread_time()
        sess.run(None, feeds)
        cpu.append(time.thread_time() - c)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, statistics.median(cpu) * 1000


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with cross-origin isolation (wasm threads) and the ORT files mapped in."""

    routes: dict[str, Path] = {}

    def translate_path(self, path: str) -> str:
        name = path.split("?", 1)[0]
        return str(self.routes.get(name, Path("/nonexistent")))

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


def bare_page_ms(models: dict[str, Path], clicks: int, threads: int, feedback: bool = True,
                 cache: tuple[str, Path] | None = None) -> dict[str, list[float]]:
    """``session.run`` times per model in the bare page (interleaved, same prompts); with
    ``cache`` (name, file) the per-image cache graph runs once first, for click graphs."""
    from playwright.sync_api import sync_playwright

    dist = ort_dist_dir()
    routes = {f"/vendor/ort/{f.name}": f for f in dist.iterdir()}
    routes["/decoder_bench.html"] = BENCH_WEB / "decoder_bench.html"
    routes["/decoder_bench.js"] = BENCH_WEB / "decoder_bench.js"
    routes.update({f"/models/{k}": v for k, v in models.items()})
    if cache is not None:
        routes[f"/models/{cache[0]}"] = cache[1]
    handler = type("H", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            extra = ("" if feedback else "&feedback=0") + ("" if cache is None else f"&cache={cache[0]}")
            page.goto(f"http://127.0.0.1:{port}/decoder_bench.html?models={','.join(models)}"
                      f"&clicks={clicks}&threads={threads}{extra}")
            page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=600_000)
            if page.evaluate("document.body.dataset.state") != "done":
                raise RuntimeError(page.evaluate("window.benchError"))
            results = page.evaluate("window.results")
            # renderer CPU time per run (Chrome's ProcessTime metric), contention-free
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            n = max(10, clicks // 3)
            for name in models:
                before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                page.evaluate(f"window.runBatch({name!r}, {n})")
                after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                if "ProcessTime" in after:
                    results[name + ":cpu_ms"] = (after["ProcessTime"] - before["ProcessTime"]) * 1000 / n
            browser.close()
    finally:
        httpd.shutdown()
    return results


def real_page_ms(clicks: int, threads: int, query: str = "") -> tuple[list[float], list[float], int]:
    """Real clicks in the annotation page served by ``segany serve`` (``query``: extra page
    parameters, e.g. ``&fast=0``; ``threads`` 0: the page's own choice, its probe of a free
    second core). Returns (decoder ms, press -> mask ms, wasm threads the page used)."""
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="segany-bench-"))
    port = 8000 + os.getpid() % 1000
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "segany.cli", "serve", str(IMAGE), "--db", str(tmp / "db.sqlite"), "--port",
         str(port), "--token", "bench", "--cache-dir", str(tmp / "cache")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/favicon.ico", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            forced = f"&threads={threads}" if threads > 0 else ""
            page.goto(f"http://127.0.0.1:{port}/?token=bench{forced}{query}")
            page.wait_for_function("document.body.dataset.state === 'ready'", timeout=300_000)
            used = int(page.evaluate("window.segany.threads"))
            box = page.locator("#prompt-layer").bounding_box()
            rng = np.random.default_rng(0)
            for i in range(clicks + 3):
                if i % 3 == 0:
                    page.keyboard.press("Escape")  # a new object every 3 clicks
                fx, fy = rng.uniform(0.05, 0.95, 2)
                n = page.evaluate("window.segany.decodes")
                page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"],
                                 button="right" if i % 3 == 2 else "left")
                page.wait_for_function(f"window.segany.decodes > {n} && document.body.dataset.state === 'ready'")
            run = page.evaluate("window.segany.latencies")[3:]
            click = page.evaluate("window.segany.clickLatencies")[3:]
            browser.close()
    finally:
        proc.terminate()
        proc.wait()
    return run, click, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime-web wasm threads; 0 (default): the page's own choice (its probe of a free "
                             "second core), and 1 in the bare page")
    args = parser.parse_args()
    if args.clicks < 50:
        parser.error("use at least 50 clicks (the acceptance is a median over >= 50)")
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_default_model()
    tmp = Path(tempfile.mkdtemp(prefix="segany-bench-"))
    ours = export_decoder(model, tmp / "segany.onnx")
    official = export_official(model, tmp / "official.onnx")
    click = export_click_decoder(model, tmp / "segany_click.onnx")
    cache_graph = export_decoder_cache(model, tmp / "segany_cache.onnx")

    from segany.image_io import load_image

    predictor = SamPredictor(model)
    predictor.set_image(load_image(IMAGE))
    pts, labels = np.array([[200, 150], [100, 80]]), np.array([1, 0])
    feeds = decoder_feeds(predictor.features, predictor.transform.apply_coords(pts, predictor.original_size),
                          labels, predictor.original_size)
    t_torch = []
    for _ in range(23):
        t = time.perf_counter()
        predictor.predict(pts, labels, multimask_output=True)
        t_torch.append(time.perf_counter() - t)
    torch_ms = statistics.median(t_torch[3:]) * 1000
    py_ours, cpu_ours = python_ort_ms(ours, feeds, args.clicks)
    py_official, cpu_official = python_ort_ms(official, feeds, args.clicks)
    import onnxruntime as ort

    cache = ort.InferenceSession(str(cache_graph), providers=["CPUExecutionProvider"])
    cached = dict(zip(IMAGE_FIELDS, cache.run(None, {"image_embeddings": feeds["image_embeddings"]})))
    py_click, cpu_click = python_ort_ms(click, click_feeds(cached, feeds["point_coords"][0, :-1],
                                                            labels, predictor.original_size), args.clicks)
    print(f"machine load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"PyTorch SamPredictor.predict (1 thread):       {torch_ms:8.1f} ms")
    print(f"Python onnxruntime, segany decoder (1 thread): {py_ours:8.1f} ms wall, {cpu_ours:6.1f} ms CPU")
    print(f"Python onnxruntime, official export (1 thread):{py_official:8.1f} ms wall, {cpu_official:6.1f} ms CPU"
          f"   ratio segany/official {py_ours / py_official:.2f} (CPU {cpu_ours / cpu_official:.2f})")
    print(f"Python onnxruntime, segany per-click graph:    {py_click:8.1f} ms wall, {cpu_click:6.1f} ms CPU"
          f"   ratio per-click/official {py_click / py_official:.2f} (CPU {cpu_click / cpu_official:.2f})")

    if not Path(CHROMIUM).is_file() or ort_dist_dir() is None:
        print("browser part skipped: needs /usr/bin/chromium and onnxruntime-web (.ci/setup-extra.sh)")
        return 0
    models = {"segany.onnx": ours, "official.onnx": official, "segany_click.onnx": click}
    bare_threads = max(1, args.threads)
    for feedback in (True, False):
        bare = bare_page_ms(models, args.clicks, bare_threads, feedback=feedback,
                            cache=("segany_cache.onnx", cache_graph))
        print(f"bare page, previous mask fed back on 2 of 3 clicks: {feedback}; the per-click graph's cache "
              f"graph ran once in {bare['segany_cache.onnx'][0]:.1f} ms")
        medians = {name: statistics.median(bare[name]) for name in models}
        for name in models:
            cpu = f", renderer CPU {bare[name + ':cpu_ms']:.1f} ms" if name + ":cpu_ms" in bare else ""
            print(f"  Chromium onnxruntime-web ({bare_threads} thread), {name:18s} median {medians[name]:7.1f} ms "
                  f"over {len(bare[name])} runs{cpu}   ratio to official {medians[name] / medians['official.onnx']:.2f}")
    for label, query in (("as shipped (per-click graph)", ""), ("?fast=0 (official-contract graph)", "&fast=0"),
                         ("?feedback=0 (no mask fed back)", "&feedback=0")):
        run, press, used = real_page_ms(args.clicks, args.threads, query)
        print(f"annotation page {label}, {len(run)} real clicks, {used} wasm thread(s): decoder median "
              f"{statistics.median(run):.1f} ms, press -> mask drawn median {statistics.median(press):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
