"""Acceptance test of the mask-quality rating page (``segany serve --rate``) in headless Chromium.

A store with manual and automatic masks of two models plus SA-1B ground truth; the page shows
each mask exactly as stored, never receives its source, takes ratings by keyboard and mouse,
continues after a reload without repeating a mask, and the ratings end up in the database
and in ``segany engine ratings``. ``SEGANY_SCREENSHOT_RATING=path`` saves a picture of the page
(docs/engine_rating.png).
"""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
from browser_helpers import DATA, browser_missing, chromium_page, segany_server
from PIL import Image

from segany.cli import main
from segany.engine.store import open_store
from segany.masks import masks_to_coco_rle, rle_to_mask
from test_engine_ratings import write_sa1b

TOKEN = "rating-test-token"
IMAGES = ("100075.jpg", "100080.jpg")  # train-split images (never eval ones)
SEGMENTS = DATA.parents[1] / "groundTruth" / "train"
MISSING = browser_missing() or next(
    (
        f"real test image or its BSDS segmentation missing: {DATA / n}"
        for n in IMAGES
        if not (DATA / n).is_file() or not (SEGMENTS / n.replace(".jpg", ".mat")).is_file()
    ),
    None,
)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
HIDDEN = ("manual", "automatic", "prefilled", "ground_truth", "modelA", "modelB", "100075", "100080", "sa_", "jpg")


