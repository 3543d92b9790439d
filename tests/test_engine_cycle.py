"""The model-in-the-loop cycle end to end on a tiny store: export, fine-tune, evaluate, register,
serve the registered version, and report clicks per mask per model version.

A few synthetic images (a red rectangle and a green disc on grey, their masks saved through
the Store API), a 2-step fine-tune of the shipped model and a one-image, 9-click evaluation
keep the cycle to seconds on one core.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from engine_helpers import quiet_default_model  # noqa: E402
from segany.cli import main  # noqa: E402
from segany.data import sa1b  # noqa: E402
from segany.engine.cycle import CycleError, CycleOptions, run_cycle  # noqa: E402
from segany.engine.report import engine_statistics, format_table, plot_statistics, version_statistics  # noqa: E402
from segany.engine.served_model import model_version_of  # noqa: E402
from segany.engine.server import ServerConfig, create_app  # noqa: E402
from segany.engine.store import open_store  # noqa: E402
from segany.engine.versions import VersionError, get_version, list_versions  # noqa: E402
from segany.masks import mask_to_rle, masks_to_coco_rle, rle_to_mask  # noqa: E402
from segany.modeling.fingerprint import image_encoder_digest  # noqa: E402
from segany.modeling.registry import build_model  # noqa: E402

TOKEN = "cycle-token"
H, W = 120, 160


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """An image with a rectangle and a disc at random places, and their two masks."""
    img = np.full((H, W, 3), 60, np.uint8)
    y, x = int(rng.integers(5, 50)), int(rng.integers(5, 60))
    rect = np.zeros((H, W), bool)
    rect[y : y + 40, x : x + 50] = True
    yy, xx = np.mgrid[:H, :W]
    cy, cx = int(rng.integers(30, 90)), int(rng.integers(100, 135))
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 22**2) & ~rect
    img[rect] = (210, 40, 40)
    img[disc] = (40, 200, 60)
    return img, [rect, disc]


@pytest.fixture()
def tiny(tmp_path):
    """A store with 3 images: 2 manual masks (with clicks), 4 pre-filled (without), 1 deleted;
    and a one-image SA-1B eval folder."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    store = open_store(tmp_path / "db.sqlite")
    deleted = None
    for i in range(3):
        img, masks = _scene(rng)
        path = images / f"im{i}.png"
        Image.fromarray(img).save(path)
        image_id = store.add_image(path, W, H)
        for k, m in enumerate(masks):
            rle = masks_to_coco_rle(m[None])[0]
            if i == 0:
                store.save_mask(
                    image_id,
                    rle,
                    source="manual",
                    annotator="ann",
                    model_version="v0",
                    seconds=8.0 + k,
                    clicks=2 + 2 * k,
                )  # 2 and 4 clicks
            else:
                store.save_mask(
                    image_id, rle, source="prefilled", annotator="pre", model_version="v0", seconds=0.0, score=0.95
                )
        if i == 2:
            deleted = store.save_mask(
                image_id,
                masks_to_coco_rle(masks[0][None])[0],
                source="manual",
                annotator="ann",
                model_version="v0",
                seconds=5.0,
                clicks=9,
            )
    assert store.delete_mask(deleted)
    eval_dir = tmp_path / "eval_sa1b"
    eval_dir.mkdir()
    img, masks = _scene(rng)
    Image.fromarray(img).save(eval_dir / "sa_100.png")
    anns = [sa1b.annotation_record(j + 1, mask=m) for j, m in enumerate(masks)]
    sa1b.write_json(eval_dir / "sa_100.json", sa1b.image_record(100, W, H, "sa_100.png"), anns)
    return store, tmp_path, eval_dir


