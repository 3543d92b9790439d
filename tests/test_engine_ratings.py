"""Mask-quality rating study: the pool, its per-annotator order, blindness, stored ratings,
ground-truth import, the bootstrap and ``segany engine ratings``; bad input everywhere."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from engine_helpers import served_env  # noqa: E402
from segany.cli import main  # noqa: E402
from segany.data import sa1b  # noqa: E402
from segany.engine import ratings  # noqa: E402
from segany.engine.export import export_dataset  # noqa: E402
from segany.engine.store import GROUND_TRUTH, RatingConflict, StoreError, open_store  # noqa: E402
from segany.masks import masks_to_coco_rle, rle_to_mask  # noqa: E402
from test_engine_postgres import pg_url  # noqa: E402, F401  (the fixture: a PostgreSQL server, slow set)

TOKEN = "rate-token"
SOURCES_AND_VERSIONS = [("manual", "modelA-v1"), ("prefilled", "modelA-v1"), ("automatic", "modelB-v2")]
HIDDEN = ("manual", "prefilled", "automatic", "ground_truth", "modelA", "modelB", "img0", "img1", "sa_")


def box_mask(h: int, w: int, y0: int, x0: int, dy: int, dx: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0 : y0 + dy, x0 : x0 + dx] = True
    return m


def fill_store(store, image_ids: list[int], h: int, w: int) -> dict[int, np.ndarray]:
    """Two masks per image and source (one deleted at the end); returns {mask id: mask} of the live ones."""
    live = {}
    for image_id in image_ids:
        for k, (source, version) in enumerate(SOURCES_AND_VERSIONS):
            m = box_mask(h, w, 2 + 3 * k, 1 + 4 * k, 5 + k, 6)
            live[
                store.save_mask(
                    image_id,
                    masks_to_coco_rle(m[None])[0],
                    source=source,
                    annotator="a",
                    model_version=version,
                    seconds=1.0,
                )
            ] = m
    deleted = store.save_mask(
        image_ids[0],
        masks_to_coco_rle(box_mask(h, w, 0, 0, 3, 3)[None])[0],
        source="manual",
        annotator="a",
        model_version="modelA-v1",
        seconds=1.0,
    )
    store.delete_mask(deleted)
    return live


def write_sa1b(folder, image_path, masks: list[np.ndarray], image_id: int = 1):
    """One SA-1B record (image copied beside its JSON) with these masks."""
    h, w = masks[0].shape
    return sa1b.write_record(folder, image_id, image_path, masks, (h, w))


@pytest.fixture()
def env(tmp_path):
    client, store, config, tmp = served_env(
        tmp_path, None, [("img0.png", 30, 40), ("img1.png", 30, 40)], TOKEN, rate=True
    )
    live = fill_store(store, [1, 2], 30, 40)
    gt_masks = [box_mask(30, 40, 10, 10, 8, 8), box_mask(30, 40, 1, 20, 4, 15)]
    write_sa1b(tmp / "images" / "gt", tmp / "images" / "img0.png", gt_masks)
    summary = ratings.import_ground_truth(store, ratings.read_ground_truth(tmp / "images" / "gt"))
    assert (summary.records, summary.masks, summary.added) == (1, 2, 2)
    return client, store, tmp, live, gt_masks


def _rate_all(client, annotator: str, value) -> list[dict]:
    """Rate every item shown to ``annotator`` with ``value(item id)``; returns the /next replies."""
    shown = []
    while True:
        r = client.get("/api/rate/next", headers={"X-Annotator": annotator})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["item"] is None:
            return shown
        shown.append(body)
        rated = client.post(
            f"/api/rate/items/{body['item']}/rating",
            json={"rating": value(body["item"]), "seconds": 2.5},
            headers={"X-Annotator": annotator},
        )
        assert rated.status_code == 201, rated.text


def test_pool_order_is_per_annotator_blind_and_never_repeats(env):
    client, store, tmp, live, gt_masks = env
    pool_size = len(live) + len(gt_masks)  # the deleted mask is not in the pool
    first = client.get("/api/rate/next", headers={"X-Annotator": "ann"}).json()
    assert client.get("/api/rate/next", headers={"X-Annotator": "ann"}).json()["item"] == first["item"]  # a reload
    assert (first["rated"], first["remaining"]) == (0, pool_size)
    shown = _rate_all(client, "ann", lambda item: 4)
    items = [s["item"] for s in shown]
    assert len(items) == pool_size == len(set(items))  # all of the pool, none twice
    assert [s["rated"] for s in shown] == list(range(pool_size))
    assert [s["remaining"] for s in shown] == list(range(pool_size, 0, -1))
    # blind: exactly these fields, and nothing that names a source, a model, a mask id or a file
    for s in shown:
        assert set(s) == {"item", "width", "height", "runs", "annotator", "rated", "remaining"}
        text = json.dumps({k: v for k, v in s.items() if k != "runs"})
        assert not any(word in text for word in HIDDEN), text
        image = client.get(f"/api/rate/items/{s['item']}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert "content-disposition" not in image.headers
    # the mask sent is the stored one, decoded from the page's run format
    by_item = {i.item_id: i for i in store.rating_pool()}
    for s in shown:
        item = store.rating_item(s["item"])
        runs_mask = rle_to_mask({"size": [s["height"], s["width"]], "counts": s["runs"]})
        assert np.array_equal(runs_mask, rle_to_mask(item.rle)) and s["item"] in by_item
    sources = sorted(store.rating_item(i).source for i in items)
    assert sources.count(GROUND_TRUTH) == 2 and sources.count("manual") == 2
    # another annotator gets another order (the same set); the first one is done
    other = [s["item"] for s in _rate_all(client, "bob", lambda item: 5)]
    assert sorted(other) == sorted(items) and other != items
    assert client.get("/api/rate/next", headers={"X-Annotator": "ann"}).json() == {
        "item": None,
        "annotator": "ann",
        "rated": pool_size,
        "remaining": 0,
    }
    # a mask accepted later joins the pool; a deleted one leaves it
    new_id = store.save_mask(
        1,
        masks_to_coco_rle(box_mask(30, 40, 20, 20, 4, 4)[None])[0],
        source="manual",
        annotator="a",
        model_version="modelA-v1",
        seconds=1.0,
    )
    late = client.get("/api/rate/next", headers={"X-Annotator": "ann"}).json()
    assert late["remaining"] == 1 and store.rating_item(late["item"]).source == "manual"
    store.delete_mask(new_id)
    assert client.get("/api/rate/next", headers={"X-Annotator": "ann"}).json()["item"] is None
    assert client.post(f"/api/rate/items/{late['item']}/rating", json={"rating": 3}).status_code == 404


def test_ratings_are_stored_final_and_validated(env):
    client, store, tmp, *_ = env
    item = client.get("/api/rate/next").json()["item"]
    r = client.post(
        f"/api/rate/items/{item}/rating", json={"rating": 7, "seconds": 3.25}, headers={"X-Annotator": "carol"}
    )
    assert r.status_code == 201 and r.json()["rating"] == 7
    again = client.post(f"/api/rate/items/{item}/rating", json={"rating": 7}, headers={"X-Annotator": "carol"})
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]  # a retry, not a second row
    changed = client.post(f"/api/rate/items/{item}/rating", json={"rating": 2}, headers={"X-Annotator": "carol"})
    assert changed.status_code == 409 and "final" in changed.json()["detail"]
    bad = {
        "rating 0": ({"rating": 0}, 422, "rating"),
        "rating 11": ({"rating": 11}, 422, "rating"),
        "float": ({"rating": 7.5}, 422, "integer"),
        "string": ({"rating": "7"}, 422, "integer"),
        "bool": ({"rating": True}, 422, "integer"),
        "missing": ({}, 422, "rating"),
        "extra": ({"rating": 5, "source": "manual"}, 422, "source"),
        "negative seconds": ({"rating": 5, "seconds": -1}, 422, "seconds"),
    }
    for name, (body, status, word) in bad.items():
        r = client.post(f"/api/rate/items/{item}/rating", json=body, headers={"X-Annotator": "dave"})
        assert r.status_code == status and word in r.json()["detail"], (name, r.text)
    for path, status in [
        ("/api/rate/items/0123456789abcdef/rating", 404),
        ("/api/rate/items/12/rating", 422),
        ("/api/rate/items/0123456789ABCDEF/rating", 422),
    ]:
        r = client.post(path, json={"rating": 5})
        assert r.status_code == status and r.json()["detail"], path
    assert client.get("/api/rate/items/0123456789abcdef/image").status_code == 404
    with sqlite3.connect(tmp / "db.sqlite") as conn:
        rows = conn.execute("SELECT item_id, annotator, rating, seconds, created_at FROM ratings").fetchall()
    assert len(rows) == 1 and rows[0][:4] == (item, "carol", 7, 3.25) and rows[0][4] > 1e9
    # the store refuses what the schema would have: out of range, non-integer, unknown item
    for value in (0, 11, 7.0, True):
        with pytest.raises(StoreError, match="integer from 1 to 10"):
            store.save_rating(item, "eve", value)
    with pytest.raises(StoreError, match="no rating item"):
        store.save_rating("ffffffffffffffff", "eve", 5)
    with pytest.raises(RatingConflict):
        store.save_rating(item, "carol", 8)


def test_rating_server_serves_only_the_rating_api(env):
    client, *_ = env
    from fastapi.testclient import TestClient

    bare = TestClient(client.app)
    assert bare.get("/api/rate/next").status_code == 401  # the token is required
    assert bare.get("/api/rate/next", headers={"Authorization": "Bearer no"}).status_code == 403
    page = bare.get("/")
    assert page.status_code == 200 and "How to rate" in page.text and "/rate/rate.js" in page.text
    assert bare.get("/rate/rate.js").status_code == 200 and bare.get("/rate/app.js").status_code == 404
    # the annotation API (which lists masks with their source) is not mounted on a rating server
    for path in ("/api/images", "/api/images/1/masks", "/api/model", "/static/app.js", "/api/decoder.onnx"):
        assert client.get(path).status_code == 404, path


def test_empty_pool_is_a_clear_error(tmp_path, capsys):
    client, store, config, tmp = served_env(tmp_path, None, [("img0.png", 30, 40)], TOKEN, rate=True)
    r = client.get("/api/rate/next")
    assert r.status_code == 404 and "nothing to rate" in r.json()["detail"]
    assert main(["serve", str(tmp / "images"), "--db", str(tmp / "db.sqlite"), "--rate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to rate" in err[0]


def test_ground_truth_import_is_separate_idempotent_and_checked(env, capsys):
    client, store, tmp, live, gt_masks = env
    masks_before = len(store.masks())
    # re-import adds nothing; the masks never reach the annotation masks or the export
    assert main(["engine", "import-gt", str(tmp / "images" / "gt"), "--db", str(tmp / "db.sqlite")]) == 0
    assert "added 0 ground-truth masks" in capsys.readouterr().out
    assert len(store.masks()) == masks_before
    counts = export_dataset(store, tmp / "export", copy_images=False)
    assert counts["masks"] == len(live)
    capsys.readouterr()  # the export's progress bar
    gt_items = [store.rating_item(e.item_id) for e in store.rating_pool()]
    gt_items = [i for i in gt_items if i.source == GROUND_TRUTH]
    assert sorted(int(rle_to_mask(i.rle).sum()) for i in gt_items) == sorted(int(m.sum()) for m in gt_masks)

    def pool_size():
        return len(store.rating_pool())

    n = pool_size()
    # a mask from another image (its size is not the image's): one line, exit 2, nothing written
    bad = tmp / "bad"
    json_path = write_sa1b(bad, tmp / "images" / "img1.png", [box_mask(30, 40, 1, 1, 5, 5)], image_id=7)
    record = json.loads(json_path.read_text())
    record["annotations"].append(
        dict(record["annotations"][0], id=99, segmentation=masks_to_coco_rle(box_mask(20, 40, 1, 1, 5, 5)[None])[0])
    )
    json_path.write_text(json.dumps(record))
    new_db = tmp / "new.sqlite"
    for db in (tmp / "db.sqlite", new_db):
        assert main(["engine", "import-gt", str(bad), "--db", str(db)]) == 2
        err = capsys.readouterr().err.strip()
        assert "sa_7.json annotation 1" in err and "does not match" in err and len(err.splitlines()) == 1
    assert pool_size() == n and not new_db.exists()
    # the JSON's image size is not the file's
    record["annotations"] = record["annotations"][:1]
    record["image"]["width"] = 41
    json_path.write_text(json.dumps(record))
    assert main(["engine", "import-gt", str(bad), "--db", str(new_db)]) == 2
    assert "the JSON says 41x30 but sa_7.png is 40x30" in capsys.readouterr().err
    # empty and missing folders, records without masks
    (tmp / "empty").mkdir()
    assert main(["engine", "import-gt", str(tmp / "empty"), "--db", str(new_db)]) == 2
    assert "no SA-1B .json records" in capsys.readouterr().err
    assert main(["engine", "import-gt", str(tmp / "nowhere"), "--db", str(new_db)]) == 2
    assert "not found" in capsys.readouterr().err
    record["image"]["width"], record["annotations"] = 40, []
    json_path.write_text(json.dumps(record))
    assert main(["engine", "import-gt", str(bad), "--db", str(new_db)]) == 2
    assert "no ground-truth masks" in capsys.readouterr().err
    assert pool_size() == n and not new_db.exists()


def test_ground_truth_sampling_per_image(tmp_path):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    write_sa1b(tmp_path / "sa1b", image, [box_mask(20, 30, k, k, 3, 3) for k in range(8)])
    picks = [
        [m.key for m in ratings.read_ground_truth(tmp_path / "sa1b", max_per_image=3, seed=s).masks] for s in (0, 0, 1)
    ]
    assert len(picks[0]) == 3 == len(set(picks[0])) and picks[0] == picks[1] and picks[0] != picks[2]
    with pytest.raises(ValueError, match="at least 1"):
        ratings.read_ground_truth(tmp_path / "sa1b", max_per_image=0)


def test_bootstrap_ci_on_a_known_distribution():
    p = np.array([1, 1, 2, 3, 5, 8, 13, 21, 25, 21], float)
    p /= p.sum()
    values = np.arange(1, 11)
    true_mean = float(values @ p)
    true_sd = float(np.sqrt(((values - true_mean) ** 2) @ p))
    rng = np.random.default_rng(123)
    sample = rng.choice(values, size=4000, p=p)
    mean, low, high = ratings.bootstrap_mean_ci(sample, resamples=10_000, seed=0)
    assert mean == pytest.approx(sample.mean()) and low < mean < high
    assert low < true_mean < high
    assert high - low == pytest.approx(2 * 1.96 * true_sd / np.sqrt(4000), rel=0.06)  # the normal approximation
    # the same interval as resampling the values themselves with replacement
    idx = np.random.default_rng(1).integers(0, sample.size, (2000, sample.size), dtype=np.int32)
    direct = np.quantile(sample[idx].mean(axis=1), [0.025, 0.975])
    assert low == pytest.approx(direct[0], abs=0.01) and high == pytest.approx(direct[1], abs=0.01)
    assert ratings.bootstrap_mean_ci(sample, seed=7) == ratings.bootstrap_mean_ci(sample, seed=7)  # seeded
    # coverage: about 95% of small samples' intervals hold the true mean
    hits = 0
    for k in range(300):
        s = rng.choice(values, size=60, p=p)
        _, lo, hi = ratings.bootstrap_mean_ci(s, resamples=2000, seed=k)
        hits += lo <= true_mean <= hi
    assert 0.90 <= hits / 300 <= 0.98
    assert ratings.bootstrap_mean_ci([6]) == (6.0, 6.0, 6.0)
    with pytest.raises(ValueError, match="at least one"):
        ratings.bootstrap_mean_ci([])


def test_engine_ratings_report(env, tmp_path, capsys):
    client, store, tmp, live, gt_masks = env
    score = {"manual": 8, "prefilled": 6, "automatic": 7, GROUND_TRUTH: 9}
    _rate_all(client, "ann", lambda item: score[store.rating_item(item).source])
    _rate_all(client, "bob", lambda item: 1 + sum(map(ord, item)) % 10)
    # a rated mask deleted since is left out of the statistics, and said so
    store.delete_mask(min(live))  # the first manual mask
    out = tmp_path / "report"
    assert main(["engine", "ratings", "--db", str(tmp / "db.sqlite"), "--out", str(out), "--resamples", "2000"]) == 0
    table = capsys.readouterr().out
    assert "ground_truth" in table and "modelB-v2" in table and "2 ratings of masks deleted since" in table
    report = json.loads((out / "ratings.json").read_text())
    expected = _expected_means(store)
    by_source = {g["source"]: g for g in report["by_source"]}
    assert [g["source"] for g in report["by_source"]] == ["manual", "prefilled", "automatic", GROUND_TRUTH]
    for source, g in by_source.items():
        assert g["mean"] == pytest.approx(expected[source])
        assert g["ci_low"] <= g["mean"] <= g["ci_high"] and g["raters"] == 2
        assert sum(g["histogram"]) == g["ratings"] == 2 * g["masks"]
    assert (by_source["manual"]["masks"], by_source[GROUND_TRUTH]["masks"]) == (1, 2)
    versions = {(g["source"], g["model_version"]) for g in report["by_model_version"]}
    assert versions == {
        ("manual", "modelA-v1"),
        ("prefilled", "modelA-v1"),
        ("automatic", "modelB-v2"),
        (GROUND_TRUTH, ""),
    }
    assert report["left_out_deleted"] == 2 and report["resamples"] == 2000
    assert "| ground_truth |" in (out / "ratings.md").read_text()
    from PIL import Image

    with Image.open(out / "ratings_histogram.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200
    # seeded: the same report again
    assert main(["engine", "ratings", "--db", str(tmp / "db.sqlite"), "--out", str(out), "--resamples", "2000"]) == 0
    assert json.loads((out / "ratings.json").read_text()) == report
    # bad input: one line, exit 2, nothing written
    capsys.readouterr()
    empty = tmp_path / "empty.sqlite"
    open_store(empty).close()
    for argv, words in [
        (["--db", str(empty), "--out", str(tmp_path / "none")], "no ratings"),
        (["--db", str(tmp / "db.sqlite"), "--out", str(tmp_path / "none"), "--resamples", "0"], "--resamples"),
        (["--db", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "none")], "no annotation database"),
        (["--db", str(tmp / "db.sqlite"), "--out", str(out / "ratings.md")], "is a file"),
    ]:
        assert main(["engine", "ratings", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "none").exists()


def _expected_means(store) -> dict[str, float]:
    """Mean over masks of each mask's mean rating, per source, computed the plain way."""
    per_item: dict[str, list[int]] = {}
    source: dict[str, str] = {}
    for r in store.ratings():
        if r.live:
            per_item.setdefault(r.item_id, []).append(r.rating)
            source[r.item_id] = r.source
    out: dict[str, list[float]] = {}
    for item, values in per_item.items():
        out.setdefault(source[item], []).append(float(np.mean(values)))
    return {s: float(np.mean(v)) for s, v in out.items()}