def _segment(name: str, annotator: int, fx: float, fy: float) -> np.ndarray:
    """The region of a BSDS human segmentation at a point (fractions of the image): a real
    object outline, so the page and the docs picture show what raters would see."""
    from scipy.io import loadmat

    seg = loadmat(SEGMENTS / name.replace(".jpg", ".mat"))["groundTruth"][0][annotator]["Segmentation"][0][0]
    h, w = seg.shape
    return seg == seg[int(fy * h), int(fx * w)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rating")
    images = tmp / "images"
    images.mkdir()
    store = open_store(tmp / "ratings.sqlite")
    for name in IMAGES:
        (images / name).symlink_to(DATA / name)  # the data stays in place
        w, h = Image.open(DATA / name).size
        image_id = store.add_image(images / name, w, h)
        points = {"100075.jpg": [(0.45, 0.55), (0.8, 0.5)], "100080.jpg": [(0.5, 0.5), (0.5, 0.85)]}[name]
        for k, (source, version) in enumerate([("manual", "modelA-v1"), ("automatic", "modelB-v2")]):
            m = _segment(name, k, *points[k])
            store.save_mask(
                image_id,
                masks_to_coco_rle(m[None])[0],
                source=source,
                annotator="a",
                model_version=version,
                seconds=1.0,
            )
    write_sa1b(tmp / "gt", DATA / IMAGES[1], [_segment(IMAGES[1], 2, 0.5, 0.5), _segment(IMAGES[1], 3, 0.5, 0.15)])
    store.close()
    assert main(["engine", "import-gt", str(tmp / "gt"), "--db", str(tmp / "ratings.sqlite")]) == 0
    with segany_server(
        [
            *(str(images / n) for n in IMAGES),  # files, as the annotation test: their folder is the root
            str(tmp / "gt"),
            "--db",
            str(tmp / "ratings.sqlite"),
            "--rate",
            "--token",
            TOKEN,
            "--annotator",
            "rater1",
            "--cache-dir",
            str(tmp / "cache"),
        ]
    ) as url:
        yield {"url": url, "db": tmp / "ratings.sqlite"}


def _stored(db, item: str) -> tuple[np.ndarray, str]:
    """The stored mask and source of a rating item."""
    with sqlite3.connect(db) as conn:
        rle, source = conn.execute(
            "SELECT COALESCE(r.rle, m.rle), r.source FROM rating_items r LEFT JOIN masks m ON m.id = r.mask_id"
            " WHERE r.id = ?",
            (item,),
        ).fetchone()
    return rle_to_mask(json.loads(rle)), source


def _maybe_screenshot(page, db) -> None:
    """With ``SEGANY_SCREENSHOT_RATING=path``: the page showing the manual mask of the big bear
    (the same picture whatever the random order), in 256 colours (about 180 KB instead of 680 KB)."""
    import io

    from segany.atomic_files import atomic_path

    path = os.environ.get("SEGANY_SCREENSHOT_RATING")
    mask, source = _stored(db, page.evaluate("window.segrate.item"))
    if not path or source != "manual" or mask.shape != (321, 481):
        return
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    with atomic_path(path) as tmp:
        image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(tmp, format="PNG", optimize=True)


def _shown_mask(page) -> np.ndarray:
    h, w, flat = page.evaluate("[window.segrate.H, window.segrate.W, Array.from(window.segrate.mask)]")
    return np.array(flat, bool).reshape(h, w)


def _wait_shown(page) -> None:
    page.wait_for_function("['ready', 'done', 'error'].includes(document.body.dataset.state)", timeout=30_000)
    assert page.evaluate("document.body.dataset.state") in ("ready", "done"), page.text_content("#status")


def _rate(page, how: str) -> str:
    """Rate the mask shown with a key (``"8"``, ``"0"`` = 10) or a button click (``"click 6"``)."""
    item = page.evaluate("window.segrate.item")
    if how.startswith("click "):
        page.click(f"#scale button[data-rating='{how.split()[1]}']")
    else:
        page.keyboard.press(how)
    page.wait_for_function(f"document.body.dataset.lastRated === '{item}'", timeout=30_000)
    _wait_shown(page)
    return item


def test_rate_masks_blind_reload_and_report(server, tmp_path):
    with chromium_page(f"{server['url']}/?token={TOKEN}", viewport={"width": 1280, "height": 720}) as page:
        replies = []
        page.on("response", lambda r: replies.append(r) if "/api/rate/next" in r.url else None)
        _wait_shown(page)
        assert page.evaluate("[window.segrate.rated, window.segrate.remaining]") == [0, 6]
        assert "How to rate" in page.text_content("#guideline")
        first = page.evaluate("window.segrate.item")
        stored, _ = _stored(server["db"], first)
        assert np.array_equal(_shown_mask(page), stored)  # the page draws exactly the stored mask
        given = {}
        for how, value in [("8", 8), ("3", 3), ("0", 10), ("click 6", 6)]:
            _maybe_screenshot(page, server["db"])
            given[_rate(page, how)] = value
        assert len(given) == 4 and page.evaluate("window.segrate.rated") == 4
        # a reload continues where the rater was, with a mask not rated yet
        texts = [r.text() for r in replies]  # bodies are gone once the page navigates
        replies.clear()
        page.reload()
        _wait_shown(page)
        assert page.evaluate("[window.segrate.rated, window.segrate.remaining]") == [4, 2]
        assert page.evaluate("window.segrate.item") not in given
        while page.evaluate("document.body.dataset.state") == "ready":
            item = page.evaluate("window.segrate.item")
            assert np.array_equal(_shown_mask(page), _stored(server["db"], item)[0])
            _maybe_screenshot(page, server["db"])
            given[_rate(page, "7")] = 7
        assert page.evaluate("document.body.dataset.state") == "done" and len(given) == 6
        assert "you rated 6 masks" in page.text_content("#status")
        # blind: no reply named a source, a model, an image file
        texts += [r.text() for r in replies]
        assert len(texts) >= 7
        for text in texts:
            body = json.loads(text)
            body.pop("runs", None)
            assert not any(word in json.dumps(body) for word in HIDDEN), body
        # another rater starts over, in their own order
        page.fill("#annotator", "rater2")
        page.press("#annotator", "Tab")
        page.wait_for_function("window.segrate.rated === 0 && document.body.dataset.state === 'ready'")
        assert not page.errors, page.errors

    with sqlite3.connect(server["db"]) as conn:
        rows = conn.execute("SELECT item_id, annotator, rating, seconds, created_at FROM ratings").fetchall()
    assert {r[0]: r[2] for r in rows} == given and {r[1] for r in rows} == {"rater1"}
    assert all(r[3] > 0 and r[4] > 1e9 for r in rows)

    out = tmp_path / "report"
    assert main(["engine", "ratings", "--db", str(server["db"]), "--out", str(out)]) == 0
    report = json.loads((out / "ratings.json").read_text())
    by_source: dict[str, list[int]] = {}
    for item, value in given.items():
        by_source.setdefault(_stored(server["db"], item)[1], []).append(value)
    assert {g["source"]: (g["masks"], g["mean"]) for g in report["by_source"]} == {
        s: (2, pytest.approx(float(np.mean(v)))) for s, v in by_source.items()
    }
    assert set(by_source) == {"manual", "automatic", "ground_truth"} and (out / "ratings_histogram.png").is_file()
