"""Annotation store, SA-1B/COCO export, engine report and pre-fill."""

from __future__ import annotations

import json
import sqlite3
import threading
import warnings

import numpy as np
import pytest

from segany.cli import main
from segany.engine.export import export_dataset
from segany.engine.report import engine_statistics, format_table, plot_statistics
from segany.engine.store import StoreError, open_store
from segany.masks import masks_to_coco_rle


def _rle(mask: np.ndarray) -> dict:
    return masks_to_coco_rle(mask[None])[0]


def _mask(h, w, y0, x0, dy=5, dx=7) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0 : y0 + dy, x0 : x0 + dx] = True
    return m


def exercise_store(store, tmp_path) -> None:
    """Behaviour every backend must have (also run against PostgreSQL in the slow set)."""
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    ia = store.add_image(a, 40, 30)
    assert store.add_image(a, 40, 30) == ia  # idempotent
    ib = store.add_image(b, 20, 10)
    assert [r.id for r in store.images()] == [ia, ib]
    m1 = _mask(30, 40, 2, 3)
    id1 = store.save_mask(ia, _rle(m1), source="manual", annotator="ann", model_version="v1", seconds=3.0,
                          client_id="c1")
    assert store.save_mask(ia, _rle(m1), source="manual", annotator="ann", model_version="v1", seconds=3.0,
                           client_id="c1") == id1
    with pytest.raises(StoreError, match="source"):
        store.save_mask(ia, _rle(m1), source="guess", annotator="a", model_version="v", seconds=1)
    with pytest.raises(StoreError, match="does not match"):
        store.save_mask(ib, _rle(m1), source="manual", annotator="a", model_version="v", seconds=1)
    with pytest.raises(StoreError, match="no image"):
        store.save_mask(999, _rle(m1), source="manual", annotator="a", model_version="v", seconds=1)
    with pytest.raises(StoreError, match="seconds"):
        store.save_mask(ia, _rle(m1), source="manual", annotator="a", model_version="v", seconds=-1)
    rows = store.masks(ia)
    assert len(rows) == 1 and rows[0].area == 35 and rows[0].bbox == [3.0, 2.0, 7.0, 5.0]
    id2 = store.save_mask(ia, _rle(_mask(30, 40, 10, 10)), source="prefilled", annotator="p", model_version="v1",
                          seconds=0.0, score=0.97)
    id3 = store.save_mask(ia, _rle(_mask(30, 40, 10, 12)), source="prefilled", annotator="ann", model_version="v1",
                          seconds=2.0, replaces=id2)
    assert [m.id for m in store.masks(ia)] == [id1, id3]
    assert store.delete_mask(id1) and not store.delete_mask(id1)
    assert [m.id for m in store.masks(ia)] == [id3]
    assert len(store.masks(ia, include_deleted=True)) == 3

    # concurrent writers: no lost or duplicated masks
    def work(k):
        for i in range(15):
            store.save_mask(ib, _rle(_mask(10, 20, 1, i % 10, 3, 3)), source="manual", annotator=f"w{k}",
                            model_version="v2", seconds=1.0, client_id=f"w{k}-{i}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.masks(ib)) == 45
    assert store.count_masks() == 46


def test_sqlite_store(tmp_path):
    db = tmp_path / "db.sqlite"
    store = open_store(db)
    exercise_store(store, tmp_path)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    again = open_store(db)  # reopening keeps everything
    assert again.count_masks() == 46
    with pytest.raises(StoreError, match="folder does not exist"):
        open_store(tmp_path / "missing" / "db.sqlite")


@pytest.fixture()
def filled(tmp_path):
    from PIL import Image

    store = open_store(tmp_path / "db.sqlite")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((30, 40), (25, 35), (20, 20))):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
        store.add_image(p, w, h)
    masks = {1: [_mask(30, 40, 1, 1), _mask(30, 40, 10, 20)], 2: [_mask(25, 35, 3, 4)]}
    for image_id, ms in masks.items():
        for k, m in enumerate(ms):
            store.save_mask(image_id, _rle(m), source="manual" if k == 0 else "prefilled", annotator="a",
                            model_version="v1" if image_id == 1 else "v2", seconds=10.0 + k, score=0.9)
    return store, masks, tmp_path


