"""Face and licence-plate detectors for the privacy pass (SAM paper, appendix F).

SA-1B was released with faces and licence plates blurred. The detectors here are the ones
that install offline from the package registries with nothing fetched at run time: the
Haar cascades that ship inside OpenCV's wheel (``cv2.data.haarcascades``) -- frontal face,
profile face (run a second time on the mirrored image, since the cascade only knows
left-facing profiles) and the Russian licence-plate cascade. They are weak next to a
modern DNN detector (measured in ``docs/datasets.md``, "Privacy"), which is why a detector
is only a callable: :mod:`segany.data.blur` takes any ``Detector``, so a stronger one can be
plugged in without touching the blurring or the bookkeeping.

OpenCV 5 moved the cascades (the classifier and its XML files) out of the main wheel into
the contrib one; the project therefore depends on ``opencv-contrib-python-headless``, which
has both in 4.x and 5.x. Without them :class:`CascadeDetector` raises
:class:`DetectorUnavailable` naming the fix instead of failing on an attribute.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..masks import box_iou, box_xywh_to_xyxy

KINDS = ("face", "plate")


@dataclass(frozen=True)
class Detection:
    """One region to blur: ``box`` is XYWH in pixels of the image the detector was given."""

    box: tuple[float, float, float, float]
    kind: str
    detector: str
    score: float | None = None


Detector = Callable[[np.ndarray], list[Detection]]
"""HxWx3 uint8 RGB image -> the regions to blur in it."""


class DetectorUnavailable(RuntimeError):
    """The detector's model files or library are not installed."""


@dataclass(frozen=True)
class Cascade:
    """One OpenCV cascade run: the XML file's stem under ``cv2.data.haarcascades``, what it
    finds, whether it runs on the mirrored image, and its grouping threshold (how many raw
    windows must agree; the score of a detection is that count)."""

    name: str
    kind: str
    flip: bool = False
    min_neighbors: int = 5

    @property
    def label(self) -> str:
        return f"opencv-haar:{self.name}" + (":mirrored" if self.flip else "")


# Chosen on the hand-annotated photos of tests/data/face_boxes.json (benchmarks/bench_blur.py;
# docs/datasets.md, "Privacy", has the sweep): of the three frontal cascades the default one
# finds the most faces; 5 agreeing windows instead of OpenCV's usual 3 cost one face of 50
# and remove two thirds of the false positives (it fires on texture); the profile cascade, run
# both ways, adds the turned faces at the usual 3. Recall comes first -- a missed face is
# published, a false positive only blurs a patch -- but not at any number of false blurs.
DEFAULT_CASCADES: tuple[Cascade, ...] = (
    Cascade("haarcascade_frontalface_default", "face", min_neighbors=5),
    Cascade("haarcascade_profileface", "face", min_neighbors=3),
    Cascade("haarcascade_profileface", "face", flip=True, min_neighbors=3),
    Cascade("haarcascade_russian_plate_number", "plate", min_neighbors=5),
)


def cascade_path(name: str) -> Path:
    """Where OpenCV's wheel keeps cascade ``name`` (raises :class:`DetectorUnavailable`)."""
    import cv2

    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise DetectorUnavailable(
            f"OpenCV {cv2.__version__} has no cascade classifier (OpenCV 5 moved it to the contrib wheel): "
            "pip install opencv-contrib-python-headless"
        )
    path = Path(cv2.data.haarcascades) / f"{name}.xml"
    if not path.is_file():
        raise DetectorUnavailable(f"OpenCV's cascade file {path} is missing: pip install opencv-contrib-python-headless")
    return path


@functools.lru_cache(maxsize=16)
def _load_cascade(path: str) -> Any:
    import cv2

    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        raise DetectorUnavailable(f"OpenCV could not load the cascade {path}")
    return classifier


def xywh_iou(a: Iterable[Iterable[float]], b: Iterable[Iterable[float]]) -> np.ndarray:
    """NxM IoU of two lists of XYWH boxes (through :func:`segany.masks.box_iou`)."""
    ta = torch.as_tensor(np.asarray(list(a), dtype=np.float64).reshape(-1, 4))
    tb = torch.as_tensor(np.asarray(list(b), dtype=np.float64).reshape(-1, 4))
    if len(ta) == 0 or len(tb) == 0:
        return np.zeros((len(ta), len(tb)))
    return box_iou(box_xywh_to_xyxy(ta), box_xywh_to_xyxy(tb)).nan_to_num(0.0).numpy()


