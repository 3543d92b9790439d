"""Writers for automatic masks: SA-1B JSON, COCO JSON, instance-label PNG and overlay PNG,
and the output-path checks every command shares.

Every file is written to a hidden temporary name in the destination folder and renamed into
place, so a file with its final name is always complete (a killed run leaves at most a
``.*.partial`` file, which the next run removes). Output paths are checked before any work
(:func:`check_outputs`): a path that names an input, another output, an existing directory
or an unwritable folder is refused with a one-line ``ValueError`` instead of an ``OSError``
after minutes of computing -- or, worse, a photo silently replaced by its mask.
"""

from __future__ import annotations

import json
import os
import secrets
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..masks import rle_to_mask

PARTIAL_SUFFIX = ".partial"
FORMATS = ("sa1b", "coco", "png")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path`` (same folder, so the rename is atomic)."""
    write_all_or_nothing([(path, write)])


def _temp_name(path: Path) -> Path:
    # pid + random part: two processes writing the same output never share a temp file, and
    # no user file named "<out>.tmp" is clobbered
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}{PARTIAL_SUFFIX}")


def write_all_or_nothing(items: Sequence[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write several files so that either all of them get their final names or none does.

    Why: a mask whose overlay failed to render (or a JSON whose overlay did) is a half
    result that a later run or a user would take for a whole one. Every ``write(tmp)``
    runs first, into temporary names in the destination folders; only when all succeeded
    are they renamed into place. On any failure the temporary files are removed (and files
    already renamed by this call are removed again) and the error is raised.
    """
    temps: list[tuple[Path, Path]] = []
    renamed: list[Path] = []
    try:
        for path, write in items:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_name(path)
            temps.append((tmp, path))
            try:
                write(tmp)
            except OSError as exc:  # name the output, not its temporary file
                raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        for tmp, path in temps:
            os.replace(tmp, path)
            renamed.append(path)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        if len(renamed) < len(temps):
            for path in renamed:
                path.unlink(missing_ok=True)
        raise


def _same_key(path: Path) -> str:
    """What two paths share when they name one file: the resolved, case-normalised path."""
    return os.path.normcase(os.path.realpath(path))


def check_output_file(path: Path, what: str = "output") -> None:
    """Refuse an output path that cannot be written, before any work is done.

    Checks that it is not an existing directory or special file (replacing ``/dev/null``
    as root would be a disaster), that the nearest existing ancestor of its folder is a
    directory, and that it is writable (folders that do not exist yet are created later).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is an existing directory; give a file path")
    if path.exists() and not path.is_file():
        raise ValueError(f"{what} {path} exists and is not a regular file")
    check_output_dir(path.parent, what=f"folder of {what} {path}")


def check_output_dir(folder: Path, what: str = "output folder") -> None:
    """Refuse a folder that is not a directory or cannot be created or written to."""
    folder = Path(folder) if str(folder) else Path(".")
    probe = folder
    while not probe.exists():
        if probe.is_symlink():
            raise ValueError(f"{what}: {probe} is a dangling symbolic link")
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise ValueError(f"{what}: {probe} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: cannot write to {probe} (permission denied or read-only)")


def check_outputs(outputs: Iterable[tuple[str, Path]], inputs: Iterable[Path] = ()) -> None:
    """Refuse outputs that name an input or each other, or cannot be written.

    ``outputs`` are ``(what, path)`` pairs (``what`` names the option in the message).
    Paths are compared resolved (symbolic links, ``..``), so ``--out ./photo.jpg`` for the
    input ``photo.jpg`` is caught as well.
    """
    ins = {_same_key(Path(p)): Path(p) for p in inputs}
    seen: dict[str, str] = {}
    for what, path in outputs:
        path = Path(path)
        key = _same_key(path)
        if key in ins:
            raise ValueError(f"{what} {path} is the input {ins[key]}: refusing to overwrite an input")
        if key in seen:
            raise ValueError(f"{what} {path} is the same file as {seen[key]}; give different paths")
        seen[key] = f"{what} {path}"
        check_output_file(path, what)


def image_id_for(name: str) -> int:
    """A stable image id from the image's relative path (the same on every run)."""
    return zlib.crc32(name.encode("utf-8"))