def test_export_sa1b_and_coco(filled):
    from pycocotools.coco import COCO

    store, masks, tmp = filled
    out = tmp / "out"
    assert main(["engine", "export", "--db", str(tmp / "db.sqlite"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["coco.json", "sa1b"]
    assert sorted(p.name for p in (out / "sa1b").iterdir()) == ["sa_1.json", "sa_1.png", "sa_2.json", "sa_2.png"]
    rec = json.loads((out / "sa1b" / "sa_1.json").read_text())
    assert rec["image"] == {"image_id": 1, "width": 40, "height": 30, "file_name": "sa_1.png"}
    from segany.masks import rle_to_mask

    for ann, m in zip(rec["annotations"], masks[1]):
        assert np.array_equal(rle_to_mask(ann["segmentation"]), m)
        assert ann["area"] == m.sum() and len(ann["bbox"]) == 4 and ann["crop_box"] == [0, 0, 40, 30]
        assert {"predicted_iou", "stability_score", "point_coords", "source", "seconds"} <= set(ann)
        x, y = ann["point_coords"][0]
        assert m[int(y), int(x)]  # a point inside the mask, as SA-1B records have
    try:  # the training side's SA-1B reader accepts the folder as it is
        from segany.data.sa1b import list_records, validate_record
    except ImportError:
        pass
    else:
        records = list_records(out / "sa1b")
        assert len(records) == 2 and all(validate_record(r) == [] for r in records)
    coco = COCO(str(out / "coco.json"))
    assert len(coco.getAnnIds()) == 3
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[2]))[0]
    assert np.array_equal(coco.annToMask(ann).astype(bool), masks[2][0])
    only_manual = export_dataset(store, tmp / "manual", sources=("manual",), copy_images=False)
    assert only_manual == {"images": 2, "masks": 2}
    assert json.loads((tmp / "manual" / "sa1b" / "sa_1.json").read_text())["image"]["file_name"].endswith("im0.png")
    assert main(["engine", "export", "--db", str(tmp / "nope.sqlite"), "--out", str(out)]) == 2


def test_report_statistics_and_plot(filled, capsys):
    store, masks, tmp = filled
    rows = engine_statistics(store)
    by = {(r["stage"], r["model_version"]): r for r in rows}
    assert by[("manual", "v1")]["masks"] == 1 and by[("manual", "v2")]["images"] == 1
    assert by[("prefilled", "v1")]["seconds_per_mask_mean"] == 11.0
    assert by[("manual", "v1")]["masks_per_image"] == 1.0
    table = format_table(rows, len(store.images()))
    assert "images in the store: 3" in table
    png = plot_statistics(rows, tmp / "report.png")
    assert png.stat().st_size > 1000
    assert main(["engine", "report", "--db", str(tmp / "db.sqlite"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images_in_store"] == 3 and len(out["groups"]) == 3


def test_prefill_stores_masks_once(tmp_path):
    from PIL import Image

    from segany import load_default_model
    from segany.engine.prefill import PrefillUnavailable, make_generator, prefill_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_default_model()
    try:
        # thresholds at zero so even the untrained fallback model proposes masks
        gen = make_generator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                             min_mask_region_area=0)
    except PrefillUnavailable as exc:
        pytest.skip(str(exc))
    store = open_store(tmp_path / "db.sqlite")
    rng = np.random.default_rng(0)
    p = tmp_path / "im.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(p)
    image = store.image(store.add_image(p, 64, 48))
    ids = prefill_image(store, image, p, model, annotator="pre", model_version="v0", generator=gen)
    rows = store.masks(image.id)
    assert [r.id for r in rows] == ids
    assert all(r.source == "prefilled" and r.seconds == 0.0 and r.rle["size"] == [48, 64] for r in rows)
    if ids:
        assert prefill_image(store, image, p, model, annotator="pre", model_version="v0", generator=gen) == []
