"""Shrink `segany data convert shared-train` output into a small archive for the GPU machine.

Why: the device tool carries at most 64 MiB with the working tree (the shipped weights alone
are 28 MB), and the converted train splits are ~200 MB. Training sees the 512 px input frame
(longest side 512, scale jitter up to 1.6), so images are resized to longest side
``--max-side`` and re-encoded as JPEG; masks are resized with area averaging and a 0.5
threshold (the same rule the crop warp uses), so they do not shift. File names (``sa_<id>``)
are kept: the held-out split (every N-th record of a folder, sorted by name) is unchanged.

    python scripts/pack_gpu_data.py runs/sa1b_train runs/gpu_pack --max-side 512 --quality 80
    # then: tar -cJf runs/gpu_pack.tar.xz -C runs/gpu_pack .
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from segany.data.sa1b import list_records, read_record, write_record
from segany.image_io import load_image


def shrink_record(json_path: Path, out_dir: Path, max_side: int, quality: int) -> None:
    rec = read_record(json_path)
    image = load_image(rec.image_path)  # HxWx3 uint8 RGB
    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    h2, w2 = max(1, round(h * s)), max(1, round(w * s))
    if s < 1.0:
        image = cv2.resize(image, (w2, h2), interpolation=cv2.INTER_AREA)
    masks = []
    for k in range(len(rec.annotations)):
        m = rec.decode(k)
        if s < 1.0:
            m = cv2.resize(m.astype(np.float32), (w2, h2), interpolation=cv2.INTER_AREA) >= 0.5
        masks.append(m)
    image_id = int(rec.json_path.stem.split("_", 1)[1])
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "image.jpg"
        ok = cv2.imwrite(str(src), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"could not encode {rec.image_path}")
        write_record(out_dir, image_id, src, masks, (h2, w2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--quality", type=int, default=80)
    ap.add_argument("--folders", nargs="*", help="only these sub-folders of src (default: all)")
    args = ap.parse_args()
    folders = args.folders or sorted(p.name for p in args.src.iterdir() if p.is_dir())
    for name in folders:
        for json_path in tqdm(list_records(args.src / name), desc=name):
            shrink_record(json_path, args.dst / name, args.max_side, args.quality)


if __name__ == "__main__":
    main()
