"""Hard edges of the annotation server: every malformed request is a clean 4xx, nothing bad is stored.

Each case must end in a 4xx whose body is one JSON line ``{"detail": "..."}`` naming the
field at fault, with no traceback and no absolute path of the server's disk; afterwards the
database still loads, the mask list still answers and the export still works. Also: rows a
previous version stored unchecked are skipped and reported instead of breaking every read,
huge images are refused from their header, and the CLI turns bad options into exit status 2.
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from engine_helpers import free_port as _free_port  # noqa: E402
from engine_helpers import quiet_default_model, served_env  # noqa: E402
from segany.cli import main  # noqa: E402
from segany.engine.errors import one_line  # noqa: E402
from segany.engine.export import export_dataset  # noqa: E402
from segany.engine.server import ServerConfig, create_app  # noqa: E402
from segany.engine.store import open_store  # noqa: E402
from segany.masks import decode_coco_counts, mask_to_rle, masks_to_coco_rle, validate_rle  # noqa: E402

TOKEN = "fuzz-token-123"
H, W = 30, 40  # image 1; image 2 is 20 x 25
BASE_URL = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def model():
    return quiet_default_model()


@pytest.fixture()
def env(tmp_path, model):
    return served_env(
        tmp_path,
        model,
        [("a.png", H, W), ("b.png", 20, 25)],
        TOKEN,
        base_url=BASE_URL,
        upload_dir=tmp_path / "uploads",
        max_upload_bytes=100_000,
        max_body_bytes=200_000,
        max_pixels=250_000,  # 500 x 500: small, so the limit is testable with small files
    )


def _good_mask(h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[3:12, 5:20] = True
    return m


def _runs(m: np.ndarray) -> list[int]:
    return [int(c) for c in mask_to_rle(m[None])[0]["counts"]]


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(w: int = 13_000, h: int = 13_000) -> bytes:
    """A small PNG whose header announces w x h pixels (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * (w + 1) * 4)  # a few rows; a decoder would want all of them
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def assert_clean_4xx(r, tmp: Path, *needles: str, status: int | None = None) -> str:
    """A 4xx, one JSON line {"detail": str}, no traceback, no server path; returns the detail."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"detail"} and isinstance(body["detail"], str), r.text[:300]
    assert "\n" not in r.text and "Traceback" not in r.text
    assert str(tmp) not in r.text and "/tmp/" not in r.text, r.text
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    return body["detail"]


def assert_intact(client, store, tmp: Path, n_masks: int) -> None:
    """Nothing was stored by a refused request; the DB loads, lists and exports."""
    assert store.count_masks() == n_masks
    again = open_store(tmp / "db.sqlite")
    assert again.count_masks() == n_masks
    for image_id in (1, 2):
        r = client.get(f"/api/images/{image_id}/masks?runs=1")
        assert r.status_code == 200 and "x-skipped-masks" not in r.headers
    skipped: list[dict] = []
    counts = export_dataset(again, tmp / "export-check", copy_images=False, skipped=skipped)
    assert counts["masks"] == n_masks and skipped == []
    again.close()


# ---------------------------------------------------------------------- RLE and mask fields


def _coco_counts_summing_to(total: int, h: int = H, w: int = W) -> str:
    """A syntactically valid COCO string whose runs sum to ``total`` (pycocotools checks nothing)."""
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": [0, total]}, h, w)
    return rle["counts"].decode("ascii")


BAD_RLES = [
    # (rle, words the message must contain)
    ({"size": [H, W], "counts": _coco_counts_summing_to(50_000_000)}, ["rle.counts", "sum to 50000000", str(H * W)]),
    ({"size": [H, W], "counts": ""}, ["rle.counts", "empty"]),
    ({"size": [H, W], "counts": "!!garbage!!"}, ["rle.counts", "alphabet"]),
    ({"size": [H, W], "counts": "ÿÿé"}, ["rle.counts", "ASCII"]),
    ({"size": [H, W], "counts": "P"}, ["rle.counts", "truncated"]),
    ({"size": [H, W], "counts": "oooooooooo1"}, ["rle.counts", "too large"]),
    ({"size": [H, W], "counts": "0" * 30}, ["rle.counts", "sum to 0"]),
    ({"size": [H, W], "counts": 5}, ["rle.counts"]),
    ({"size": [H, W], "counts": None}, ["rle.counts"]),
    ({"size": [H, W], "counts": [1.5, 2]}, ["rle.counts", "integers"]),
    ({"size": [H, W], "counts": [-5, H * W + 5]}, ["rle.counts"]),
    ({"size": [H, W], "counts": [0, 2**70]}, ["rle.counts"]),
    ({"size": [H, W]}, ["rle", "counts"]),
    ({"counts": "PP0"}, ["rle", "size"]),
    ({"size": [H, W], "counts": "PP0", "extra": 1}, ["rle", "unknown keys"]),
    ({"size": [2**70, 1], "counts": "PP0"}, ["rle.size"]),
    ({"size": [-H, -W], "counts": "PP0"}, ["rle.size"]),
    ({"size": [0, 0], "counts": ""}, ["rle.size"]),
    ({"size": "30x40", "counts": "PP0"}, ["rle.size"]),
    ({"size": [30.0, 40.0], "counts": "PP0"}, ["rle.size", "integers"]),
    ({"size": [H], "counts": "PP0"}, ["rle.size"]),
    ({"size": [H, W, 3], "counts": "PP0"}, ["rle.size"]),
    ({"size": [True, W], "counts": "PP0"}, ["rle.size"]),
    ({"size": [20, 25], "counts": masks_to_coco_rle(np.zeros((1, 20, 25), bool))[0]["counts"]},
     ["rle.size", "does not match"]),
]


def test_bad_rles_are_refused_and_nothing_is_stored(env):
    client, store, config, tmp = env
    good = masks_to_coco_rle(_good_mask()[None])[0]
    assert client.post("/api/images/1/masks", json={"rle": good}).status_code == 201
    for rle, needles in BAD_RLES:
        r = client.post("/api/images/1/masks", json={"rle": rle, "source": "automatic"})
        assert_clean_4xx(r, tmp, *needles)
    for bad in ("abc", [1, 2], 5, True):
        assert_clean_4xx(client.post("/api/images/1/masks", json={"rle": bad}), tmp, "rle")
    assert_intact(client, store, tmp, 1)


BAD_RUNS = [
    ({"size": [H, W], "counts": [0, H * W - 1]}, ["counts", "sum to"]),
    ({"size": [H, W], "counts": [-1, H * W + 1]}, ["counts"]),
    ({"size": [H, W], "counts": [2**70, 1]}, ["counts"]),
    ({"size": [H, W], "counts": []}, ["counts"]),
    ({"size": [-1, -H * W], "counts": [H * W]}, ["size"]),
    ({"size": [2**63, 2**63], "counts": [1]}, ["size"]),
    ({"size": [H, W, 1], "counts": [H * W]}, ["size"]),
    ({"size": [W, H], "counts": [H * W]}, ["size", "does not match"]),
    ({"size": [H, W], "counts": [1.5, 2.5]}, ["counts"]),
    ({"size": [H, W], "counts": ["600", "600"]}, ["counts"]),
    ({"size": ["30", "40"], "counts": [H * W]}, ["size"]),
    ({"size": [H, W]}, ["counts"]),
    ({"counts": [H * W]}, ["size"]),
    ({"size": [H, W], "counts": [H * W], "rle": {"size": [H, W], "counts": "PP0"}}, ["not both"]),
    ({}, ["rle", "size"]),
]


def test_bad_uncompressed_runs_are_refused(env):
    client, store, config, tmp = env
    for payload, needles in BAD_RUNS:
        assert_clean_4xx(client.post("/api/images/1/masks", json=payload), tmp, *needles)
    assert_intact(client, store, tmp, 0)


def test_bad_fields_and_ids_are_refused(env):
    client, store, config, tmp = env
    runs = {"size": [H, W], "counts": _runs(_good_mask())}
    first = client.post("/api/images/1/masks", json=runs)
    assert first.status_code == 201
    on_b = client.post("/api/images/2/masks", json={"size": [20, 25], "counts": [500]})
    assert on_b.status_code == 201
    cases = [
        ({"replaces": 2**70}, ["replaces"]),
        ({"replaces": 2**63}, ["replaces"]),
        ({"replaces": -1}, ["replaces"]),
        ({"replaces": 0}, ["replaces"]),
        ({"replaces": "1"}, ["replaces"]),
        ({"replaces": 1.5}, ["replaces"]),
        ({"replaces": 999}, ["replaces", "no mask 999"]),
        ({"replaces": on_b.json()["id"]}, ["replaces", "no mask"]),  # a mask of another image
        ({"seconds": -1}, ["seconds"]),
        ({"seconds": 1e30}, ["seconds"]),
        ({"seconds": "soon"}, ["seconds"]),
        ({"score": "high"}, ["score"]),
        ({"source": "magic"}, ["source"]),
        ({"source": 5}, ["source"]),
        ({"source": "x" * 1000}, ["source"]),
        ({"client_id": ""}, ["client_id"]),
        ({"client_id": "c" * 500}, ["client_id"]),
        ({"client_id": 5}, ["client_id"]),
        ({"sizee": [H, W]}, ["sizee"]),  # a misspelt field is an error, not a silent default
    ]
    for extra, needles in cases:
        assert_clean_4xx(client.post("/api/images/1/masks", json={**runs, **extra}), tmp, *needles)
    # NaN and Infinity are not JSON, but Python's parser takes them: still refused
    for raw in (b'"seconds": NaN', b'"seconds": Infinity', b'"score": NaN', b'"score": -Infinity'):
        body = json.dumps(runs)[:-1].encode() + b", " + raw + b"}"
        r = client.post("/api/images/1/masks", content=body, headers={"Content-Type": "application/json"})
        assert_clean_4xx(r, tmp, raw.split(b'"')[1].decode())
    for bad_id in (2**63, 2**70, -1, 0):
        what = "image_id"
        assert_clean_4xx(client.get(f"/api/images/{bad_id}/masks"), tmp, what)
        assert_clean_4xx(client.post(f"/api/images/{bad_id}/masks", json=runs), tmp, what)
        assert_clean_4xx(client.get(f"/api/images/{bad_id}/file"), tmp, what)
        assert_clean_4xx(client.get(f"/api/images/{bad_id}/embedding"), tmp, what)
        assert_clean_4xx(client.post(f"/api/images/{bad_id}/prefill"), tmp, what)
        assert_clean_4xx(client.delete(f"/api/masks/{bad_id}"), tmp, "mask_id")
    for bad_id in ("abc", "1.5", "1e3", "%00"):
        assert_clean_4xx(client.get(f"/api/images/{bad_id}/masks"), tmp, "image_id")
    assert_clean_4xx(client.get("/api/images/99/masks"), tmp, "no image", status=404)
    assert_clean_4xx(client.get("/api/images/1/masks?runs=maybe"), tmp, "runs")
    assert_clean_4xx(client.get("/api/nothing-here"), tmp, status=404)
    assert_clean_4xx(client.put("/api/images/1/masks", json=runs), tmp, status=405)
    assert_intact(client, store, tmp, 2)


# ---------------------------------------------------------------------- bodies and headers


def test_malformed_bodies_and_content_types(env):
    client, store, config, tmp = env
    json_type = {"Content-Type": "application/json"}
    for raw in (b"{", b"not json", b"{'size': 1}", b'{"size": [30, 40], "counts": [1200],}', b"\xff\xfe\x00",
                b"[]", b"null", b"123", b'"a string"', b"[" * 5000):
        for path in ("/api/images/1/masks", "/api/images"):
            assert_clean_4xx(client.post(path, content=raw, headers=json_type), tmp, "body")
    valid = json.dumps({"size": [H, W], "counts": [H * W]}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "application/octet-stream", "image/png"):
        r = client.post("/api/images/1/masks", content=valid, headers={"Content-Type": ctype})
        assert_clean_4xx(r, tmp, "body", "application/json")
    assert_clean_4xx(client.post("/api/images/1/masks", content=b""), tmp, "body")
    assert_clean_4xx(client.post("/api/images", json={"path": 5}), tmp, "path")
    assert_clean_4xx(client.post("/api/images", json={"path": ""}), tmp, "path")
    assert_clean_4xx(client.post("/api/images", json={"path": "a.png", "other": 1}), tmp, "other")
    assert_intact(client, store, tmp, 0)


def test_oversized_bodies_are_refused(env):
    client, store, config, tmp = env
    big = {"size": [H, W], "counts": [0] * 100_000 + [H * W]}  # ~300 kB of JSON > 200 kB limit
    assert_clean_4xx(client.post("/api/images/1/masks", json=big), tmp, "limit", status=413)

    def chunks():  # no Content-Length: the cap is counted as the body arrives
        yield b'{"size": [30, 40], "counts": ['
        for _ in range(100):
            yield b"0, " * 1000
        yield b"1200]}"

    r = client.post("/api/images/1/masks", content=chunks(), headers={"Content-Type": "application/json"})
    assert_clean_4xx(r, tmp, "limit", status=413)
    r = client.post("/api/upload", params={"filename": "big.png"}, content=b"x" * 150_000)
    assert_clean_4xx(r, tmp, "limit", status=413)
    r = client.post("/api/upload", params={"filename": "big.png"}, content=(b"x" * 10_000 for _ in range(15)))
    assert_clean_4xx(r, tmp, "limit", status=413)
    assert list(config.upload_dir.iterdir()) == []
    assert_intact(client, store, tmp, 0)


def test_host_header_is_checked(env):
    client, store, config, tmp = env
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example", "localhost.evil.example",
                 "[::2]:8765", "10.0.0.1"):
        r = client.get("/api/images", headers={"Host": host})
        assert_clean_4xx(r, tmp, "Host", status=400)
        assert_clean_4xx(client.get("/", headers={"Host": host}), tmp, "Host")
        r = client.post("/api/images/1/masks", json={"size": [H, W], "counts": [H * W]}, headers={"Host": host})
        assert_clean_4xx(r, tmp, "Host")
    for host in ("127.0.0.1", "127.0.0.1:8765", "localhost:8765", "LOCALHOST", "[::1]:8765", "app.localhost:1"):
        assert client.get("/api/images", headers={"Host": host}).status_code == 200, host
    # "testserver" passes only from Starlette's in-process test client, never from the network
    guard = client.app.middleware_stack
    while not hasattr(guard, "host_allowed"):
        guard = guard.app
    assert guard.host_allowed("testserver", ("testclient", 50000))
    assert not guard.host_allowed("testserver", ("203.0.113.5", 50000))
    assert_intact(client, store, tmp, 0)


def test_host_check_follows_the_bound_host(tmp_path, model):
    store = open_store(tmp_path / "db.sqlite")
    base = dict(store=store, image_roots=[tmp_path], cache_dir=tmp_path / "cache", token=TOKEN, model=model)
    lan = TestClient(create_app(ServerConfig(**base, host="0.0.0.0", allowed_hosts=["annotate.lan"])),
                     base_url="http://annotate.lan")
    lan.headers["Authorization"] = f"Bearer {TOKEN}"
    assert lan.get("/api/images").status_code == 200
    assert lan.get("/api/images", headers={"Host": "10.1.2.3:8765"}).status_code == 200  # an address literal
    assert_clean_4xx(lan.get("/api/images", headers={"Host": "evil.example"}), tmp_path, "Host")


# ---------------------------------------------------------------------- images


def test_corrupt_empty_and_huge_images(env):
    client, store, config, tmp = env
    n_images = len(store.images())
    png = _png(60, 40)
    cases = [
        (b"", "empty", 400),
        (b"\x89PNG not really", "not a readable image", 400),
        (png[: len(png) // 2], "not a readable image", 400),
        (b"\xff\xd8\xff garbage", "not a readable image", 400),
        (_bomb_png(), "13000x13000", 413),  # refused from the header: nothing is decoded
        (_png(600, 500), "600x500", 413),  # above this server's --max-pixels (250,000)
        (_png(1, 1) + b"trailing junk" * 10, None, None),  # decodable: accepted
    ]
    for content, needle, status in cases:
        r = client.post("/api/upload", params={"filename": "up.png"}, content=content)
        if status is None:
            assert r.status_code == 200, r.text
            continue
        assert_clean_4xx(r, tmp, *([needle] if needle else []), status=status)
    for name in ("x.exe", "", "a" * 2000 + ".png", "noext"):
        r = client.post("/api/upload", params={"filename": name}, content=png)
        assert_clean_4xx(r, tmp, "filename")
    assert_clean_4xx(client.post("/api/upload", content=png), tmp, "filename")
    leftovers = [p.name for p in config.upload_dir.iterdir()]
    assert len(leftovers) == 1 and not any(p.endswith(".part") for p in leftovers), leftovers
    assert len(store.images()) == n_images + 1
    # an image already inside the roots is checked the same way
    root = config.image_roots[0]
    (root / "bomb.png").write_bytes(_bomb_png())
    (root / "big.png").write_bytes(_png(600, 500))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "empty.png").write_bytes(b"")
    assert_clean_4xx(client.post("/api/images", json={"path": "bomb.png"}), tmp, "13000x13000", status=413)
    assert_clean_4xx(client.post("/api/images", json={"path": "big.png"}), tmp, "limit", status=413)
    assert_clean_4xx(client.post("/api/images", json={"path": "broken.jpg"}), tmp, "not a readable image",
                     status=400)
    assert_clean_4xx(client.post("/api/images", json={"path": "empty.png"}), tmp, "not a readable image")
    assert_clean_4xx(client.post("/api/images", json={"path": "x" * 5000 + ".png"}), tmp, "path")
    assert_clean_4xx(client.post("/api/images", json={"path": "a.png\x00.png"}), tmp, "path")
    assert_clean_4xx(client.post("/api/images", json={"path": "/etc/passwd"}), tmp, "path", status=403)
    assert_clean_4xx(client.post("/api/images", json={"path": "missing.png"}), tmp, "path", status=404)
    assert len(store.images()) == n_images + 1
    # a registered image that became huge or corrupt on disk: 413 / 400, not 500
    big_id = store.add_image(root / "big.png", 600, 500)
    assert_clean_4xx(client.get(f"/api/images/{big_id}/embedding"), tmp, "limit", status=413)
    assert_clean_4xx(client.post(f"/api/images/{big_id}/prefill"), tmp, "limit", status=413)
    broken_id = store.add_image(root / "broken.jpg", 10, 10)
    assert_clean_4xx(client.get(f"/api/images/{broken_id}/embedding"), tmp, "not a readable image", status=400)
    (root / "b.png").unlink()
    assert_clean_4xx(client.get("/api/images/2/embedding"), tmp, "gone", status=410)
    assert_intact_images = client.get("/api/images")
    assert assert_intact_images.status_code == 200


def test_images_are_decoded_off_the_event_loop(env, monkeypatch):
    """A large image takes seconds to decode; on the event loop it would stall every request."""
    import asyncio

    import segany.engine.image_files as image_files

    client, store, config, tmp = env
    real = image_files.image_size
    threads = []

    def checked(path, max_pixels):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            threads.append("worker")
        else:
            threads.append("event loop")
        return real(path, max_pixels)

    monkeypatch.setattr(image_files, "image_size", checked)
    assert client.post("/api/upload", params={"filename": "ok.png"}, content=_png(20, 10)).status_code == 200
    assert threads == ["worker"]
    from PIL import Image as PILImage

    assert image_files.DEFAULT_MAX_PIXELS < PILImage.MAX_IMAGE_PIXELS  # refused before PIL's bomb check


def test_tiny_upload_gets_an_embedding(env):
    """A 1 x 1 image is valid: it must get an embedding, not a server error."""
    client, store, config, tmp = env
    r = client.post("/api/upload", params={"filename": "dot.png"}, content=_png(1, 1))
    assert r.status_code == 200, r.text
    e = client.get(f"/api/images/{r.json()['id']}/embedding")
    assert e.status_code == 200 and e.headers["x-original-size"] == "1,1"


# ---------------------------------------------------------------------- rows an older version stored


def _insert_raw_mask(db: Path, image_id: int, rle_text: str, bbox: str = "[0, 0, 1, 1]") -> int:
    """Write a mask row directly, as a version that did not validate RLEs could have."""
    with sqlite3.connect(db) as conn:
        cur = conn.execute(
            "INSERT INTO masks (image_id, rle, area, bbox, source, annotator, model_version, seconds, created_at)"
            " VALUES (?, ?, 1, ?, 'manual', 'old', 'v0', 1.0, 0.0)",
            (image_id, rle_text, bbox),
        )
        return int(cur.lastrowid)


def test_bad_stored_rows_are_skipped_and_reported(env, capsys):
    client, store, config, tmp = env
    db = tmp / "db.sqlite"
    good = client.post("/api/images/1/masks", json={"size": [H, W], "counts": _runs(_good_mask())}).json()["id"]
    bad_ids = [
        _insert_raw_mask(db, 1, json.dumps({"size": [H, W], "counts": _coco_counts_summing_to(50_000_000)})),
        _insert_raw_mask(db, 1, json.dumps({"size": [H, W], "counts": ""})),
        _insert_raw_mask(db, 1, json.dumps({"size": [H, W], "counts": "!!garbage"})),
        _insert_raw_mask(db, 1, json.dumps({"size": [H, W], "counts": "é"})),
        _insert_raw_mask(db, 1, json.dumps({"size": [20, 25], "counts": "3b0"})),  # another image's size
        _insert_raw_mask(db, 1, "{not json"),
        _insert_raw_mask(db, 1, json.dumps({"size": [H, W], "counts": "PP0"}), bbox="oops"),
    ]
    for runs in ("0", "1"):
        r = client.get(f"/api/images/1/masks?runs={runs}")
        assert r.status_code == 200, r.text
        assert [m["id"] for m in r.json()] == [good]
        assert r.headers["x-skipped-masks"] == ",".join(str(i) for i in bad_ids)
    listing = client.get("/api/images").json()
    assert listing[0]["id"] == 1
    out = tmp / "out"
    skipped: list[dict] = []
    counts = export_dataset(store, out, skipped=skipped)
    assert counts == {"images": 1, "masks": 1}
    assert [s["mask_id"] for s in skipped] == bad_ids
    assert "sum to 50000000" in skipped[0]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["coco.json", "sa1b"]
    rec = json.loads((out / "sa1b" / "sa_1.json").read_text())
    assert [a["id"] for a in rec["annotations"]] == [good]
    from pycocotools.coco import COCO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(COCO(str(out / "coco.json")).getAnnIds()) == 1
    store.close()
    assert main(["engine", "export", "--db", str(db), "--out", str(tmp / "cli-out")]) == 0
    err = capsys.readouterr().err
    assert f"skipped mask {bad_ids[0]}" in err and "skipped 7 unreadable" in err
    assert main(["engine", "report", "--db", str(db), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["groups"][0]["masks"] == 1 and "skipped 7" in captured.err


def test_export_failure_leaves_the_previous_export(env, monkeypatch):
    client, store, config, tmp = env
    assert client.post("/api/images/1/masks", json={"size": [H, W], "counts": _runs(_good_mask())}).status_code == 201
    assert client.post("/api/images/2/masks", json={"size": [20, 25], "counts": [500]}).status_code == 201
    out = tmp / "out"
    assert export_dataset(store, out)["masks"] == 2
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    import segany.engine.export as export_module

    calls = {"n": 0}
    real = export_module._inner_point

    def failing(rle):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full (simulated)")
        return real(rle)

    monkeypatch.setattr(export_module, "_inner_point", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        export_dataset(store, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the previous export, complete; no staging folder or .tmp file
    assert sorted(p.name for p in out.iterdir()) == ["coco.json", "sa1b"]
    # a missing image file is skipped and reported, the rest is exported
    monkeypatch.setattr(export_module, "_inner_point", real)
    (config.image_roots[0] / "b.png").unlink()
    skipped: list[dict] = []
    assert export_dataset(store, out, skipped=skipped) == {"images": 1, "masks": 1}
    assert len(skipped) == 1 and skipped[0]["image_id"] == 2 and "b.png" in skipped[0]["reason"]


# ---------------------------------------------------------------------- RLE helper


def test_coco_counts_decoder_matches_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.random()
        coco = masks_to_coco_rle(m[None])[0]
        assert decode_coco_counts(coco["counts"]).tolist() == mask_to_rle(m[None])[0]["counts"]
        assert validate_rle(coco, (h, w)) == coco
        assert validate_rle(mask_to_rle(m[None])[0], (h, w)) == coco


def test_one_line_messages_hide_paths():
    msg = one_line("cannot read image /srv/data/secret/x.png: OSError: '/srv/data/secret/x.png'\nmore")
    assert msg == "cannot read image x.png: OSError: 'x.png' more"
    assert one_line("give size [h, w] + counts; see src/segany/engine/web") == \
        "give size [h, w] + counts; see src/segany/engine/web"


# ---------------------------------------------------------------------- command line


def _image_dir(tmp: Path) -> Path:
    d = tmp / "imgs"
    d.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(d / "a.png")
    return d


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"segany {command}: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    import segany.commands.serve as serve_cmd

    def no_model(args):  # option checks must fail before any model is loaded
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(serve_cmd, "load_model_from_args", no_model)
    images = _image_dir(tmp_path)
    db = str(tmp_path / "db.sqlite")
    for argv, needle in [
        (["--port", "99999"], "--port"),
        (["--port", "-1"], "--port"),
        (["--max-pixels", "0"], "--max-pixels"),
        (["--max-upload-mb", "-3"], "--max-upload-mb"),
        (["--max-upload-mb", "nan"], "--max-upload-mb"),
        (["--prefill-points-per-side", "0"], "--prefill-points-per-side"),
        (["--host", "no-such-host.invalid"], "--host"),
    ]:
        assert main(["serve", str(images), "--db", db, *argv]) == 2, argv
        assert needle in _one_line_error(capsys, "serve")
    not_db = tmp_path / "notes.txt"
    not_db.write_text("this is not a database\n" * 100)
    assert main(["serve", str(images), "--db", str(not_db)]) == 2
    assert "not an SQLite database" in _one_line_error(capsys, "serve")
    assert not_db.read_text().startswith("this is not a database")  # left as it was
    assert main(["serve", str(images), "--db", str(tmp_path)]) == 2
    assert "folder" in _one_line_error(capsys, "serve")
    assert main(["serve", str(images), "--db", "/proc/segany-test.sqlite"]) == 2  # read-only even for root
    assert "writable" in _one_line_error(capsys, "serve")
    assert main(["serve", str(images), "--db", db, "--cache-dir", "/proc/segany-cache"]) == 2
    assert "--cache-dir" in _one_line_error(capsys, "serve")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(images), "--db", db, "--port", str(port)]) == 2
        assert f"--port {port}" in _one_line_error(capsys, "serve")
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "bomb.png").write_bytes(_bomb_png())
    assert main(["serve", str(huge), "--db", str(tmp_path / "other.sqlite")]) == 2
    assert "none of the 1 images" in _one_line_error(capsys, "serve")
    for action in (["export", "--out", str(tmp_path / "o")], ["report"], ["prefill"]):
        assert main(["engine", action[0], "--db", str(not_db), *action[1:]]) == 2
        assert "not an SQLite database" in _one_line_error(capsys, "engine")
    open_store(db).close()
    assert main(["engine", "export", "--db", db, "--out", str(tmp_path / "o"), "--sources", "manual,magic"]) == 2
    assert "--sources" in _one_line_error(capsys, "engine")
    assert main(["engine", "export", "--db", db, "--out", "/proc/segany-export"]) == 2
    assert "--out" in _one_line_error(capsys, "engine")


# ---------------------------------------------------------------------- device plumbing


def test_serve_and_prefill_honour_the_device(tmp_path, model, monkeypatch):
    """``--device`` reaches the model loader untouched, and nothing moves the model back to the CPU."""
    import segany.commands.engine as engine_cmd
    import segany.commands.serve as serve_cmd
    import segany.engine.prefill as prefill_module
    import segany.engine.server as server_module

    seen: dict[str, object] = {}

    def fake_loader(args):
        seen.setdefault("devices", []).append(args.device)
        seen["dtype"] = getattr(args, "dtype", None)
        return model

    def fake_serve(config, host, port, sock=None):
        seen["config"] = config

    class NoMasks:
        def generate(self, image):
            seen["generated"] = image.shape
            return []

    monkeypatch.setattr(serve_cmd, "load_model_from_args", fake_loader)
    monkeypatch.setattr(engine_cmd, "load_model_from_args", fake_loader)
    monkeypatch.setattr(server_module, "serve", fake_serve)
    monkeypatch.setattr(prefill_module, "make_generator", lambda m, **kw: NoMasks())
    images = _image_dir(tmp_path)
    db = str(tmp_path / "db.sqlite")
    assert main(["serve", str(images), "--db", db, "--device", "cuda:7", "--port", str(_free_port())]) == 0
    assert main(["engine", "prefill", "--db", db, "--device", "cuda:3"]) == 0
    assert seen["devices"] == ["cuda:7", "cuda:3"]
    assert seen["config"].model is model and seen["generated"] == (20, 30, 3)

    # create_app and the decoder export use the model where it is: no .cpu() on the served model
    def refuse(*args, **kwargs):
        raise AssertionError("the served model was moved")

    monkeypatch.setattr(model, "cpu", refuse)
    store = open_store(tmp_path / "db2.sqlite")
    store.add_image(images / "a.png", 30, 20)
    config = ServerConfig(store=store, image_roots=[images], cache_dir=tmp_path / "cache", token=TOKEN, model=model)
    client = TestClient(create_app(config), base_url=BASE_URL)
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    assert client.get("/api/images/1/embedding").status_code == 200
    assert client.get("/api/decoder.onnx").status_code == 200
    assert server_module.model_device(model) == "cpu"
