"""No eval image may reach a training folder (the leakage fix of the default-model issue).

The split rules live in one place, ``segany.data.convert.shared_train_sources``; these
tests check its output against every eval split of ``../shared/data`` by path, by file
content and, for GrabCut (whose images hide in BSDS500 train/val), by file stem and pixels.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany.data.convert import (
    bsds_not_for_training,
    cvppp_is_train,
    dsb2018_is_train,
    iter_bsds,
    shared_train_images,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "grabcut").is_dir(), reason="needs ../shared/data")


def _eval_images() -> dict[str, list[Path]]:
    dsb = [p for d in sorted(DATA.glob("dsb2018/*/")) if not dsb2018_is_train(d.name) for p in d.glob("images/*.png")]
    cvppp = [p for p in DATA.glob("cvppp_a1/plant*_rgb.png") if not cvppp_is_train(p.name[: -len("_rgb.png")])]
    return {
        "grabcut": sorted(p for p in (DATA / "grabcut/images").iterdir() if p.is_file()),
        "bsds_test": sorted((DATA / "bsds500/images/test").glob("*.jpg")),
        "coco_val": sorted((DATA / "coco_tiny/val2017").glob("*.jpg")),
        "dsb_eval": dsb,
        "cvppp_eval": cvppp,
    }


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def train_images() -> dict[str, list[Path]]:
    return shared_train_images(DATA)


def test_every_train_source_is_listed(train_images):
    assert set(train_images) >= {"coco", "bsds", "dsb", "cvppp", "ccp", "camvid", "coco128_seg"}
    assert all(train_images.values()), {k: len(v) for k, v in train_images.items()}


def test_no_eval_image_by_path_or_content(train_images):
    evals = _eval_images()
    assert all(evals.values()), {k: len(v) for k, v in evals.items()}
    train = [p.resolve() for paths in train_images.values() for p in paths]
    eval_paths = {p.resolve(): name for name, paths in evals.items() for p in paths}
    leaked = [(str(p), eval_paths[p]) for p in train if p in eval_paths]
    assert not leaked, leaked[:5]
    eval_hashes = {_sha(p): (name, p.name) for name, paths in evals.items() for p in paths}
    dup = [(str(p), eval_hashes[h]) for p in train if (h := _sha(p)) in eval_hashes]
    assert not dup, dup[:5]


def test_grabcut_images_hidden_in_bsds_are_excluded(train_images):
    listed = bsds_not_for_training(DATA)
    assert len(listed) >= 19  # the shipped list (byte copies under other names are dropped by hash)
    grabcut_stems = {p.stem for p in (DATA / "grabcut/images").iterdir()}
    bsds_train = train_images["bsds"]
    assert not [p for p in bsds_train if p.stem in grabcut_stems]
    assert not [p for p in bsds_train if f"{p.parent.name}/{p.stem}" in listed]
    # pixels too: a GrabCut photo under another name would still be caught
    thumbs = {}
    for p in (DATA / "grabcut/images").iterdir():
        with Image.open(p) as im:
            thumbs[(im.size, np.asarray(im.convert("L").resize((16, 16)), np.float32).tobytes())] = p.name
    for p in bsds_train:
        with Image.open(p) as im:
            key = np.asarray(im.convert("L").resize((16, 16)), np.float32)
            for (size, thumb), name in thumbs.items():
                if size == im.size:
                    diff = np.abs(np.frombuffer(thumb, np.float32).reshape(16, 16) - key).mean()
                    assert diff > 2.0, f"{p} looks like GrabCut's {name}"


def test_bsds_converter_honours_the_exclusion():
    """The converter itself (masks decoded) yields exactly the listed images."""
    listed = bsds_not_for_training(DATA)
    full = [item[0] for item in iter_bsds(DATA / "bsds500", ("val",), listed)]
    cheap = [item[0] for item in iter_bsds(DATA / "bsds500", ("val",), listed, images_only=True)]
    assert full == cheap
    assert not [p for p in full if f"val/{p.stem}" in listed]
    assert len(full) == 100 - sum(1 for name in listed if re.match(r"val/", name))
