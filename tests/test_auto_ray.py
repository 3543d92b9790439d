"""``segany auto --ray``: the same outputs as without Ray, resuming, refusals, and dying workers.

One local Ray cluster (2 CPUs) serves the whole module; every run uses the embedded default
model on 3 small downscaled photos with a 4x4 grid, so the file stays fast (most of its time
is Ray starting workers: each imports torch and loads the model).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from segany import cli

ray = pytest.importorskip("ray")

from segany.automatic.ray_runner import segment_folder_ray  # noqa: E402  (needs ray, skipped above)

PHOTO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny" / "train2017"
KNOBS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--threads", "1"]
SETTINGS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
NAMES = ["img1", "img2", "sub/img0"]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _cli(*args: str) -> tuple[int, str, str]:
    """``segany auto ARGS`` in this process (so it can use the module's Ray cluster)."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["auto", *args])
    finally:
        torch.set_num_threads(threads)  # --threads 1 must not leak into other tests
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 small real photos, one in a sub-folder, plus a corrupt file."""
    found = sorted(PHOTO_DIR.glob("*.jpg"))[:3] if PHOTO_DIR.is_dir() else []
    if len(found) < 3:
        pytest.skip(f"needs 3 photos in {PHOTO_DIR}")
    src = tmp_path_factory.mktemp("photos")
    (src / "sub").mkdir()
    for i, p in enumerate(found):
        with Image.open(p) as im:
            im.convert("RGB").resize((160, 120)).save(src / ("sub" if i == 0 else "") / f"img{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return src


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> dict[str, bytes]:
    """What ``segany auto`` writes without Ray."""
    out = tmp_path_factory.mktemp("single")
    rc, _, err = _cli(str(photos), "--out", str(out), "--no-progress", *KNOBS)
    assert rc == 1 and "broken.jpg" in err
    snap = _snapshot(out)
    assert sorted(Path(k).with_suffix("").as_posix() for k in snap) == NAMES
    return snap


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 << 20,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_out(ray_cluster, photos, tmp_path_factory) -> tuple[Path, int, str, str]:
    """One ``segany auto --ray`` run with two workers, through the command line."""
    out = tmp_path_factory.mktemp("ray")
    rc, stdout, stderr = _cli(str(photos), "--out", str(out), "--no-progress", *KNOBS, "--ray", "--ray-workers", "2")
    return out, rc, stdout, stderr


def test_ray_options_need_ray(photos, tmp_path, monkeypatch):
    rc, _, err = _cli(str(photos), "--out", str(tmp_path / "x"), "--ray-workers", "2")
    assert rc == 2 and "--ray-workers needs --ray" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    rc, _, err = _cli(str(photos), "--out", str(tmp_path / "x"), "--ray")
    assert rc == 2 and err.count("\n") == 1 and "pip install 'segany[ray]'" in err
    assert not (tmp_path / "x").exists()  # refused before anything was made


def test_ray_outputs_equal_single_process(ray_out, reference):
    out, rc, stdout, stderr = ray_out
    assert rc == 1, stderr  # the corrupt file is reported, as without Ray
    assert "broken.jpg" in stderr and "processed 3 image(s), skipped 0" in stdout
    assert _snapshot(out) == reference  # same files, same bytes, no probe or partial file left


def test_worker_death_resubmits_each_image_once(ray_cluster, photos, reference, tmp_path):
    # each worker process exits abruptly right after writing its first image, before answering;
    # Ray restarts it and the driver resubmits what was in flight
    summary = segment_folder_ray(
        [str(photos)],
        tmp_path,
        generator_kwargs=SETTINGS,
        model_name="embedded default",
        progress=False,
        workers=2,
        threads=1,
        crash_after=1,
    )
    assert summary.done == NAMES  # every image reported exactly once
    assert summary.resubmitted >= 2  # both workers died with images in flight
    assert [Path(p).name for p, _ in summary.failed] == ["broken.jpg"]
    assert _snapshot(tmp_path) == reference


def test_rerun_skips_finished(ray_out, photos, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ray_out[0], out)
    (out / "img2.json").unlink()
    summary = segment_folder_ray(
        [str(photos)],
        out,
        generator_kwargs=SETTINGS,
        model_name="embedded default",
        progress=False,
        threads=1,
    )
    assert summary.done == ["img2"] and sorted(summary.skipped) == ["img1", "sub/img0"]
    assert _snapshot(out) == reference


def test_changed_setting_refused(ray_out, photos, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ray_out[0], out)
    other = ["--points-per-side", "4", "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0", "--threads", "1"]
    rc, _, err = _cli(str(photos), "--out", str(out), "--no-progress", *other, "--ray")
    assert rc == 2 and "pred_iou_thresh 0.0 -> 0.5" in err and "--overwrite" in err
    assert _snapshot(out) == reference  # nothing touched