def exercise_rating_store(store, tmp_path) -> None:
    """The rating tables' behaviour on any backend (also run against PostgreSQL in the slow set)."""
    from segany.engine.store import GroundTruthMask

    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    iid = store.add_image(image, 40, 30)
    kept = store.save_mask(
        iid,
        masks_to_coco_rle(box_mask(30, 40, 1, 1, 4, 4)[None])[0],
        source="automatic",
        annotator="a",
        model_version="v9",
        seconds=0.0,
    )
    gone = store.save_mask(
        iid,
        masks_to_coco_rle(box_mask(30, 40, 9, 9, 4, 4)[None])[0],
        source="manual",
        annotator="a",
        model_version="v9",
        seconds=1.0,
    )
    assert store.sync_rating_items() == 2 and store.sync_rating_items() == 0
    gt_image = tmp_path / "gt.png"
    gt_image.write_bytes(b"x")
    good = GroundTruthMask(gt_image, 20, 10, "gt#1", masks_to_coco_rle(box_mask(10, 20, 1, 1, 3, 3)[None])[0], "g 1")
    wrong = GroundTruthMask(gt_image, 20, 10, "gt#2", masks_to_coco_rle(box_mask(12, 20, 1, 1, 3, 3)[None])[0], "g 2")
    with pytest.raises(StoreError, match="g 2 segmentation.size"):
        store.add_ground_truth([good, wrong])
    assert len(store.rating_pool()) == 2 and len(store.images()) == 1  # all or nothing
    assert store.add_ground_truth([good]) == 1 and store.add_ground_truth([good]) == 0
    resized = GroundTruthMask(gt_image, 21, 10, "gt#3", masks_to_coco_rle(box_mask(10, 21, 1, 1, 3, 3)[None])[0], "g 3")
    with pytest.raises(StoreError, match="as 20x10 pixels"):
        store.add_ground_truth([resized])
    pool = store.rating_pool("ann")
    assert len(pool) == 3 and not any(e.rated for e in pool)
    items = {store.rating_item(e.item_id).source: e.item_id for e in pool}
    assert set(items) == {"automatic", "manual", GROUND_TRUTH}
    assert store.save_rating(items[GROUND_TRUTH], "ann", 9, 1.5)[1] is True
    assert store.save_rating(items[GROUND_TRUTH], "ann", 9)[1] is False
    with pytest.raises(RatingConflict):
        store.save_rating(items[GROUND_TRUTH], "ann", 4)
    store.save_rating(items["manual"], "ann", 3)
    store.save_rating(items["automatic"], "bob", 6)
    assert {e.item_id for e in store.rating_pool("ann") if e.rated} == {items[GROUND_TRUTH], items["manual"]}
    store.delete_mask(gone)
    with pytest.raises(StoreError, match="no longer in the pool"):
        store.rating_item(items["manual"])
    with pytest.raises(StoreError, match="no longer in the pool"):
        store.save_rating(items["manual"], "bob", 5)
    rows = store.ratings()
    assert [(r.source, r.model_version, r.annotator, r.rating, r.live) for r in rows] == [
        (GROUND_TRUTH, "", "ann", 9, True),
        ("manual", "v9", "ann", 3, False),
        ("automatic", "v9", "bob", 6, True),
    ]
    assert len(store.masks()) == 1 and store.masks()[0].id == kept  # ground truth never among the masks


def test_rating_store_sqlite(tmp_path):
    exercise_rating_store(open_store(tmp_path / "db.sqlite"), tmp_path)


@pytest.mark.slow
def test_rating_store_postgres(pg_url, tmp_path):  # noqa: F811 (the imported fixture)
    exercise_rating_store(open_store(pg_url), tmp_path)
