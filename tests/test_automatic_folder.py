"""``segany auto`` over folders: outputs, bad files, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany.automatic import SamAutomaticMaskGenerator
from segany.automatic.batch import generate_batch
from segany.automatic.folder import collect_images, segment_folder
from segany.image_io import ImageError
from segany.masks import rle_to_mask

PHOTO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny" / "train2017"
KNOBS = ["--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--threads", "1"]


def _make_folder(root: Path, n: int = 4) -> Path:
    """n small real photos (downscaled copies, written to the test's temp dir), one in a
    sub-folder, plus a corrupt file."""
    photos = sorted(PHOTO_DIR.glob("*.jpg"))[:n] if PHOTO_DIR.is_dir() else []
    if len(photos) < n:
        pytest.skip(f"needs {n} photos in {PHOTO_DIR}")
    src = root / "images"
    (src / "sub").mkdir(parents=True)
    for i, p in enumerate(photos):
        with Image.open(p) as im:
            small = im.convert("RGB").resize((96, 64))
        small.save(src / ("sub" if i == 0 else "") / f"img{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return src


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "segany.cli", "auto", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_folder_run_kill_and_resume(tmp_path):
    src = _make_folder(tmp_path)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"

    # 1. an uninterrupted run: every good image gets a JSON, the corrupt file is reported
    done = subprocess.run(_cli(str(src), "--out", str(clean), "--no-progress", *KNOBS), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 1, done.stderr
    assert "broken.jpg" in done.stderr and "failed images" in done.stderr
    expected = _snapshot(clean)
    assert sorted(expected) == ["img1.json", "img2.json", "img3.json", "sub/img0.json"]
    for name, payload in expected.items():
        record = json.loads(payload)
        assert record["image"]["width"] == 96 and record["image"]["height"] == 64
        assert record["image"]["file_name"] == Path(name).stem + ".png"
        for ann in record["annotations"]:
            mask = rle_to_mask(ann["segmentation"])
            assert mask.shape == (64, 96) and int(mask.sum()) == ann["area"]
            assert set(ann) >= {"id", "bbox", "area", "predicted_iou", "stability_score", "point_coords", "crop_box"}

    # 2. a run killed after its first finished image...
    proc = subprocess.Popen(_cli(str(src), "--out", str(resumed), "--no-progress", *KNOBS), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and not any(resumed.rglob("*.json")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _snapshot(resumed)
    assert 0 < len([k for k in finished if not Path(k).name.startswith(".")]) < 4, "kill should land mid-folder"
    for name, payload in finished.items():
        if not Path(name).name.startswith("."):
            assert payload == expected[name], f"{name} was left half-written"

    # 3. ...and rerun: finished images skipped, the rest done, identical to the clean run
    again = subprocess.run(_cli(str(src), "--out", str(resumed), "--no-progress", *KNOBS), capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 1
    assert "skipped" in again.stdout and "skipped 0" not in again.stdout
    assert _snapshot(resumed) == expected  # same bytes, and no partial files left behind


def test_segment_folder_formats_and_bad_inputs(tmp_path, small_model):
    src = _make_folder(tmp_path, n=1)
    gen = SamAutomaticMaskGenerator(small_model, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="coco_rle")
    summary = segment_folder(gen, [str(src), str(tmp_path / "nothing*.jpg")], tmp_path / "png", fmt="png", save_overlay=True, progress=False)
    assert summary.done == ["sub/img0"]
    failed = dict(summary.failed)
    assert any("broken.jpg" in k for k in failed) and str(tmp_path / "nothing*.jpg") in failed
    labels = np.asarray(Image.open(tmp_path / "png" / "sub" / "img0.png"))
    assert labels.shape == (64, 96) and labels.dtype == np.uint16
    assert labels.max() >= 1
    assert (tmp_path / "png" / "sub" / "img0.overlay.png").is_file()
    coco = segment_folder(gen, [str(src / "sub" / "img0.png")], tmp_path / "coco", fmt="coco", progress=False)
    assert coco.done == ["img0"] and not coco.failed
    payload = json.loads((tmp_path / "coco" / "img0.json").read_text())
    assert payload["images"][0]["width"] == 96 and payload["categories"][0]["id"] == 1
    with pytest.raises(ValueError, match="coco_rle"):
        segment_folder(SamAutomaticMaskGenerator(small_model, points_per_side=2), [str(src)], tmp_path / "x", progress=False)


def test_collect_images_names_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        Image.new("RGB", (4, 4)).save(tmp_path / d / "same.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    jobs, missing = collect_images([str(tmp_path / "a" / "same.png"), str(tmp_path / "b" / "*.png"), str(tmp_path / "empty*")])
    assert sorted(j.name for j in jobs) == ["same", "same_1"]
    assert [m for m, _ in missing] == [str(tmp_path / "empty*")]


def test_batched_api(small_model, tmp_path):
    gen = SamAutomaticMaskGenerator(small_model, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    img = np.random.RandomState(0).randint(0, 255, (40, 50, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    out = generate_batch(gen, [img, path, bad], errors="return")
    assert len(out) == 3 and isinstance(out[2], ImageError)
    assert [r["area"] for r in out[0]] == [r["area"] for r in out[1]]
    with pytest.raises(ImageError):
        generate_batch(gen, [bad])
