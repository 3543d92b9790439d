"""Count the aten ops of one ``predict`` call, segany vs the reference, on the CPU.

Why: on a GPU a click of a few ms is bound by kernel launches and host round trips, so the
number of kernel-launching ops (views excluded) and of host syncs (``.item()``) is a proxy for
GPU click time that can be measured without a GPU. Same decoder weights on both sides (a
2-block ViT-B encoder: ``predict`` does not run it).

    python benchmarks/count_predict_ops.py
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import random_state_dict, reference_sam  # noqa: E402
from segany import SamPredictor, build_model  # noqa: E402

# ops that only make views or metadata: no kernel on a GPU
VIEWS = {
    "aten::reshape", "aten::slice", "aten::transpose", "aten::view", "aten::permute", "aten::unsqueeze",
    "aten::select", "aten::squeeze", "aten::expand", "aten::numpy_T", "aten::t", "aten::as_strided",
    "aten::alias", "aten::detach", "aten::lift_fresh", "aten::_reshape_alias", "aten::unflatten",
    "aten::flatten", "aten::split", "aten::chunk", "aten::unbind", "aten::contiguous", "aten::empty",
    "aten::empty_like", "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::is_nonzero",
    "aten::dim", "aten::size",
}
SYNCS = {"aten::_local_scalar_dense", "aten::item"}


def count(predictor, **kw) -> tuple[Counter, int]:
    """Top-level non-view aten ops of one call, and the host syncs among all ops."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        predictor.predict(**kw)
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ops if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return Counter(e.name for e in top if e.name not in VIEWS), sum(e.name in SYNCS for e in ops)


def main() -> None:
    torch.set_num_threads(1)
    ref_model, pkg = reference_sam(depth=2, global_attn=(1,))
    state = random_state_dict(ref_model, 0)
    ref_model.load_state_dict(state)
    ours_model = build_model("vit_b", encoder_depth=2, encoder_global_attn_indexes=(1,))
    ours_model.load_state_dict(state)
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    cases = {
        "1 point, multimask": dict(point_coords=np.array([[320.0, 240.0]]), point_labels=np.array([1])),
        "box, single mask": dict(box=np.array([100.0, 80.0, 500.0, 400.0]), multimask_output=False),
    }
    for name, predictor in (("reference", pkg.SamPredictor(ref_model)), ("segany", SamPredictor(ours_model))):
        predictor.set_image(image)
        for case, kw in cases.items():
            predictor.predict(**kw)  # warm caches
            ops, syncs = count(predictor, **kw)
            print(f"{name:9s} {case:20s} kernel ops {sum(ops.values()):4d}, host syncs {syncs}")
            print("   ", ", ".join(f"{k[6:]} {v}" for k, v in ops.most_common(10)))


if __name__ == "__main__":
    main()
