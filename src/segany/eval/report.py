"""Report writing: ``report.json`` (machine-readable), ``report.md`` (for people) and PNG figures.

Every file is written to a temporary name in the output folder and renamed into place
(:mod:`segany.atomic_files`), so a crashed or interrupted run never leaves a half-written
report that looks complete.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_path, write_bytes_atomic, write_text_atomic


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    """JSON with numpy values converted and NaN written as null."""
    write_text_atomic(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:  # the temp keeps the suffix: savefig picks the format by it
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def save_image(path: Path, rgb: np.ndarray) -> None:
    """Save an HxWx3 uint8 RGB (or HxW) image as PNG, atomically."""
    import cv2

    arr = np.asarray(rgb)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError(f"cannot encode {path} as PNG")
    write_bytes_atomic(path, buf.tobytes())


def fmt(x: Any, digits: int = 3) -> str:
    """Table cell: numbers to ``digits`` decimals, missing as '-'."""
    if x is None:
        return "-"
    if isinstance(x, float | np.floating):
        return "-" if math.isnan(float(x)) else f"{float(x):.{digits}f}"
    return str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def model_description(model: Any, checkpoint: str | None) -> dict[str, Any]:
    """What was evaluated, for the report header (and a loud flag for an untrained model)."""
    trained = bool(getattr(model, "is_trained", True))
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "encoder_type", "vit") == "cnn":
        kind = f"CNN encoder (widths {'/'.join(map(str, cfg.cnn_widths))}), {cfg.img_size} px input"
    elif cfg is not None and hasattr(cfg, "encoder_depth"):
        kind = f"ViT {cfg.encoder_embed_dim}-d x {cfg.encoder_depth}, {cfg.img_size} px input"
    else:
        kind = type(model.image_encoder).__name__
    return {
        "checkpoint": checkpoint or "default (segany_default)",
        "model_type": kind,
        "trained": trained,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def model_lines(model_info: dict[str, Any]) -> list[str]:
    """The header's model bullet, plus a loud warning for an untrained model (reports and summary)."""
    lines = [f"- model: {model_info['checkpoint']} ({model_info['model_type']}, "
             f"{model_info['parameters'] / 1e6:.1f} M parameters)"]
    if not model_info.get("trained", True):
        lines.append("- **warning: randomly initialised model (no trained weights); the numbers are meaningless**")
    return lines


def header_markdown(title: str, model_info: dict[str, Any] | None, command: str, seconds: float) -> str:
    """Common report header: what was run, on which model (None: no model, e.g. edge baselines), how long it took."""
    models = model_lines(model_info) if model_info is not None else []
    lines = [f"# {title}", "", f"- command: `{command}`", *models, f"- wall time: {seconds:.0f} s"]
    return "\n".join(lines) + "\n\n"


def resume_line(compute_seconds: float, resumed: int, skipped: int | None = None) -> str:
    """Report line for runs that may span sessions: the total compute time, and how much was resumed.

    ``skipped`` (a ``--partial`` report): the images not finished yet. The report then says
    loudly that its numbers cover only the finished images and will change.
    """
    text = f"Compute time of every image, summed over the runs that made them: {compute_seconds:.0f} s"
    if skipped == 0:  # a --partial report that found every image finished: the run's final numbers
        text = (f"All {resumed} images finished (report written read-only with `--partial`; a rerun without it "
                "gives the same numbers).\n\n" + text)
    elif skipped is not None:
        text = (f"**Partial report: {resumed} of {resumed + skipped} images finished.** The numbers cover the "
                "finished images only and will change when the run completes (rerun without `--partial`).\n\n"
                + text)
    elif resumed:
        text += f" ({resumed} images loaded from an earlier, interrupted run into this folder)"
    return text + ".\n\n"


def partial_field(finished: int, skipped: int) -> dict[str, int]:
    """The ``partial`` field of a partial report's report.json (complete runs write null)."""
    return {"images_finished": int(finished), "images_total": int(finished + skipped)}


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (30, 144, 255), alpha: float = 0.5) -> np.ndarray:
    """``image`` with ``mask`` tinted in ``color`` and outlined (HxWx3 uint8), for figures.

    :func:`segany.visualize.overlay_masks` of one mask; figures with several masks call it
    once per mask, each over the last.
    """
    from ..visualize import overlay_masks

    return overlay_masks(image, [mask], alpha=alpha, colors=[color])