def test_cycle_registers_a_version_that_serve_runs_and_the_report_counts(tiny, capsys):
    store, tmp, eval_dir = tiny
    db, out = tmp / "db.sqlite", tmp / "runs" / "cycle1"
    started = time.time()
    argv = [
        "engine",
        "cycle",
        "--db",
        str(db),
        "--base",
        "default",
        "--out",
        str(out),
        "--steps",
        "2",
        "--set",
        "train.images_per_step=1",
        "--eval-datasets",
        f"sa1b:{eval_dir}",
        "--limit",
        "1",
        "--max-clicks",
        "9",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "registered model version cycle1" in printed

    # (1) + (4): the registry row describes what was exported (the deleted mask is not) and made
    (row,) = list_versions(store)
    assert row.name == "cycle1" and get_version(store, "cycle1") == row
    assert row.parent == model_version_of(quiet_default_model())
    assert (row.images, row.masks, row.by_source) == (3, 6, {"manual": 2, "prefilled": 4})
    assert started <= row.created_at <= time.time()
    exported = sorted((out / "data" / "sa1b").glob("*.json"))
    assert sum(len(sa1b.load_json(p)["annotations"]) for p in exported) == 6
    # (2): the derived config trained 2 steps from the shipped weights into OUT/train, nothing else
    weights = Path(row.weights)
    assert weights == (out / "train" / "model.safetensors").resolve() and weights.is_file()
    cfg = yaml.safe_load((out / "train_config.yaml").read_text())
    assert cfg["train"]["steps"] == 2 and cfg["train"]["export"] is None and cfg["train"]["images_per_step"] == 1
    assert cfg["data"]["roots"] == [{"path": str((out / "data" / "sa1b").resolve()), "repeat": 1}]
    assert len((out / "train" / "metrics.jsonl").read_text().splitlines()) == 2
    # (3): the eval ran on the chosen split and its numbers are in the row
    report = json.loads((out / "eval" / "report.json").read_text())
    assert row.metrics["points"]["mean"]["mIoU"] == pytest.approx(report["mean"]["top"]["mIoU"])
    assert row.metrics["points"]["datasets"]["eval_sa1b"]["objects"] == 2
    assert 0.0 <= row.metrics["points"]["mean"]["mIoU"]["9"] <= 1.0
    assert row.details["steps"] == 2 and row.details["eval"]["limit"] == 1

    # the same name cannot be registered twice (refused before any training)
    with pytest.raises(CycleError, match="already registered"):
        run_cycle(store, CycleOptions(base="cycle1", out=out, steps=2))
    assert main(["engine", "versions", "--db", str(db)]) == 0
    assert "cycle1" in capsys.readouterr().out

    # serve the registered version: its weights, its name on every mask it saves, with clicks
    config = ServerConfig(
        store=store,
        image_roots=[tmp / "images"],
        cache_dir=tmp / "cache",
        token=TOKEN,
        model_version="cycle1",
        # every grid point kept, so that even a 2-step model's proposals are stored
        prefill_settings={
            "points_per_side": 2,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "min_mask_region_area": 0,
        },
    )
    client = TestClient(create_app(config))
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    info = client.get("/api/model").json()
    assert info["model_version"] == "cycle1" and info["is_trained"] is True
    trained = build_model("auto", weights)
    assert image_encoder_digest(config.model) == image_encoder_digest(trained)
    assert image_encoder_digest(trained) != image_encoder_digest(quiet_default_model())  # fine-tuning changed it
    m = np.zeros((H, W), bool)
    m[10:30, 20:45] = True
    runs = [int(c) for c in mask_to_rle(m[None])[0]["counts"]]
    r = client.post("/api/images/1/masks", json={"size": [H, W], "counts": runs, "seconds": 4.0, "clicks": 3})
    assert r.status_code == 201, r.text
    saved = next(x for x in store.masks(1) if x.id == r.json()["id"])
    assert (saved.model_version, saved.clicks) == ("cycle1", 3)
    assert np.array_equal(rle_to_mask(saved.rle), m)
    listed = client.get("/api/images/1/masks").json()
    assert next(x for x in listed if x["id"] == saved.id)["clicks"] == 3
    for bad in (-1, "3", True, 1.5):
        assert (
            client.post("/api/images/1/masks", json={"size": [H, W], "counts": runs, "clicks": bad}).status_code == 422
        )
    with pytest.raises(VersionError, match="registered: cycle1"):
        create_app(
            ServerConfig(store=store, image_roots=[tmp / "images"], cache_dir=tmp / "cache", model_version="nope")
        )

    # the report: clicks per mask per (stage, version) and per version, with the registry's facts
    by = {(g["stage"], g["model_version"]): g for g in engine_statistics(store)}
    assert by[("manual", "v0")]["clicks_per_mask_mean"] == 3.0 and by[("manual", "v0")]["masks_with_clicks"] == 2
    assert by[("manual", "cycle1")]["clicks_per_mask_mean"] == 3.0 and by[("manual", "cycle1")]["masks"] == 1
    assert by[("prefilled", "v0")]["clicks_per_mask_mean"] is None and by[("prefilled", "v0")]["masks"] == 4
    versions = {v["model_version"]: v for v in version_statistics(store)}
    assert versions["cycle1"]["registered"] and versions["cycle1"]["parent"] == row.parent
    assert versions["cycle1"]["eval_miou_1"] == pytest.approx(row.metrics["points"]["mean"]["mIoU"]["1"])
    assert (versions["v0"]["registered"], versions["v0"]["masks"], versions["v0"]["masks_per_image"]) == (False, 6, 2.0)
    assert versions["v0"]["clicks_per_mask_mean"] == 3.0 and versions["v0"]["seconds_per_mask_mean"] == pytest.approx(
        17.0 / 6
    )
    table = format_table(list(by.values()), 3, list(versions.values()))
    assert "clicks/mask" in table and "cycle1" in table
    assert plot_statistics(list(by.values()), tmp / "report.png", list(versions.values())).stat().st_size > 1000
    assert main(["engine", "report", "--db", str(db), "--json", "--plot", str(tmp / "cli.png")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {v["model_version"] for v in rep["versions"]} == {"cycle1", "v0"}
    assert (tmp / "cli.png").stat().st_size > 1000

    # the page's pre-fill runs the registered version and its masks carry its name
    added = client.post("/api/images/1/prefill").json()["added"]
    assert added and {m.model_version for m in store.masks(1) if m.id in added} == {"cycle1"}


def test_cycle_refuses_bad_requests_before_training(tiny, capsys):
    store, tmp, eval_dir = tiny
    db = str(tmp / "db.sqlite")
    common = ["--db", db, "--steps", "2", "--eval-datasets", f"sa1b:{eval_dir}"]
    cases = [
        (["--base", "nope", "--out", str(tmp / "c1")], "neither a registered model version"),
        (["--base", "default", "--out", str(tmp / "c1"), "--name", "has space"], "must be 1-100 letters"),
        (["--base", "default", "--out", str(tmp / "default")], "names the shipped model"),
        (["--base", "default", "--out", str(tmp / "c1"), "--eval-datasets", "sa1b:/no/such"], "eval data set"),
        (["--base", "default", "--out", str(tmp / "c1"), "--steps", "0"], "--steps must be at least 1"),
        (["--base", "default", "--out", str(tmp / "c1"), "--set", "train.out_dir=/tmp/x"], "trains into OUT/train"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(["engine", "cycle", *common, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert list_versions(store) == [] and not (tmp / "c1" / "train").exists()
    assert main(["serve", str(tmp / "images"), "--db", db, "--model-version", "nope"]) == 2
    assert "no model version 'nope'" in capsys.readouterr().err
    assert main(["serve", str(tmp / "images"), "--db", db, "--model-version", "x", "--checkpoint", "y"]) == 2
    assert "leave out --checkpoint" in capsys.readouterr().err


def test_old_database_gains_the_clicks_column(tmp_path):
    """A store written before clicks existed opens, keeps its rows (clicks NULL) and takes new ones."""
    db = tmp_path / "old.sqlite"
    rle = masks_to_coco_rle(np.ones((1, 4, 5), bool))[0]
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE,"
            " width INTEGER NOT NULL, height INTEGER NOT NULL, added_at DOUBLE PRECISION NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE masks (id INTEGER PRIMARY KEY AUTOINCREMENT, image_id INTEGER NOT NULL"
            " REFERENCES images(id), client_id TEXT UNIQUE, rle TEXT NOT NULL, area INTEGER NOT NULL,"
            " bbox TEXT NOT NULL, source TEXT NOT NULL, annotator TEXT NOT NULL, model_version TEXT NOT NULL,"
            " seconds DOUBLE PRECISION NOT NULL, score DOUBLE PRECISION, created_at DOUBLE PRECISION NOT NULL,"
            " deleted_at DOUBLE PRECISION, replaces INTEGER)"
        )
        conn.execute("INSERT INTO images (path, width, height, added_at) VALUES ('/x.png', 5, 4, 0)")
        conn.execute(
            "INSERT INTO masks (image_id, rle, area, bbox, source, annotator, model_version, seconds,"
            " created_at) VALUES (1, ?, 20, '[0, 0, 5, 4]', 'manual', 'old', 'v0', 2.0, 0)",
            (json.dumps(rle),),
        )
    store = open_store(db)
    (old,) = store.masks()
    assert old.clicks is None and old.model_version == "v0"
    new = store.save_mask(1, rle, source="manual", annotator="a", model_version="v1", seconds=1.0, clicks=5)
    assert next(m for m in store.masks() if m.id == new).clicks == 5
    store.close()
    again = open_store(db)  # the migration runs once; opening again changes nothing
    assert [m.clicks for m in again.masks()] == [None, 5]
    with sqlite3.connect(db) as conn:
        assert [r[1] for r in conn.execute("PRAGMA table_info(masks)")].count("clicks") == 1
    rows = {r["model_version"]: r for r in engine_statistics(again)}
    assert rows["v0"]["clicks_per_mask_mean"] is None and rows["v1"]["clicks_per_mask_mean"] == 5.0
