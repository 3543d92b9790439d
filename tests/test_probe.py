"""``segany probe``: mask embeddings (decoder token, pooled), similarity grid, map, linear probe.

Small synthetic photos (red squares, blue discs on grey noise) with SA-1B and COCO mask files
in tmp_path; the CLI runs the embedded default model once per module (about 1 s an image).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segany import SamPredictor
from segany.cli import main
from segany.data import sa1b
from segany.default_model import load_default_model
from segany.masks import masks_to_coco_rle
from segany.probe import store
from segany.probe.features import centre_point, colour_histogram, grid_weights, hsv_bin_index, pooled_embeddings
from segany.probe.linear import run_linear_probe
from segany.probe.similar import cosine_matrix, nearest
from segany.probe.tokens import decode_with_tokens, decoder_cache

H, W = 96, 128


def _square(y: int, x: int, s: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y : y + s, x : x + s] = True
    return m


def _disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _photo(seed: int, shapes: list[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    img = np.random.RandomState(seed).randint(100, 140, (H, W, 3)).astype(np.uint8)
    for m, colour in shapes:
        img[m] = colour
    return img


RED, BLUE = (220, 30, 30), (30, 40, 220)
SCENES = [  # per image: (mask, colour, class)
    [(_square(10, 10, 24), RED, "square"), (_disc(60, 90, 15), BLUE, "disc")],
    [(_square(50, 20, 30), RED, "square"), (_disc(30, 95, 18), BLUE, "disc")],
    [(_square(15, 70, 20), RED, "square"), (_disc(65, 35, 14), BLUE, "disc"), (_disc(20, 25, 10), BLUE, "disc")],
]


def _write_sa1b(folder, scenes, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for k, scene in enumerate(scenes, start=start):
        img = _photo(k, [(m, c) for m, c, _ in scene])
        Image.fromarray(img).save(folder / f"img_{k}.png")
        anns = [sa1b.annotation_record(100 * k + j, mask=m) for j, (m, _, _) in enumerate(scene)]
        sa1b.write_json(folder / f"img_{k}.json", sa1b.image_record(k, W, H, f"img_{k}.png"), anns)


def _write_coco(folder, scenes, start=0):
    """COCO instances file + images; classes as categories under two supercategories."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    cats = [
        {"id": 1, "name": "square", "supercategory": "angular"},
        {"id": 2, "name": "disc", "supercategory": "round"},
    ]
    images, anns = [], []
    for k, scene in enumerate(scenes, start=start):
        img = _photo(k, [(m, c) for m, c, _ in scene])
        Image.fromarray(img).save(folder / "images" / f"c_{k}.png")
        images.append({"id": k, "file_name": f"c_{k}.png", "width": W, "height": H})
        for j, (m, _, cls) in enumerate(scene):
            rle = masks_to_coco_rle(m[None])[0]
            anns.append(
                {
                    "id": 1000 * k + j,
                    "image_id": k,
                    "category_id": 1 if cls == "square" else 2,
                    "segmentation": rle,
                    "area": int(m.sum()),
                    "bbox": [0, 0, 1, 1],
                    "iscrowd": 0,
                }
            )
        crowd = masks_to_coco_rle(_square(0, 0, 5)[None])[0]
        anns.append(
            {
                "id": 1000 * k + 99,
                "image_id": k,
                "category_id": 1,
                "segmentation": crowd,
                "area": 25,
                "bbox": [0, 0, 5, 5],
                "iscrowd": 1,
            }
        )
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_file


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """An SA-1B folder of the three scenes, embedded by the CLI with the default model."""
    root = tmp_path_factory.mktemp("probe")
    _write_sa1b(root / "shapes", SCENES)
    assert (
        main(
            [
                "probe",
                "embed",
                str(root / "shapes"),
                "--masks",
                str(root / "shapes"),
                "--out",
                str(root / "emb"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return root


# ---------------------------------------------------------------------- decoder tokens


def test_decode_with_tokens_gives_the_predictors_masks():
    """The token comes from the very decoding that yields the predictor's mask."""
    small_model = load_default_model(warn=False)
    p = SamPredictor(small_model)
    img = _photo(0, [(m, c) for m, c, _ in SCENES[0]])
    p.set_image(img)
    boxes = torch.tensor([[10.0, 10.0, 33.0, 33.0], [75.0, 45.0, 105.0, 75.0]])
    coords = torch.tensor([[[21.0, 21.0]], [[90.0, 60.0]]])
    box_t = torch.as_tensor(p.transform.apply_boxes(boxes.numpy(), p.original_size))
    coords_t = torch.as_tensor(p.transform.apply_coords(coords.numpy(), p.original_size))
    labels = torch.ones(2, 1, dtype=torch.int)
    cache = decoder_cache(small_model, p.get_image_embedding())
    out = decode_with_tokens(small_model, cache, coords_t, labels, box_t, multimask_output=False)
    _, iou, low = p.predict_torch(coords_t, labels, box_t, multimask_output=False)
    assert out.mask_tokens.shape == (2, 1, small_model.mask_decoder.transformer_dim)
    torch.testing.assert_close(out.low_res, low, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.iou, iou, atol=1e-5, rtol=1e-5)
    multi = decode_with_tokens(small_model, cache, coords_t, labels, None, multimask_output=True)
    assert multi.mask_tokens.shape == (2, 3, small_model.mask_decoder.transformer_dim)
    assert not torch.allclose(multi.mask_tokens[:, 0], multi.mask_tokens[:, 1])  # distinct tokens


# ---------------------------------------------------------------------- pooling, point, histogram


def test_pooling_weights_cells_by_covered_area():
    """img_size 64, grid 4x4 (16-px cells), a 64x32 image: the grid's lower half is padding."""
    emb = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4).repeat(1, 2, 1, 1)  # cell value = its index
    full_cell = torch.zeros(1, 32, 64, dtype=torch.bool)
    full_cell[0, 0:16, 32:48] = True  # exactly cell (0, 2)
    w = grid_weights(full_cell, (32, 64), 64, (4, 4))
    assert w.shape == (1, 4, 4) and float(w[0, 0, 2]) == 1.0 and float(w.sum()) == 1.0
    assert pooled_embeddings(emb, w)[0].tolist() == [2.0, 2.0]
    two = torch.zeros(1, 32, 64, dtype=torch.bool)
    two[0, 0:16, 0:24] = True  # all of cell (0, 0), half of cell (0, 1)
    w = grid_weights(two, (32, 64), 64, (4, 4))
    assert torch.allclose(w[0, 0, :2], torch.tensor([1.0, 0.5]))
    assert pooled_embeddings(emb, w)[0, 0].item() == pytest.approx((0 * 1 + 1 * 0.5) / 1.5)
    # a mask in the original frame at half the input resolution covers the same cells
    small = torch.zeros(1, 16, 32, dtype=torch.bool)
    small[0, 0:8, 16:24] = True
    assert torch.allclose(grid_weights(small, (32, 64), 64, (4, 4)), grid_weights(full_cell, (32, 64), 64, (4, 4)))


def test_centre_point_lies_inside_a_ring():
    ring = _disc(48, 64, 30) & ~_disc(48, 64, 18)  # centroid (64, 48) is in the hole
    x, y = centre_point(ring)
    assert ring[int(y), int(x)] and not ring[48, 64]
    with pytest.raises(ValueError, match="empty"):
        centre_point(np.zeros((H, W), dtype=bool))


def test_colour_histogram_sums_to_one_and_tells_red_from_blue():
    img = _photo(0, [(m, c) for m, c, _ in SCENES[0]])
    bins = hsv_bin_index(img)
    red, blue = (colour_histogram(bins, m) for m, _, _ in SCENES[0])
    assert red.shape == (128,) and red.sum() == pytest.approx(1.0) and blue.sum() == pytest.approx(1.0)
    assert red.max() == 1.0 and blue.max() == 1.0 and np.argmax(red) != np.argmax(blue)


# ---------------------------------------------------------------------- embed, similar, map (CLI)


def test_embed_writes_one_row_per_mask_with_ids_and_provenance(embedded):
    emb = store.load(embedded / "emb")
    n = sum(len(s) for s in SCENES)
    assert len(emb) == n and emb.token.shape == (n, 256) and emb.pooled.shape == (n, 256)
    assert emb.token.dtype == np.float16 and emb.colour.shape == (n, 128)
    assert emb.mask_id.tolist()[:2] == ["img_0.png:0", "img_0.png:1"]
    assert set(emb.dataset.tolist()) == {"shapes"}
    assert emb.image_path[0].endswith("shapes/img_0.png") and emb.mask_file[0].endswith("shapes/img_0.json")
    assert len(set(emb.image_sha256.tolist())) == len(SCENES)
    assert emb.meta["prompt"] == "box+point" and emb.meta["model"] and emb.meta["trained"] is True
    assert np.isfinite(emb.token.astype(np.float32)).all() and (emb.decoded_iou >= 0).all()
    # the stored RLE is the annotation, the prompt box its tight box
    assert emb.rle(0)["size"] == [H, W] and emb.box[0].tolist() == [10, 10, 33, 33]
    assert not list((embedded / "emb").glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("feature", ["token", "pooled", "colour"])
def test_nearest_neighbour_of_every_mask_is_itself(embedded, feature):
    emb = store.load(embedded / "emb")
    sims = cosine_matrix(emb.feature(feature), emb.feature(feature))
    assert np.allclose(np.diag(sims), 1.0, atol=1e-4)
    if feature == "colour":  # flat-coloured shapes: same-colour masks tie with themselves
        assert (sims.max(axis=1) <= np.diag(sims) + 1e-6).all()
        return
    for i in range(len(emb)):
        idx, s = nearest(emb, i, feature, 3, include_self=True)
        assert idx[0] == i and s[0] == pytest.approx(1.0, abs=1e-4) and (np.diff(s) <= 1e-6).all()
    idx, _ = nearest(emb, 0, feature, 10, other_images=True)
    assert not np.isin(idx, np.flatnonzero(emb.image == emb.image[0])).any()


def test_similar_and_map_write_pngs(embedded, capsys):
    out = embedded / "similar.png"
    assert main(["probe", "similar", str(embedded / "emb"), "--query", "img_1:100", "--k", "4", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and "img_1.png:100" not in " ".join(printed[:4])  # 4 neighbours, not the query
    out = embedded / "map.png"
    assert main(["probe", "map", str(embedded / "emb"), str(embedded / "emb"), "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert main(["probe", "similar", str(embedded / "emb"), "--query", "img_1:7", "--out", str(out)]) == 2
    assert "has no mask 7" in capsys.readouterr().err


# ---------------------------------------------------------------------- COCO source and the linear probe


def test_coco_labels_and_linear_probe_beat_chance(tmp_path, capsys):
    """COCO supercategories become labels; colour separates red squares from blue discs."""
    train_ann = _write_coco(tmp_path / "train", SCENES)
    val_scenes = [
        [(_square(30, 30, 26), RED, "square"), (_disc(50, 100, 16), BLUE, "disc")],
        [(_square(8, 90, 22), RED, "square"), (_disc(70, 30, 12), BLUE, "disc")],
    ]
    val_ann = _write_coco(tmp_path / "val", val_scenes, start=10)
    for name, ann in (("train", train_ann), ("val", val_ann)):
        assert (
            main(
                [
                    "probe",
                    "embed",
                    str(tmp_path / name / "images"),
                    "--masks",
                    str(ann),
                    "--out",
                    str(tmp_path / f"emb_{name}"),
                    "--dataset",
                    name,
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    train = store.load(tmp_path / "emb_train")
    assert len(train) == 7  # crowd regions are not masks
    assert train.label.tolist()[:2] == ["angular", "round"] and train.category.tolist()[:2] == ["square", "disc"]
    assert train.annotation_id.tolist()[:2] == [0, 1]
    capsys.readouterr()
    out = tmp_path / "report"
    assert (
        main(
            [
                "probe",
                "linear",
                "--train",
                str(tmp_path / "emb_train"),
                "--val",
                str(tmp_path / "emb_val"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "linear.json").read_text())
    scores = {s["feature"]: s for s in report["scores"]}
    assert set(scores) == {"token", "pooled", "colour", "majority"}
    assert scores["colour"]["accuracy"] == 1.0 and scores["majority"]["accuracy"] == 0.5
    assert (out / "linear.png").is_file() and "colour" in capsys.readouterr().out
    # training on the val images is refused
    assert main(["probe", "linear", "--train", str(tmp_path / "emb_val"), "--val", str(tmp_path / "emb_val")]) == 2
    assert "both train and val" in capsys.readouterr().err


def _synthetic(n: int, seed: int, dataset: str) -> store.MaskEmbeddings:
    """Masks whose token is a class centre plus noise (pooled: pure noise)."""
    rng = np.random.RandomState(seed)
    labels = np.array(["a", "b", "c"])[np.arange(n) % 3]
    centres = np.random.RandomState(99).randn(3, 16) * 3
    token = centres[np.arange(n) % 3] + rng.randn(n, 16)
    s = lambda v: np.array(v, dtype=str)  # noqa: E731
    return store.MaskEmbeddings(
        token=token.astype(np.float16),
        pooled=rng.randn(n, 16).astype(np.float16),
        colour=rng.rand(n, 8).astype(np.float16),
        mask_id=s([f"{dataset}{i}.jpg:{i}" for i in range(n)]),
        image=s([f"{dataset}{i}.jpg" for i in range(n)]),
        annotation_id=np.arange(n),
        dataset=s([dataset] * n),
        label=labels,
        category=labels,
        image_path=s([""] * n),
        image_sha256=s([f"{dataset}{i // 2}" for i in range(n)]),
        mask_file=s([""] * n),
        rle_size=np.ones((n, 2), dtype=np.int64),
        rle_counts=s(["1"] * n),
        box=np.zeros((n, 4), np.float32),
        point=np.zeros((n, 2), np.float32),
        area=np.ones(n, np.int64),
        predicted_iou=np.ones(n, np.float32),
        decoded_iou=np.ones(n, np.float32),
        meta={"model": "m", "prompt": "p"},
    )


def test_linear_probe_on_a_separable_set(tmp_path):
    train, val = _synthetic(60, 0, "tr"), _synthetic(30, 1, "va")
    store.save(tmp_path / "tr", train)  # round trip through the file
    result = run_linear_probe(store.load(tmp_path / "tr"), val)
    scores = {s["feature"]: s["accuracy"] for s in result["scores"]}
    assert scores["token"] > 0.9 > 1 / 3 + 0.2 > scores["majority"]
    assert result["train_masks"] == 60 and result["val_masks"] == 30 and result["val_masks_of_unseen_classes"] == 0


# ---------------------------------------------------------------------- bad input


def test_bad_inputs_fail_with_one_clear_line(tmp_path, capsys):
    _write_sa1b(tmp_path / "shapes", SCENES[:2])
    images, masks, out = tmp_path / "shapes", tmp_path / "shapes", tmp_path / "out"

    def fails(args, message):
        assert main(["probe", "embed", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

    (tmp_path / "empty").mkdir()
    fails([str(tmp_path / "empty"), "--masks", str(masks)], "holds no image files")
    fails([str(images), "--masks", str(tmp_path / "empty")], "no SA-1B .json records")
    fails(
        [str(images / "img_0.png"), "--masks", str(masks)],
        "names image 'img_1.png', which is not among the images given",
    )
    Image.fromarray(np.zeros((H, W + 1, 3), np.uint8)).save(images / "img_1.png")  # masks no longer fit
    fails([str(images), "--masks", str(masks)], f"are {W}x{H} but the image")
    assert not out.exists()
    assert main(["probe", "similar", str(tmp_path / "empty"), "--query", "a:1", "--out", str(out / "x.png")]) == 2
    assert "no mask embeddings" in capsys.readouterr().err
