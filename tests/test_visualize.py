"""visualize.py: the one overlay, and the automatic and report overlays drawn with it."""

from __future__ import annotations

import numpy as np

from segany.eval import report
from segany.masks import masks_to_coco_rle
from segany.visualize import PALETTE, color_for, overlay_masks, overlay_records


def _image(h: int = 20, w: int = 24) -> np.ndarray:
    return np.random.RandomState(0).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_overlay_blends_inside_outlines_the_edge_and_leaves_the_rest():
    img = _image()
    m = _square(20, 24, 5, 12, 6, 15)
    out = overlay_masks(img, [m], alpha=0.5)
    inner = _square(20, 24, 6, 11, 7, 14)
    edge = m & ~inner
    np.testing.assert_array_equal(out[~m], img[~m])
    np.testing.assert_array_equal(out[edge], np.broadcast_to(PALETTE[0].astype(np.uint8), (int(edge.sum()), 3)))
    expect = (img[inner].astype(np.float32) * 0.5 + PALETTE[0] * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[inner], expect)


def test_overlay_edge_rules():
    img = np.zeros((9, 9, 3), np.uint8)
    ring = _square(9, 9, 2, 7, 2, 7) & ~_square(9, 9, 4, 5, 4, 5)  # a 5x5 square with a 1-px hole
    out = overlay_masks(img, [ring], alpha=0.0, colors=[(200, 100, 50)])
    outlined = (out != 0).any(-1)
    assert outlined[4, 3] and outlined[3, 4]  # the hole's border is outlined
    border = _square(9, 9, 0, 9, 0, 3)  # touching the image's left, top and bottom edges
    out = overlay_masks(img, [border], alpha=0.0, colors=[(200, 100, 50)])
    outlined = (out != 0).any(-1)
    assert outlined[:, 2].all() and not outlined[1:-1, :2].any()  # the image border is no outline


def test_overlay_colours_shade_and_generators():
    img = _image()
    a, b = _square(20, 24, 2, 9, 2, 9), _square(20, 24, 6, 15, 6, 18)
    colours = np.array([[10, 200, 30], [250, 40, 120]], np.float32)
    eager = overlay_masks(img, [a, b], alpha=0.4, colors=colours, outline_shade=0.6)
    lazy = overlay_masks(img, (m for m in (a, b)), alpha=0.4, colors=colours, outline_shade=0.6)
    np.testing.assert_array_equal(eager, lazy)
    assert tuple(eager[6, 6]) == tuple((colours[1] * 0.6).astype(np.uint8))  # b's outline drawn over a
    # empty masks draw nothing and keep the colour numbering of the others
    np.testing.assert_array_equal(overlay_masks(img, [np.zeros_like(a), b]), overlay_masks(img, [b], colors=[color_for(1)]))
    np.testing.assert_array_equal(overlay_masks(img, [np.zeros_like(a)]), img)


def test_overlay_records_is_overlay_masks_largest_first():
    img = _image(30, 40)
    small, big = _square(30, 40, 3, 8, 3, 8), _square(30, 40, 2, 25, 2, 30)
    records = [{"segmentation": rle, "area": int(m.sum())} for m, rle in zip((small, big), masks_to_coco_rle(np.stack([small, big])))]
    colours = np.random.RandomState(0).randint(40, 256, size=(2, 3)).astype(np.float32)
    expect = overlay_masks(img, [big, small], colors=colours[[1, 0]], outline_shade=0.6)
    np.testing.assert_array_equal(overlay_records(img, records), expect)
    # large images are shown downscaled, masks with them
    assert overlay_records(img, records, max_side=20).shape == (15, 20, 3)
    np.testing.assert_array_equal(overlay_records(img, []), img)


def test_report_overlay_is_one_mask_of_overlay_masks():
    img = _image()
    m = _square(20, 24, 4, 16, 3, 10)
    np.testing.assert_array_equal(report.overlay(img, m), overlay_masks(img, [m], colors=[(30, 144, 255)]))
    np.testing.assert_array_equal(
        report.overlay(img, m, (1, 2, 3), alpha=0.45), overlay_masks(img, [m], alpha=0.45, colors=[(1, 2, 3)])
    )
