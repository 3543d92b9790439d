"""`segany predict` end to end on the embedded default model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segany.cli import main


@pytest.fixture()
def image_file(tmp_path):
    rng = np.random.RandomState(0)
    img = rng.randint(0, 255, (48, 64, 3), dtype=np.uint8)
    img[10:30, 20:40] = 250
    path = tmp_path / "in.png"
    Image.fromarray(img).save(path)
    return path


def test_predict_writes_mask_overlay_and_json(image_file, tmp_path, capsys):
    out = tmp_path / "res" / "mask.png"
    code = main(["predict", str(image_file), "--point", "30,20", "--point", "5,5,0", "--out", str(out)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["scores"]) == 3 and result["scores"] == sorted(result["scores"], reverse=True)
    mask = np.asarray(Image.open(out))
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
    assert int((mask > 0).sum()) == result["areas"][0]
    overlay = np.asarray(Image.open(result["overlay"]))
    assert overlay.shape == (48, 64, 3)
    assert not list(tmp_path.rglob("*.tmp"))


def test_predict_all_masks_with_box(image_file, tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["predict", str(image_file), "--box", "10,5,50,40", "--all", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p.rsplit("_", 1)[-1] for p in result["masks"]] == ["0.png", "1.png", "2.png"]


def test_predict_box_zoom_in_matches_the_python_api(image_file, tmp_path, capsys):
    """--zoom-in with a box: one mask, exactly segany.zoom_in.ZoomIn.box's, and the crop it used."""
    from segany import SamPredictor
    from segany.default_model import load_default_model
    from segany.zoom_in import BOX_ZOOM, ZoomIn

    out = tmp_path / "z.png"
    assert main(["predict", str(image_file), "--box", "20,10,40,30", "--zoom-in", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["scores"]) == 1 and len(result["zoom_crop_xyxy"]) == 4
    image = np.asarray(Image.open(image_file).convert("RGB"))
    want, score, track = ZoomIn(SamPredictor(load_default_model(warn=False)), BOX_ZOOM).box(
        image, np.array([20.0, 10.0, 40.0, 30.0]))
    assert np.array_equal(np.asarray(Image.open(out)) > 0, want)
    assert result["scores"][0] == pytest.approx(score, abs=1e-6)
    assert result["zoom_crop_xyxy"] == list(track.box)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--point", "10,10", "--zoom-in"], "--zoom-in works with a --box alone"),
        (["--point", "10,10", "--box", "5,5,20,20", "--zoom-in"], "--zoom-in works with a --box alone"),
        (["--point", "1000,10"], "outside"),
        (["--box", "50,5,10,40"], "x1 < x0"),
        ([], "give at least one"),
    ],
)
def test_predict_bad_prompts_exit_2(image_file, tmp_path, capsys, args, message):
    code = main(["predict", str(image_file), "--out", str(tmp_path / "m.png"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_predict_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert main(["predict", str(bad), "--point", "1,1"]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_predict_wrong_checkpoint(image_file, tmp_path, capsys):
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    ckpt.write_bytes(b"garbage")
    code = main(["predict", str(image_file), "--point", "1,1", "--checkpoint", str(ckpt), "--model-type", "vit_b"])
    assert code == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_bad_point_syntax(image_file):
    with pytest.raises(SystemExit):
        main(["predict", str(image_file), "--point", "a,b"])
