"""Hard edges of the command line: every bad input ends in exit status 2 with one line on
stderr (no traceback), and nothing is lost or left half-written.

Covers outputs that would destroy an input or each other, unwritable outputs, non-finite
scores and options, oversized prompts and settings, resuming ``auto`` with other settings,
checkpoints that are truncated, pickled, lying in their metadata or of the wrong type,
images that are corrupt, empty, truncated, huge or of unusual kinds, and the ``--device`` /
``--dtype`` plumbing. Models are tiny random ones saved to a temp folder, so the module runs
in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segany.cli import main
from segany.image_io import ImageError, load_image
from segany.modeling.registry import build_model, save_checkpoint

# ---------------------------------------------------------------------------- helpers


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code or 0)


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run the CLI, expect exit 2 and a single error line containing every needle."""
    code = _run(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def strict_json(text: str) -> object:
    """json.loads that refuses NaN/Infinity (Python's accepts them; JSON does not)."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _tiny_cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory, seed: int) -> Path:
    """A tiny random segany_cnn checkpoint (fast on a CPU); ``seed`` picks its weights."""
    torch.manual_seed(seed)
    model = build_model("segany_cnn", cnn_widths=(8, 8, 16, 16, 32), cnn_depths=(1, 1, 1, 1), cnn_global_blocks=1)
    path = tmp_path_factory.mktemp(f"ckpt{seed}") / f"cnn{seed}.safetensors"
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_cnn_checkpoint(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_cnn_checkpoint(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("vit_b", encoder_depth=2, encoder_global_attn_indexes=(1,))  # a windowed and a global block
    path = tmp_path_factory.mktemp("vit") / "vit.safetensors"
    save_checkpoint(model, path)
    return path


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    rng = np.random.RandomState(0)
    img = rng.randint(0, 255, (48, 64, 3), dtype=np.uint8)
    img[10:30, 20:40] = 250
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(img).save(path)
    return path


def _predict(image: Path, out: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["predict", str(image), "--point", "30,20", "--out", str(out), "--checkpoint", str(ckpt), "--device", "cpu", *extra]


# ---------------------------------------------------------------------------- 1. outputs


def test_out_naming_the_input_is_refused(capsys, image, ckpt):
    before = image.read_bytes()
    fails(capsys, _predict(image, image, ckpt), "is the input", "refusing to overwrite")
    assert image.read_bytes() == before
    assert files_in(image.parent) == ["photo.png"]


def test_out_naming_the_input_through_another_spelling(capsys, image, ckpt, monkeypatch):
    monkeypatch.chdir(image.parent)
    before = image.read_bytes()
    fails(capsys, _predict(Path("photo.png"), Path("./sub/../photo.png"), ckpt), "is the input")
    link = image.parent / "link.png"
    link.symlink_to(image)
    fails(capsys, _predict(Path("photo.png"), link, ckpt), "is the input")
    assert image.read_bytes() == before


def test_overlay_naming_the_input_or_the_mask_is_refused(capsys, image, ckpt, tmp_path):
    out = tmp_path / "res" / "m.png"
    fails(capsys, _predict(image, out, ckpt, "--overlay", str(out)), "same file as --out")
    fails(capsys, _predict(image, out, ckpt, "--overlay", str(image)), "is the input")
    fails(capsys, _predict(image, out, ckpt, "--all", "--overlay", str(tmp_path / "res" / "m_1.png")), "same file")
    assert files_in(tmp_path / "res") == []


@pytest.mark.parametrize("which", ["--out", "--overlay"])
def test_output_is_an_existing_directory(capsys, image, ckpt, tmp_path, which):
    folder = tmp_path / "adir"
    folder.mkdir()
    out = folder if which == "--out" else tmp_path / "m.png"
    extra = ["--overlay", str(folder)] if which == "--overlay" else []
    fails(capsys, _predict(image, out, ckpt, *extra), "is an existing directory")
    assert files_in(folder) == [] and not (tmp_path / "m.png").exists()


def test_output_parent_is_a_file(capsys, image, ckpt, tmp_path):
    (tmp_path / "plain").write_text("x")
    fails(capsys, _predict(image, tmp_path / "plain" / "m.png", ckpt), "is not a directory")


def test_output_folder_not_writable(capsys, image, ckpt, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    fails(capsys, _predict(image, locked / "m.png", ckpt), "cannot write to", str(locked))
    fails(capsys, _predict(image, locked / "deeper" / "m.png", ckpt), "cannot write to")
    fails(capsys, ["auto", str(image), "--out", str(locked / "auto"), "--checkpoint", str(ckpt)], "cannot write to")
    assert files_in(locked) == []


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes to read-only folders")
def test_output_folder_read_only_for_real(capsys, image, ckpt, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(capsys, _predict(image, locked / "m.png", ckpt), "cannot write to")
        fails(capsys, ["auto", str(image), "--out", str(locked), "--checkpoint", str(ckpt)], "cannot write to")
    finally:
        locked.chmod(0o755)


def test_failed_overlay_leaves_no_mask(capsys, image, ckpt, tmp_path, monkeypatch):
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if "_overlay" in str(fp):
            raise OSError(28, "No space left on device", str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "res" / "m.png"
    fails(capsys, _predict(image, out, ckpt, "--all"), "No space left on device", "nothing was written")
    assert files_in(tmp_path / "res") == []


def test_good_run_writes_mask_and_overlay_only(capsys, image, ckpt, tmp_path):
    out = tmp_path / "res" / "m.png"
    assert _run(_predict(image, out, ckpt)) == 0
    result = strict_json(capsys.readouterr().out)
    assert files_in(tmp_path / "res") == ["m.png", "m_overlay.png"]
    assert result["masks"] == [str(out)]


# ---------------------------------------------------------------------------- 2. numbers


def test_nan_scores_give_valid_json_and_a_warning(capsys, image, ckpt, tmp_path, monkeypatch):
    from segany.predictor import SamPredictor

    real = SamPredictor.predict

    def predict(self, *args, **kwargs):
        masks, scores, low = real(self, *args, **kwargs)
        scores = np.array(scores, dtype=np.float64)
        scores[1] = np.nan
        scores[2] = np.inf
        return masks, scores, low

    monkeypatch.setattr(SamPredictor, "predict", predict)
    assert _run(_predict(image, tmp_path / "m.png", ckpt)) == 0
    captured = capsys.readouterr()
    result = strict_json(captured.out)
    assert result["scores"][0] is not None and result["scores"][1:] == [None, None]
    assert "warning" in captured.err and "not finite" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize(
    "prompt, needle",
    [
        (["--point", "nan,5"], "not a finite"),
        (["--point", "5,inf"], "not a finite"),
        (["--box", "0,0,inf,5"], "non-finite"),
        (["--point", "5,5,7"], "label must be"),
        (["--point", "1000,10"], "outside the 64x48 image"),
        (["--box", "10,5,50,400"], "extends outside"),
        (["--box", "50,5,10,40"], "x1 < x0"),
        (["--point", "a,b"], "argument --point"),
        (["--box", "1,2,3"], "argument --box"),
    ],
)
def test_bad_prompts(capsys, image, tmp_path, prompt, needle):
    fails(capsys, ["predict", str(image), "--out", str(tmp_path / "m.png"), *prompt], needle)
    assert not (tmp_path / "m.png").exists()


def test_too_many_points_refused_before_any_work(capsys, image, tmp_path, monkeypatch):
    import segany.commands.predict as predict

    monkeypatch.setattr(predict, "load_model_from_args", lambda args: pytest.fail("model loaded"))
    points = [arg for i in range(1025) for arg in ("--point", f"{i % 60},{i % 40}")]
    fails(capsys, ["predict", str(image), "--out", str(tmp_path / "m.png"), *points], "1025 --point", "at most 1024")


AUTO_BAD = [
    (["--pred-iou-thresh", "nan"], "--pred-iou-thresh must be a finite"),
    (["--pred-iou-thresh", "inf"], "--pred-iou-thresh must be a finite"),
    (["--pred-iou-thresh", "1.5"], "--pred-iou-thresh must be <= 1"),
    (["--stability-score-thresh", "nan"], "--stability-score-thresh"),
    (["--stability-score-thresh", "-0.1"], "--stability-score-thresh must be >= 0"),
    (["--stability-score-offset", "0"], "--stability-score-offset must be > 0"),
    (["--stability-score-offset", "-inf"], "--stability-score-offset"),
    (["--box-nms-thresh", "1.5"], "--box-nms-thresh"),
    (["--crop-nms-thresh", "nan"], "--crop-nms-thresh"),
    (["--crop-overlap-ratio", "1"], "--crop-overlap-ratio must be >= 0 and < 1"),
    (["--crop-n-layers", "99"], "--crop-n-layers must be >= 0 and <= 4"),
    (["--crop-n-layers", "-1"], "--crop-n-layers"),
    (["--points-per-side", "0"], "--points-per-side"),
    (["--points-per-side", "100000"], "--points-per-side must be >= 1 and <= 128"),
    (["--points-per-batch", "0"], "--points-per-batch"),
    (["--points-per-batch", "1000000"], "--points-per-batch"),
    (["--crop-n-points-downscale-factor", "0"], "--crop-n-points-downscale-factor"),
    (["--min-mask-region-area", "-1"], "--min-mask-region-area"),
    (["--max-mask-fraction", "0"], "--max-mask-fraction"),
    (["--max-mask-fraction", "nan"], "--max-mask-fraction"),
    (["--max-masks", "0"], "--max-masks"),
    (["--threads", "0"], "--threads"),
    (["--points-per-side", "x"], "argument --points-per-side"),
]


@pytest.mark.parametrize("option, needle", AUTO_BAD, ids=[" ".join(o) for o, _ in AUTO_BAD])
def test_auto_numeric_options(capsys, image, tmp_path, monkeypatch, option, needle):
    import segany.commands.auto as auto

    monkeypatch.setattr(auto, "load_model_from_args", lambda args: pytest.fail("model loaded"))
    out = tmp_path / "out"
    fails(capsys, ["auto", str(image), "--out", str(out), "--no-progress", *option], needle)
    assert files_in(out) == []


def test_generator_refuses_nan_thresholds():
    from segany.automatic import SamAutomaticMaskGenerator

    model = build_model("segany_cnn", cnn_widths=(8, 8, 16, 16, 32), cnn_depths=(1, 1, 1, 1), cnn_global_blocks=1)
    with pytest.raises(ValueError, match="pred_iou_thresh must be a finite"):
        SamAutomaticMaskGenerator(model, pred_iou_thresh=float("nan"))
    SamAutomaticMaskGenerator(model, pred_iou_thresh=np.float32(0.5))  # numpy scalars are numbers


# ---------------------------------------------------------------------------- auto outputs and resume


AUTO_FAST = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--no-progress",
             "--device", "cpu"]


def test_auto_out_is_a_file_or_outputs_hit_inputs(capsys, image, ckpt, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("keep me")
    fails(capsys, ["auto", str(image), "--out", str(plain), "--checkpoint", str(ckpt), *AUTO_FAST], "not a directory")
    assert plain.read_text() == "keep me"
    before = image.read_bytes()
    fails(capsys, ["auto", str(image.parent), "--out", str(image.parent), "--format", "png", "--checkpoint", str(ckpt),
                   *AUTO_FAST], "is the input")
    assert image.read_bytes() == before and files_in(image.parent) == ["photo.png"]
    out = tmp_path / "out"
    (out / "photo.json").mkdir(parents=True)
    fails(capsys, ["auto", str(image), "--out", str(out), "--checkpoint", str(ckpt), *AUTO_FAST], "existing directory")


def test_auto_resume_is_keyed_on_settings_and_model(capsys, image, ckpt, other_ckpt, tmp_path):
    out = tmp_path / "out"
    base = ["auto", str(image), "--out", str(out), "--overlay", *AUTO_FAST]
    assert _run([*base, "--checkpoint", str(ckpt)]) == 0
    assert files_in(out) == ["photo.json", "photo.overlay.png"]
    first = (out / "photo.json").read_bytes()
    record = json.loads(first)["segany"]
    assert record["settings"]["pred_iou_thresh"] == 0.0 and len(record["model"]["sha256"]) == 64
    capsys.readouterr()

    # same settings: skipped
    assert _run([*base, "--checkpoint", str(ckpt)]) == 0
    assert "skipped 1" in capsys.readouterr().out

    # other thresholds: refused, nothing touched
    fails(capsys, [*base, "--checkpoint", str(ckpt), "--pred-iou-thresh", "0.5"], "pred_iou_thresh", "--overwrite")
    fails(capsys, [*base, "--checkpoint", str(ckpt), "--format", "coco"], "format")
    # other weights: refused
    fails(capsys, [*base, "--checkpoint", str(other_ckpt)], "model weights")
    # another dtype changes the weights' bytes: refused too
    fails(capsys, [*base, "--checkpoint", str(ckpt), "--dtype", "bfloat16"], "model weights")
    assert (out / "photo.json").read_bytes() == first

    # --overwrite recomputes
    assert _run([*base, "--checkpoint", str(ckpt), "--pred-iou-thresh", "0.5", "--overwrite"]) == 0
    again = json.loads((out / "photo.json").read_bytes())["segany"]
    assert again["settings"]["pred_iou_thresh"] == 0.5 and again["key"] != record["key"]
    with Image.open(out / "photo.overlay.png") as im:
        assert json.loads(im.info["segany"])["key"] == again["key"]
    assert files_in(out) == ["photo.json", "photo.overlay.png"]


def test_auto_refuses_outputs_without_a_record(capsys, image, ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.json").write_text('{"image": {}, "annotations": []}')
    fails(capsys, ["auto", str(image), "--out", str(out), "--checkpoint", str(ckpt), *AUTO_FAST], "no segany settings record")
    assert (out / "photo.json").read_text() == '{"image": {}, "annotations": []}'


def test_auto_rerun_inside_the_input_folder_ignores_its_overlays(capsys, image, ckpt):
    folder = image.parent
    argv = ["auto", str(folder), "--out", str(folder), "--overlay", "--checkpoint", str(ckpt), *AUTO_FAST]
    assert _run(argv) == 0
    assert _run(argv) == 0
    assert "skipped 1" in capsys.readouterr().out
    assert files_in(folder) == ["photo.json", "photo.overlay.png", "photo.png"]


# ---------------------------------------------------------------------------- 4. checkpoints


def _safetensors(path: Path, tensors: dict[str, torch.Tensor], config: object) -> Path:
    from safetensors.torch import save_file

    text = config if isinstance(config, str) else json.dumps(config)
    save_file(tensors, str(path), metadata={"segany_config": text, "format": "segany-sam-v1"})
    return path


def _with_config(src: Path, dst: Path, **changes: object) -> Path:
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        config = json.loads(f.metadata()["segany_config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config.update(changes)
    return _safetensors(dst, tensors, config)


def test_tiny_file_asking_for_a_huge_model(capsys, image, tmp_path):
    bomb = _safetensors(
        tmp_path / "bomb.safetensors",
        {"image_encoder.patch_embed.proj.weight": torch.zeros(4, 3, 8, 8, dtype=torch.float16)},
        {"encoder_embed_dim": 8192, "encoder_depth": 64, "encoder_num_heads": 64, "encoder_global_attn_indexes": [63],
         "img_size": 512, "patch_size": 8, "window_size": 16},
    )
    assert bomb.stat().st_size < 2000
    fails(capsys, _predict(image, tmp_path / "m.png", bomb), "encoder_embed_dim=8192", "does not match")
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"encoder_depth": 64}, "encoder_depth=64"),
        ({"encoder_embed_dim": 8192}, "encoder_embed_dim=8192"),
        ({"encoder_num_heads": 7}, "encoder_num_heads=7"),
        ({"window_size": 15}, "window_size"),
        ({"mlp_ratio": 64.0}, "mlp_ratio"),
        ({"text_embed_dim": 10**9}, "text_embed_dim"),
        ({"encoder_type": "cnn", "cnn_widths": [4096] * 5}, "encoder_type"),
        ({"img_size": 65536, "patch_size": 1024}, "patch_size"),
    ],
)
def test_vit_metadata_must_match_tensors(capsys, image, vit_ckpt, tmp_path, changes, needle):
    lying = _with_config(vit_ckpt, tmp_path / "lying.safetensors", **changes)
    fails(capsys, _predict(image, tmp_path / "m.png", lying), needle)


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"cnn_widths": [4096, 4096, 4096, 4096, 4096]}, "cnn_widths"),
        ({"cnn_depths": [1, 1, 1, 64]}, "cnn_depths"),
        ({"cnn_global_blocks": 64}, "cnn_global_blocks"),
        ({"encoder_type": "vit", "encoder_embed_dim": 8192, "encoder_depth": 64}, "encoder_type"),
    ],
)
def test_cnn_metadata_must_match_tensors(capsys, image, ckpt, tmp_path, changes, needle):
    lying = _with_config(ckpt, tmp_path / "lying.safetensors", **changes)
    fails(capsys, _predict(image, tmp_path / "m.png", lying), needle)


@pytest.mark.parametrize(
    "config, needle",
    [
        ("[1, 2, 3]", "must be a JSON object"),
        ('"vit_b"', "must be a JSON object"),
        ("{not json", "not valid JSON"),
        ({"encoder_depth": "12"}, "'encoder_depth' must be an integer"),
        ({"encoder_global_attn_indexes": 3}, "'encoder_global_attn_indexes' must be a list"),
        ({"mlp_ratio": "4"}, "'mlp_ratio'"),
        ({"text_embed_dim": [768]}, "'text_embed_dim'"),
        ({"encoder_type": 1}, "'encoder_type' must be a string"),
        ({"extra": []}, "'extra' must be an object"),
        ({"encoder_embed_dim": True}, "'encoder_embed_dim'"),
        ({"encoder_depth": -3}, "'encoder_depth'"),
    ],
)
def test_metadata_of_the_wrong_type(capsys, image, vit_ckpt, tmp_path, config, needle):
    from safetensors import safe_open

    with safe_open(str(vit_ckpt), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    bad = _safetensors(tmp_path / "bad.safetensors", tensors, config)
    fails(capsys, _predict(image, tmp_path / "m.png", bad), "segany_config", needle)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.999])
def test_truncated_checkpoints(capsys, image, ckpt, tmp_path, fraction):
    data = ckpt.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: int(len(data) * fraction)])
    fails(capsys, _predict(image, tmp_path / "m.png", cut), "checkpoint")
    pth = tmp_path / "cut.pth"
    torch.save(build_model("segany_cnn", cnn_widths=(8, 8, 16, 16, 32), cnn_depths=(1, 1, 1, 1),
                           cnn_global_blocks=1).state_dict(), pth)
    whole = pth.read_bytes()
    pth.write_bytes(whole[: int(len(whole) * fraction)])
    fails(capsys, _predict(image, tmp_path / "m.png", pth), "checkpoint")
    assert not (tmp_path / "m.png").exists()


class _Evil:
    """Unpickling this would create a file (or run a shell command)."""

    def __init__(self, marker: Path, shell: bool) -> None:
        self.marker, self.shell = marker, shell

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        if self.shell:
            return (os.system, (f"touch {self.marker}",))
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("shell", [False, True], ids=["open", "os.system"])
@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_pickled_code_never_runs(capsys, image, tmp_path, shell, container):
    marker = tmp_path / "PWNED"
    payload = {"model": {"image_encoder.x": torch.zeros(1)}, "evil": _Evil(marker, shell)}
    path = tmp_path / "evil.pth"
    if container == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    fails(capsys, _predict(image, tmp_path / "m.png", path), "cannot read checkpoint", "pickled code")
    assert not marker.exists()
    fails(capsys, [*_predict(image, tmp_path / "m.png", path), "--model-type", "segany_tiny"], "cannot read checkpoint")
    assert not marker.exists()


def test_wrong_or_empty_checkpoint(capsys, image, vit_ckpt, tmp_path):
    fails(capsys, [*_predict(image, tmp_path / "m.png", vit_ckpt), "--model-type", "segany_tiny"], "does not fit segany_tiny")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    fails(capsys, _predict(image, tmp_path / "m.png", empty), "checkpoint")
    fails(capsys, _predict(image, tmp_path / "m.png", tmp_path / "missing.pth"), "checkpoint not found")
    fails(capsys, _predict(image, tmp_path / "m.png", tmp_path), "checkpoint")


# ---------------------------------------------------------------------------- 5. images


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A few-byte PNG whose header claims width x height (the pixels are missing)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _bad_images(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 50, 3), dtype=np.uint8)).save(good)
    jpeg = tmp_path / "good.jpg"
    Image.open(good).save(jpeg, quality=90)
    out = {}
    (tmp_path / "empty.png").write_bytes(b"")
    out["empty"] = tmp_path / "empty.png"
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg at all")
    out["corrupt"] = tmp_path / "corrupt.jpg"
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:200])
    out["truncated png"] = tmp_path / "trunc.png"
    (tmp_path / "trunc.jpg").write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    out["truncated jpeg"] = tmp_path / "trunc.jpg"
    out["huge 13000^2"] = _png_header_only(tmp_path / "huge.png", 13000, 13000)
    out["bomb 20000^2"] = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    (tmp_path / "text.png").write_text("hello")
    out["text"] = tmp_path / "text.png"
    (tmp_path / "folder.png").mkdir()
    out["directory"] = tmp_path / "folder.png"
    return out


@pytest.mark.parametrize(
    "kind",
    ["empty", "corrupt", "truncated png", "truncated jpeg", "huge 13000^2", "bomb 20000^2", "text", "directory"],
)
def test_bad_images(capsys, tmp_path, ckpt, kind, monkeypatch):
    import segany.commands.predict as predict

    monkeypatch.setattr(predict, "load_model_from_args", lambda args: pytest.fail("model loaded"))
    path = _bad_images(tmp_path)[kind]
    out = tmp_path / "res" / "m.png"
    line = fails(capsys, ["predict", str(path), "--point", "1,1", "--out", str(out), "--checkpoint", str(ckpt)])
    assert str(path.name) in line
    assert files_in(tmp_path / "res") == []
    if kind.startswith("huge"):
        assert "exceeds the limit" in line


def test_pixel_cap_from_the_environment(capsys, image, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGANY_MAX_PIXELS", "1000")
    fails(capsys, ["predict", str(image), "--point", "1,1", "--out", str(tmp_path / "m.png")], "exceeds the limit of 1,000")
    monkeypatch.setenv("SEGANY_MAX_PIXELS", "lots")
    fails(capsys, ["predict", str(image), "--point", "1,1", "--out", str(tmp_path / "m.png")], "SEGANY_MAX_PIXELS")
    monkeypatch.setenv("SEGANY_MAX_PIXELS", "100000000")
    assert load_image(image).shape == (48, 64, 3)


def _convertible(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 255, (20, 30, 3), dtype=np.uint8)
    out = {}
    Image.fromarray(np.full((20, 30), 65535, np.uint16)).save(tmp_path / "g16.png")
    out["16-bit gray"] = tmp_path / "g16.png"
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    out["cmyk"] = tmp_path / "cmyk.jpg"
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "pa.png", transparency=0)
    out["palette+alpha"] = tmp_path / "pa.png"
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)])).save(tmp_path / "rgba.png")
    out["rgba"] = tmp_path / "rgba.png"
    Image.fromarray(rgb[..., 0]).convert("LA").save(tmp_path / "la.png")
    out["gray+alpha"] = tmp_path / "la.png"
    frames = [Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    out["animated gif"] = tmp_path / "anim.gif"
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    out["apng"] = tmp_path / "anim.png"
    Image.fromarray(np.full((20, 30), 0.5, np.float32)).save(tmp_path / "f.tif")
    out["float tiff"] = tmp_path / "f.tif"
    Image.fromarray(rgb[..., 0] > 100).save(tmp_path / "bw.png")
    out["1-bit"] = tmp_path / "bw.png"
    return out


@pytest.mark.parametrize(
    "kind",
    ["16-bit gray", "cmyk", "palette+alpha", "rgba", "gray+alpha", "animated gif", "apng", "float tiff", "1-bit"],
)
def test_convertible_images(tmp_path, kind):
    path = _convertible(tmp_path)[kind]
    with pytest.warns(UserWarning) if kind in ("16-bit gray", "animated gif", "apng") else contextlib.nullcontext():
        arr = load_image(path)
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8
    if kind == "16-bit gray":
        assert arr.max() == 255
    if kind == "animated gif":
        assert arr.max() == 0  # the first frame (black), not a later one


def test_animated_image_end_to_end_says_first_frame(capsys, tmp_path, ckpt):
    path = _convertible(tmp_path)["animated gif"]
    assert _run(_predict(path, tmp_path / "res" / "m.png", ckpt)) == 0
    captured = capsys.readouterr()
    strict_json(captured.out)
    assert "first frame" in captured.err and "Traceback" not in captured.err


def test_load_image_direct_errors(tmp_path):
    bad = _bad_images(tmp_path)
    for kind, path in bad.items():
        with pytest.raises(ImageError, match=path.name):
            load_image(path)
        assert kind


# ---------------------------------------------------------------------------- 6. device / dtype


def test_invalid_device(capsys, image, tmp_path, ckpt):
    fails(capsys, [*_predict(image, tmp_path / "m.png", ckpt)[:-2], "--device", "gpu0"], "--device 'gpu0' is not a device")
    fails(capsys, [*_predict(image, tmp_path / "m.png", ckpt)[:-2], "--device", "tpu"], "--device")
    if not torch.cuda.is_available():
        fails(capsys, [*_predict(image, tmp_path / "m.png", ckpt)[:-2], "--device", "cuda"], "CUDA is not available")
    assert not (tmp_path / "m.png").exists()


def test_invalid_dtype(capsys, image, tmp_path):
    fails(capsys, ["predict", str(image), "--point", "1,1", "--dtype", "float8"], "argument --dtype")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dtype_reaches_the_model(ckpt, dtype):
    from segany.commands.common import load_model_from_args

    args = argparse.Namespace(checkpoint=str(ckpt), model_type=None, device="cpu", dtype=dtype)
    model = load_model_from_args(args)
    want = getattr(torch, dtype)
    assert {p.dtype for p in model.parameters()} == {want}
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_every_model_command_has_device_and_dtype():
    from segany.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for argv in (["predict", "x", "--point", "1,1"], ["auto", "x", "--out", "o"], ["export", "onnx", "--out", "o"],
                 ["export", "safetensors", "--out", "o"]):
        args = parser.parse_args([*argv, "--device", "cpu", "--dtype", "bfloat16"])
        assert args.device == "cpu" and args.dtype == "bfloat16"
        checked += 1
    assert checked == 4 and "predict" in sub.choices


def test_export_onnx_says_what_it_does_with_device_and_dtype(capsys, tmp_path, ckpt):
    fails(capsys, ["export", "onnx", "--out", str(tmp_path / "d.onnx"), "--checkpoint", str(ckpt), "--dtype", "bfloat16"],
          "float32 graph")
    fails(capsys, ["export", "onnx", "--out", str(tmp_path / "d.onnx"), "--encoder-out", str(tmp_path / "d.onnx"),
                   "--checkpoint", str(ckpt), "--device", "cpu"], "same file")
    fails(capsys, ["export", "onnx", "--out", str(tmp_path / "d.onnx"), "--checkpoint", str(ckpt), "--device", "nope"],
          "--device")
    fails(capsys, ["export", "safetensors", "--out", str(ckpt), "--checkpoint", str(ckpt), "--device", "cpu"],
          "is the input")
    assert files_in(tmp_path) == []


def test_onnx_export_leaves_the_callers_model_alone(tmp_path):
    from segany.export.onnx import cpu_float32

    model = build_model("segany_cnn", cnn_widths=(8, 8, 16, 16, 32), cnn_depths=(1, 1, 1, 1), cnn_global_blocks=1)
    assert cpu_float32(model) is model
    half = model.to(torch.bfloat16)
    with pytest.warns(UserWarning, match="float32 CPU copy"):
        copy = cpu_float32(half)
    assert copy is not half and next(copy.parameters()).dtype == torch.float32
    assert next(half.parameters()).dtype == torch.bfloat16


# ---------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["predict"], "required"),
        (["auto", "x"], "--out"),
        (["nonsense"], "invalid choice"),
        (["predict", "x", "--bogus"], "unrecognized arguments"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, needle):
    fails(capsys, argv, needle)