def sa1b_json(records: list[dict[str, Any]], file_name: str, width: int, height: int) -> dict[str, Any]:
    """Records of a ``coco_rle`` generator -> the SA-1B per-image JSON layout."""
    annotations = []
    for i, r in enumerate(records):
        annotations.append(
            {
                "id": i + 1,
                "segmentation": r["segmentation"],
                "bbox": [float(v) for v in r["bbox"]],
                "area": int(r["area"]),
                "predicted_iou": float(r["predicted_iou"]),
                "point_coords": [[float(x), float(y)] for x, y in r["point_coords"]],
                "crop_box": [float(v) for v in r["crop_box"]],
                "stability_score": float(r["stability_score"]),
            }
        )
    image = {"image_id": image_id_for(file_name), "width": int(width), "height": int(height), "file_name": file_name}
    return {"image": image, "annotations": annotations}


def coco_json(records: list[dict[str, Any]], file_name: str, width: int, height: int) -> dict[str, Any]:
    """Records -> a COCO instances file for one image (class-agnostic category 1, ``score``
    = predicted IoU, so it loads with pycocotools' COCO / loadRes)."""
    image_id = image_id_for(file_name)
    anns = []
    for i, r in enumerate(records):
        anns.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": r["segmentation"],
                "area": int(r["area"]),
                "bbox": [float(v) for v in r["bbox"]],
                "iscrowd": 0,
                "score": float(r["predicted_iou"]),
                "stability_score": float(r["stability_score"]),
                "point_coords": r["point_coords"],
            }
        )
    return {
        "images": [{"id": image_id, "width": int(width), "height": int(height), "file_name": file_name}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, json_writer(payload))


def json_writer(payload: dict[str, Any]) -> Callable[[Path], None]:
    """A writer of compact JSON (key order kept), for :func:`write_all_or_nothing`."""

    def _write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, separators=(",", ":"))

    return _write


def label_map(records: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """HxW uint16 instance labels (0 = no mask, i+1 = record i); larger masks are painted
    first so smaller masks lying on them stay visible."""
    if len(records) >= 2**16:
        raise ValueError(f"{len(records)} masks do not fit a 16-bit label map")
    labels = np.zeros((height, width), dtype=np.uint16)
    for i in sorted(range(len(records)), key=lambda k: -records[k]["area"]):
        labels[rle_to_mask(records[i]["segmentation"])] = i + 1
    return labels


def write_png(path: Path, array: np.ndarray, text: dict[str, str] | None = None) -> None:
    atomic_write(path, png_writer(array, text))


def png_writer(array: np.ndarray, text: dict[str, str] | None = None) -> Callable[[Path], None]:
    """A writer of ``array`` as PNG with optional ``tEXt`` chunks (written before the pixel
    data, so reading them back does not decode the image)."""

    def _write(tmp: Path) -> None:
        info = None
        if text:
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            for key, value in text.items():
                info.add_text(key, value)
        Image.fromarray(array).save(tmp, format="PNG", pnginfo=info)

    return _write


def overlay(image: np.ndarray, records: list[dict[str, Any]], alpha: float = 0.5, max_side: int = 2048) -> np.ndarray:
    """The image with every mask filled in its own colour (largest first) and outlined;
    images larger than ``max_side`` are shown downscaled (masks with them)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = image if scale == 1.0 else np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    out = base.astype(np.float32)
    rng = np.random.RandomState(0)
    colours = rng.randint(40, 256, size=(max(1, len(records)), 3)).astype(np.float32)
    for i in sorted(range(len(records)), key=lambda k: -records[k]["area"]):
        m = rle_to_mask(records[i]["segmentation"])
        if scale != 1.0:
            m = np.asarray(Image.fromarray(m).resize(size, Image.NEAREST))
        out[m] = (1 - alpha) * out[m] + alpha * colours[i]
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = colours[i] * 0.6
    return np.clip(out, 0, 255).astype(np.uint8)
