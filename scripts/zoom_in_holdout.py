"""Choose the zoom-in settings (segany.zoom_in) on held-out *train* photos, never on eval splits.

    python scripts/zoom_in_holdout.py folder [--train runs/sa1b_train] [--out runs/holdout_photos]
    python scripts/zoom_in_holdout.py boxes 2.5:0.33 1.8:0.5 ...   (expansion:min_crop_fraction)
    python scripts/zoom_in_holdout.py click2 [--weights W]        (the second click, whole image vs crop)
    python scripts/zoom_in_holdout.py plot runs/zoom_tune/base runs/zoom_tune/zoom ... --out docs/zoom_in_holdout.png

``folder`` writes an SA-1B folder of the photo sources' held-out records (the training config's
``holdout_every``, split by :class:`segany.data.sa1b.RecordIndex`, the one place that decides
it): objects of at least 400 px, at most 6 an image (seeded), images symlinked. Click settings
are then compared with ``segany eval points --datasets sa1b:runs/holdout_photos [--zoom-in ...]``
(scripts/zoom_in_holdout.sh runs the ones in docs/evaluation.md). ``boxes`` scores box prompts
on that folder on the whole image and on crops; ``click2`` the second click (at the first
mask's deepest error) on the whole image, on zoom-in's default crop and on the crop of the
ground-truth box; ``plot`` draws mIoU against clicks for finished ``eval points`` folders.
``--weights`` (boxes, click2): another checkpoint than the shipped default.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

PHOTO_SOURCES = ("bsds", "camvid", "ccp", "coco", "coco128_seg")
HOLDOUT_EVERY = 25  # src/segany/configs/segany_cnn_cpu.yaml: data.holdout_every
MIN_AREA = 400
MAX_OBJECTS = 6


def build_folder(train: Path, out: Path) -> None:
    from segany.data.sa1b import RecordIndex

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = objects = 0
    for src in PHOTO_SOURCES:
        for record in RecordIndex([train / src], holdout_every=HOLDOUT_EVERY, split="val").paths:
            info = json.loads(record.read_text())
            img = record.parent / info["image"].get("file_name", record.stem + ".jpg")
            name = f"{src}_{record.stem}"
            anns = [a for a in info["annotations"] if a.get("area", 0) >= MIN_AREA]
            if len(anns) > MAX_OBJECTS:
                anns = [anns[i] for i in sorted(rng.choice(len(anns), MAX_OBJECTS, replace=False))]
            if not anns:
                continue
            info["image"]["file_name"] = name + img.suffix
            info["annotations"] = anns
            (out / f"{name}.json").write_text(json.dumps(info))
            link = out / (name + img.suffix)
            if not link.exists():
                os.symlink(img.resolve(), link)
            images += 1
            objects += len(anns)
    print(f"{images} images, {objects} objects in {out}")


def _predictor(weights: Path | None):
    import torch

    from segany import SamPredictor
    from segany.default_model import load_default_model
    from segany.modeling.build import build_model

    torch.set_num_threads(1)
    return SamPredictor(load_default_model(warn=False) if weights is None else build_model("auto", str(weights)).eval())


def score_click2(folder: Path, weights: Path | None) -> None:
    import torch

    from segany.eval import clicks
    from segany.eval.datasets import sa1b_folder
    from segany.zoom_in import ZoomIn, ZoomInConfig, object_box

    predictor = _predictor(weights)
    rows: dict[str, list[float]] = {"whole image": [], "zoom-in crop": [], "ground-truth box crop": []}
    for im in sa1b_folder(folder, "holdout"):
        image, objs = im.image(), im.objects()
        predictor.set_image(image)
        for gt in objs.masks:
            c1 = clicks.first_click(gt, "center", np.random.default_rng(0), None)
            masks, scores, low = predictor.predict(np.array([c1], float), np.array([1]))
            k = int(np.argmax(scores))
            nxt = clicks.next_click(masks[k], gt, None)
            if nxt is None:
                continue
            pts, labs = np.array([c1, nxt[:2]], float), np.array([1, nxt[2]])
            whole = predictor.predict(pts, labs, mask_input=low[k : k + 1], multimask_output=False)[0][0]
            rows["whole image"].append(clicks.iou(whole, gt, None))
            zoom = ZoomIn(predictor, ZoomInConfig(skip_clicks=0))
            rows["zoom-in crop"].append(clicks.iou(zoom.click(image, zoom.track(torch.as_tensor(low[k : k + 1])),
                                                              pts, labs)[0], gt, None))
            fixed = ZoomIn(predictor, ZoomInConfig(skip_clicks=0, recompute_iou=0.0))
            track = fixed.track(torch.as_tensor(low[k : k + 1]))
            track.box = object_box(gt, pts, labs, fixed.config)
            x0, y0, x1, y1 = track.box
            track.state = predictor.embed(np.ascontiguousarray(image[y0:y1, x0:x1]))
            rows["ground-truth box crop"].append(clicks.iou(fixed.click(image, track, pts, labs)[0], gt, None))
    for name, v in rows.items():
        print(f"click 2, {name}: mIoU {100 * np.mean(v):.1f} ({len(v)} objects)")


def score_boxes(folder: Path, settings: list[str], weights: Path | None = None) -> None:
    from segany.eval import clicks
    from segany.eval.datasets import sa1b_folder, size_class
    from segany.eval.prompts import tight_box
    from segany.zoom_in import ZoomIn, ZoomInConfig

    configs = {"whole image": None}
    for s in settings:
        e, f = (float(v) for v in s.split(":"))
        configs[f"{e:g}x, >= {f:g} of the image"] = ZoomInConfig(expansion=e, min_crop=64, min_crop_fraction=f)
    predictor = _predictor(weights)
    ious: dict[str, list[float]] = {k: [] for k in configs}
    sizes: list[str] = []
    for im in sa1b_folder(folder, "holdout"):
        image, objs = im.image(), im.objects()
        predictor.set_image(image)
        for gt in objs.masks:
            box = tight_box(gt)
            sizes.append(size_class(float(gt.sum())))
            for name, cfg in configs.items():
                if cfg is None:
                    m = predictor.predict(box=box, multimask_output=False)[0][0]
                else:
                    m = ZoomIn(predictor, cfg).box(image, box)[0]
                ious[name].append(clicks.iou(m, gt, None))
    size = np.array(sizes)
    print("| box prompt | mIoU | small | medium | large |\n|---|---|---|---|---|")
    for name, v in ious.items():
        a = np.array(v)
        parts = [f"{100 * a[size == c].mean():.1f}" for c in ("small", "medium", "large")]
        print(f"| {name} | {100 * a.mean():.1f} | " + " | ".join(parts) + " |")
    print(f"({len(size)} objects: {', '.join(f'{(size == c).sum()} {c}' for c in ('small', 'medium', 'large'))})")


def plot(folders: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for folder in folders:
        rep = json.loads((folder / "report.json").read_text())
        (name, r), = rep["datasets"].items()
        zoom = rep["settings"].get("zoom_in")
        label = "whole image" if zoom is None else (
            f"{zoom['expansion']:g}x" + (f", >= {zoom['min_crop_fraction']:g} image" if zoom.get("min_crop_fraction")
                                         else f", >= {zoom['min_crop']} px")
            + f", from click {zoom['skip_clicks'] + 1}")
        ns = sorted(int(n) for n in r["top"]["mIoU"])
        ax.plot(ns, [100 * r["top"]["mIoU"][str(n)] for n in ns], marker="o", label=f"{label} (NoC@90 {r['top']['NoC@90']:.2f})")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("zoom-in on held-out train photos (41 images, 229 objects)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("folder")
    f.add_argument("--train", type=Path, default=Path("runs/sa1b_train"))
    f.add_argument("--out", type=Path, default=Path("runs/holdout_photos"))
    b = sub.add_parser("boxes")
    b.add_argument("settings", nargs="*", default=["2.5:0.33"])
    b.add_argument("--folder", type=Path, default=Path("runs/holdout_photos"))
    b.add_argument("--weights", type=Path, default=None)
    c = sub.add_parser("click2")
    c.add_argument("--folder", type=Path, default=Path("runs/holdout_photos"))
    c.add_argument("--weights", type=Path, default=None)
    p = sub.add_parser("plot")
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("docs/zoom_in_holdout.png"))
    args = ap.parse_args()
    if args.cmd == "folder":
        build_folder(args.train, args.out)
    elif args.cmd == "boxes":
        score_boxes(args.folder, args.settings, args.weights)
    elif args.cmd == "click2":
        score_click2(args.folder, args.weights)
    else:
        plot(args.folders, args.out)


if __name__ == "__main__":
    main()