def _containment(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area (XYWH)."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    smaller = min(a[2] * a[3], b[2] * b[3])
    return float(max(w, 0) * max(h, 0) / smaller) if smaller > 0 else 0.0


def merge_overlapping(detections: list[Detection], iou: float = 0.3, containment: float = 0.6) -> list[Detection]:
    """Non-maximum suppression per kind: of detections that overlap (IoU >= ``iou``, or one
    lying mostly -- ``containment`` of its area -- inside the other), the one with the higher
    score is kept, the larger on a tie.

    Why the containment rule: the frontal and the profile cascade often fire on the same face
    with boxes of different sizes whose IoU is low; each would be blurred, and logged, twice.
    """
    kept: list[Detection] = []
    order = sorted(detections, key=lambda d: (d.kind, -(d.score or 0.0), -d.box[2] * d.box[3]))
    for det in order:
        box = np.asarray(det.box, dtype=float)
        clash = False
        for k in kept:
            if k.kind != det.kind:
                continue
            other = np.asarray(k.box, dtype=float)
            if xywh_iou([box], [other])[0, 0] >= iou or _containment(box, other) >= containment:
                clash = True
                break
        if not clash:
            kept.append(det)
    return sorted(kept, key=lambda d: (d.box[1], d.box[0], d.kind))


@dataclass
class CascadeDetector:
    """OpenCV's Haar cascades for faces and plates, as a :data:`Detector`.

    ``upscale``: the image is searched at this many times its size. The cascades' windows are
    20-24 px, so 2 would reach faces of about 12 px; measured on the ground truth it found no
    face more and six times the false positives, at three times the cost, hence 1.
    ``scale_factor`` is the image pyramid's step; ``min_size`` the smallest box reported, in
    pixels of the original image.
    """

    kinds: tuple[str, ...] = KINDS
    cascades: tuple[Cascade, ...] = DEFAULT_CASCADES
    scale_factor: float = 1.1
    upscale: float = 1.0
    min_size: int = 12
    nms_iou: float = 0.3
    _loaded: list[tuple[Cascade, Any]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {','.join(KINDS)}, got {','.join(self.kinds)}")
        if not self.scale_factor > 1.0:
            raise ValueError(f"scale_factor must be > 1, got {self.scale_factor}")
        if not 0.25 <= self.upscale <= 4.0:
            raise ValueError(f"upscale must be between 0.25 and 4, got {self.upscale}")
        self._loaded = [(c, _load_cascade(str(cascade_path(c.name)))) for c in self.cascades if c.kind in self.kinds]

    def settings(self) -> dict[str, Any]:
        """What decides the detections (written at the head of every blur log)."""
        return {
            "name": "opencv-haar-cascades",
            "cascades": [{"file": f"{c.name}.xml", "kind": c.kind, "mirrored": c.flip, "min_neighbors": c.min_neighbors}
                         for c, _ in self._loaded],
            "scale_factor": self.scale_factor,
            "upscale": self.upscale,
            "min_size": self.min_size,
            "nms_iou": self.nms_iou,
            "opencv": _opencv_version(),
        }

    def __call__(self, image: np.ndarray) -> list[Detection]:
        import cv2

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"the detector needs an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        scale = float(self.upscale)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if scale != 1.0:
            gray = cv2.resize(gray, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_LINEAR)
        gray = cv2.equalizeHist(gray)
        mirrored = None
        found: list[Detection] = []
        min_px = max(1, int(round(self.min_size * scale)))
        for cascade, classifier in self._loaded:
            src = gray
            if cascade.flip:
                mirrored = cv2.flip(gray, 1) if mirrored is None else mirrored
                src = mirrored
            rects, neighbours = classifier.detectMultiScale2(
                src, scaleFactor=self.scale_factor, minNeighbors=cascade.min_neighbors, minSize=(min_px, min_px)
            )
            for (x, y, bw, bh), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).reshape(-1)):
                if cascade.flip:
                    x = src.shape[1] - x - bw
                found.append(Detection(
                    box=(float(x / scale), float(y / scale), float(bw / scale), float(bh / scale)),
                    kind=cascade.kind, detector=cascade.label, score=float(n),
                ))
        return merge_overlapping(found, iou=self.nms_iou)


def _opencv_version() -> str:
    import cv2

    return str(cv2.__version__)
