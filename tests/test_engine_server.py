"""Annotation server: token, path safety, upload limits, embeddings, concurrent and crash-safe saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from engine_helpers import free_port as _free_port  # noqa: E402
from engine_helpers import quiet_default_model, served_env  # noqa: E402
from segany.masks import masks_to_coco_rle, rle_to_mask  # noqa: E402

TOKEN = "test-token-123"
REAL_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500" / "images" / "train"


@pytest.fixture()
def env(tmp_path):
    return served_env(
        tmp_path,
        quiet_default_model(),
        [(f"img{i}.png", 60 + i, 80) for i in range(3)],
        TOKEN,
        upload_dir=tmp_path / "uploads",
        max_upload_bytes=200_000,
        prefill_settings={"points_per_side": 4},  # 16 points keep the test fast
    )


def _mask_payload(h, w, seed=0, **extra):
    m = np.zeros((h, w), bool)
    r = np.random.default_rng(seed)
    y, x = int(r.integers(0, h - 10)), int(r.integers(0, w - 10))
    m[y : y + 10, x : x + 7] = True
    from segany.masks import mask_to_rle

    rle = mask_to_rle(m[None])[0]
    return {"size": rle["size"], "counts": [int(c) for c in rle["counts"]], **extra}, m


def test_token_is_required(env):
    client, *_ = env
    bare = TestClient(client.app)
    assert bare.get("/api/images").status_code == 401
    assert bare.get("/api/images", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert bare.get(f"/api/images?token={TOKEN}").status_code == 200
    assert bare.post("/api/images/1/masks", json={}).status_code == 401
    assert bare.post(f"/api/images/1/masks?token={TOKEN}", json={}).status_code == 401  # GET-only query token
    assert bare.get("/api/images/1/file").status_code == 401
    assert bare.get("/api/images/1/embedding", headers={"Authorization": "Bearer x"}).status_code == 403
    # the page itself holds no data and loads without the token
    assert bare.get("/").status_code == 200
    assert client.get("/api/images").status_code == 200


def test_no_path_escapes_the_roots(env):
    client, store, config, tmp = env
    secret = tmp / "secret.png"
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(secret)
    for bad in ("../secret.png", str(secret), "../../../../etc/passwd", "/etc/passwd", "img0.png/../../secret.png"):
        r = client.post("/api/images", json={"path": bad})
        assert r.status_code == 403, (bad, r.text)
    (config.image_roots[0] / "link.png").symlink_to(secret)
    assert client.post("/api/images", json={"path": "link.png"}).status_code == 403
    assert client.post("/api/images", json={"path": "img1.png"}).status_code == 200
    for bad in ("..%2f..%2fserver.py", "..%2Fstore.py", "server.py", "%2e%2e%2fstore.py"):
        assert client.get(f"/static/{bad}").status_code == 404
    assert client.get("/vendor/ort/..%2f..%2fserver.py").status_code == 404
    # an upload name cannot choose its folder
    png = _png_bytes()
    r = client.post("/api/upload", params={"filename": "../../evil.png"}, content=png)
    assert r.status_code == 200, r.text
    assert not (tmp / "evil.png").exists() and not (tmp.parent / "evil.png").exists()
    assert len(list(config.upload_dir.glob("*evil.png"))) == 1


def _png_bytes(size=(40, 30)):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 127, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_limits_and_corrupt_images(env):
    client, store, config, tmp = env
    n = len(store.images())
    big = os.urandom(300_000)
    assert client.post("/api/upload", params={"filename": "big.png"}, content=big).status_code == 413
    assert client.post("/api/upload", params={"filename": "bad.png"}, content=b"\x89PNG not really").status_code == 400
    assert client.post("/api/upload", params={"filename": "x.exe"}, content=_png_bytes()).status_code == 400
    assert list(config.upload_dir.iterdir()) == []  # nothing half-written or rejected is left
    assert len(store.images()) == n
    r = client.post("/api/upload", params={"filename": "ok.png"}, content=_png_bytes())
    assert r.status_code == 200 and r.json()["width"] == 40 and r.json()["height"] == 30
    # a corrupt file already inside the roots is refused with a clear error
    (config.image_roots[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    r = client.post("/api/images", json={"path": "broken.jpg"})
    assert r.status_code == 400 and "not a readable image" in r.json()["detail"]


def test_embedding_cached_and_prefetched(env):
    client, store, config, tmp = env
    cache = client.app.state.embeddings
    r = client.get("/api/images/1/embedding")
    assert r.status_code == 200
    emb = np.frombuffer(r.content, "<f4").reshape(1, 256, 64, 64)
    assert r.headers["x-original-size"] == "60,80"
    assert r.headers["x-input-size"] == f"{int(60 * 512 / 80 + 0.5)},512"
    assert cache.wait_idle(120)
    assert cache.is_cached(config.image_roots[0] / "img1.png") and cache.is_cached(config.image_roots[0] / "img2.png")
    computed = cache.computed
    r2 = client.get("/api/images/1/embedding")
    assert np.array_equal(np.frombuffer(r2.content, "<f4").reshape(emb.shape), emb)
    assert cache.computed == computed  # served from disk
    assert client.get("/api/images/99/embedding").status_code == 404


def test_save_list_delete_roundtrip(env):
    client, store, *_ = env
    payload, mask = _mask_payload(60, 80, source="manual", seconds=4.5)
    r = client.post("/api/images/1/masks", json=payload, headers={"X-Annotator": "alice"})
    assert r.status_code == 201
    mid = r.json()["id"]
    rows = client.get("/api/images/1/masks").json()
    assert len(rows) == 1 and rows[0]["annotator"] == "alice" and rows[0]["seconds"] == 4.5
    assert rows[0]["source"] == "manual" and rows[0]["model_version"]
    assert np.array_equal(rle_to_mask(rows[0]["rle"]), mask)
    bad = dict(payload, counts=payload["counts"][:-1])
    assert client.post("/api/images/1/masks", json=bad).status_code == 400
    assert client.post("/api/images/2/masks", json=payload).status_code == 400  # wrong size for image 2
    assert client.post("/api/images/1/masks", json=dict(payload, source="magic")).status_code == 400
    # an edit replaces the old mask in one transaction
    payload2, mask2 = _mask_payload(60, 80, seed=5, replaces=mid)
    new_id = client.post("/api/images/1/masks", json=payload2).json()["id"]
    assert [m["id"] for m in client.get("/api/images/1/masks").json()] == [new_id]
    assert client.delete(f"/api/masks/{new_id}").status_code == 200
    assert client.delete(f"/api/masks/{new_id}").status_code == 404
    assert client.get("/api/images/1/masks").json() == []
    coco = masks_to_coco_rle(mask[None])[0]
    assert client.post("/api/images/1/masks", json={"rle": coco, "source": "automatic"}).status_code == 201


def test_two_annotators_save_concurrently(env):
    client, store, *_ = env
    per = 20
    results: dict[str, list[int]] = {"alice": [], "bob": []}

    def work(name):
        for i in range(per):
            payload, _ = _mask_payload(60, 80, seed=i, client_id=f"{name}-{i}", seconds=1.0)
            r = client.post("/api/images/1/masks", json=payload, headers={"X-Annotator": name})
            assert r.status_code == 201
            results[name].append(r.json()["id"])
            if i % 5 == 0:  # a retried save (lost reply) must not duplicate the mask
                r2 = client.post("/api/images/1/masks", json=payload, headers={"X-Annotator": name})
                assert r2.json()["id"] == r.json()["id"]

    threads = [threading.Thread(target=work, args=(n,)) for n in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = store.masks(1)
    assert len(rows) == 2 * per
    assert len({r.id for r in rows}) == 2 * per
    assert sorted(r.id for r in rows) == sorted(results["alice"] + results["bob"])
    assert sum(r.annotator == "alice" for r in rows) == per


def _start_server(images: Path, db: Path, port: int, cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "segany.cli", "serve", str(images), "--db", str(db), "--port", str(port),
           "--token", TOKEN, "--cache-dir", str(cache)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            _request(port, "GET", "/api/model")
            return proc
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None:
                raise RuntimeError("server exited: " + (proc.stdout.read() if proc.stdout else "")) from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def _request(port, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_kill_9_loses_no_acknowledged_save(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(images / "a.png")
    db = tmp_path / "db.sqlite"
    port = _free_port()
    proc = _start_server(images, db, port, tmp_path / "cache")
    acked: list[int] = []
    stop = threading.Event()

    def saver(worker):
        i = 0
        while not stop.is_set():
            payload, _ = _mask_payload(60, 80, seed=i, client_id=f"w{worker}-{i}")
            try:
                acked.append(_request(port, "POST", "/api/images/1/masks", payload)["id"])
            except Exception:
                return  # the server died mid-request: that save was never acknowledged
            i += 1

    threads = [threading.Thread(target=saver, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    while len(acked) < 30:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-session, saves in flight
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    n_acked = len(acked)
    assert n_acked >= 30
    # restart on the same database: every acknowledged save is there, intact
    proc = _start_server(images, db, port, tmp_path / "cache")
    try:
        rows = _request(port, "GET", "/api/images/1/masks")
        ids = {r["id"] for r in rows}
        assert set(acked) <= ids, sorted(set(acked) - ids)
        assert all(rle_to_mask(r["rle"]).sum() == 70 for r in rows)
        assert _request(port, "POST", "/api/images/1/masks", _mask_payload(60, 80, seed=1)[0])["id"] > max(acked)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_prefill_endpoint(env):
    client, store, *_ = env
    r = client.post("/api/images/1/prefill")
    if r.status_code == 501:  # this installation has no automatic mask generator
        assert "SamAutomaticMaskGenerator" in r.json()["detail"]
        return
    assert r.status_code == 200, r.text
    added = r.json()["added"]
    rows = client.get("/api/images/1/masks").json()
    assert [m["id"] for m in rows] == added
    assert all(m["source"] == "prefilled" for m in rows)
    assert client.post("/api/images/99/prefill").status_code == 404


def test_decoder_served_and_quantized_option(env, tmp_path):
    import onnxruntime as ort

    client, store, config, _ = env
    r = client.get("/api/decoder.onnx")
    assert r.status_code == 200
    full = tmp_path / "full.onnx"
    full.write_bytes(r.content)
    names = [i.name for i in ort.InferenceSession(str(full)).get_inputs()]
    assert names[0] == "image_embeddings" and names[-1] == "orig_im_size"
    config.quantized_decoder = True
    q = client.get("/api/decoder.onnx")
    assert q.status_code == 200 and len(q.content) < 0.5 * len(r.content)
